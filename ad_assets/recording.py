"""A recording per synced drive (docs/review.md): one MCAP with Foxglove schemas, for scrubbing camera, lidar,
signals and sync error on the sync reference timeline in Foxglove or Lichtblick (ad_core/recording.py).

Its own per-drive asset rather than part of synced_frames: the training data never waits for (or fails with)
a viewing aid, and the recording can be re-written alone when its layout changes.
"""

import pyarrow.parquet as pq
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Definitions,
    MaterializeResult,
    MetadataValue,
    asset,
)
from mcap.reader import make_reader

from ad_assets.curated import sync_reference
from ad_assets.stage_asset import stage_asset_args
from ad_common.lake_layout import FRAMES_FILE, decoded_path, recording_path, synced_path
from ad_common.stages import DRIVE_RECORDING
from ad_core.recording import RecordingReport, payload_tables, write_recording
from ad_resources.lake import Lake

MATCHES_CHECK = "recording_matches_frames"


def record_drive(
    context: AssetExecutionContext, lake: Lake, market: str, drive_id: str
) -> tuple[RecordingReport, dict[str, int]]:
    """Write the drive's recording; returns the writer's report and the message counts read back from the file."""
    reference = sync_reference(context.instance, market, drive_id)
    rel = recording_path(market, drive_id)
    folder, name = rel.rsplit("/", 1)
    with (
        lake.local_dir(decoded_path(market, drive_id)) as decoded,
        lake.local_dir(synced_path(market, drive_id)) as synced,
    ):
        kinds = {
            p.stem: (pq.read_schema(p).metadata or {}).get(b"kind", b"").decode()
            for p in sorted(decoded.glob("*.parquet"))
        }
        columns = pq.read_schema(synced / FRAMES_FILE).names
        payloads = payload_tables(decoded, columns, reference, kinds)
        with lake.write_dir(folder) as out:
            with open(out / name, "wb") as f:
                report = write_recording(f, synced / FRAMES_FILE, payloads, profile=reference or "")
            report.bytes = (out / name).stat().st_size
            with open(out / name, "rb") as f:
                summary = make_reader(f).get_summary()
    assert summary is not None and summary.statistics is not None
    read_back = {summary.channels[cid].topic: n for cid, n in summary.statistics.channel_message_counts.items()}
    return report, dict(sorted(read_back.items()))


def definitions(market: str) -> Definitions:
    key = DRIVE_RECORDING.key(market)

    @asset(
        **stage_asset_args(DRIVE_RECORDING, market),
        check_specs=[
            AssetCheckSpec(
                MATCHES_CHECK,
                asset=key,
                blocking=False,
                description="Read back from the file: every frame has its camera image, signal and sync-error "
                "messages (one per synced frame).",
            )
        ],
        kinds={"mcap"},
        description=f"A synced {market.upper()} drive as one MCAP file with Foxglove schemas: camera frames "
        "(CompressedImage), lidar sweeps (PointCloud), GNSS (LocationFix), every synced signal stream (JSON) and the "
        "per-frame sync error, all on the sync reference timeline. Open it in Foxglove or Lichtblick.",
    )
    def drive_recording(context: AssetExecutionContext, lake: Lake) -> MaterializeResult:
        results = {d: record_drive(context, lake, market, d) for d in context.partition_keys}
        short = {
            d: sorted(t for t, n in counts.items() if not t.startswith("/lidar/") and n != report.frames)
            for d, (report, counts) in results.items()
        }
        short = {d: t for d, t in short.items() if t}
        check = AssetCheckResult(
            check_name=MATCHES_CHECK,
            passed=not short,
            severity=AssetCheckSeverity.WARN,
            description="; ".join(f"{d}: {', '.join(t)} do not have one message per frame" for d, t in short.items())
            or None,
        )
        metadata: dict[str, object] = {"drives": len(results)}
        if len(results) == 1:
            ((drive_id, (report, counts)),) = results.items()
            metadata = {
                "path": MetadataValue.path(lake.uri(recording_path(market, drive_id))),
                "dagster/row_count": report.frames,
                "size_mib": round(report.bytes / 2**20, 2),
                "mib_per_minute": round(report.mib_per_minute, 1),
                "messages_per_topic": MetadataValue.json(counts),
                "open_with": "Foxglove / Lichtblick: Open local file",
            }
        for drive_id, (report, _) in results.items():
            context.log.info(
                f"{market}/{drive_id}: recording {report.bytes / 2**20:.1f} MiB, {report.frames} frames, "
                f"{report.mib_per_minute:.1f} MiB per minute of drive"
            )
        return MaterializeResult(metadata=metadata, check_results=[check])

    return Definitions(assets=[drive_recording])
