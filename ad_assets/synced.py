"""Stage 3, synced frames: every decoded stream aligned to the front camera's clock, one row per frame."""

import time
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    Config,
    Definitions,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from ad_assets.checks import FAILED_DRIVES, check_specs, evaluate_rules, record_drive_checks
from ad_assets.stage_asset import stage_asset_args
from ad_common.lake_layout import DRIVE_SIGNAL_SUMMARIES, FRAMES_FILE, decoded_path, registry_path, synced_path
from ad_common.stages import LATENESS_CHECK, LATENESS_SLO, SYNCED_FRAMES
from ad_core.quality.drift import summarize_drive
from ad_core.quality.sync_rules import SYNCED_RULES, sync_tables
from ad_core.sync import SyncReport, sync_drive
from ad_core.sync.plan import REFERENCE_STREAM, REQUIRED_STREAMS, build_sync_plan, mdf_clock_offset
from ad_resources.lake import Lake
from ad_resources.landing import LandingZone
from ad_resources.quality import GreatExpectationsResource


class SyncSettings(Config):
    causal: bool = Field(
        default=False,
        description="Never use a sample from after the frame time (what the car could have known at that "
        "instant): linear interpolation becomes hold-last-value.",
    )
    drop_out_of_tolerance: bool = Field(
        default=False, description="Drop frames where any stream is out of tolerance instead of flagging them."
    )


def sync_one_drive(
    landing: LandingZone, lake: Lake, market: str, drive_id: str, settings: SyncSettings, log: Any
) -> tuple[SyncReport, dict[str, bool]]:
    """Sync a decoded drive into the lake atomically; MDF/CAN clocks are corrected by the manifest's offset."""
    manifest = landing.read_manifest(market, drive_id) or {"drive_id": drive_id, "market": market}
    offset = mdf_clock_offset(manifest)
    with lake.local_dir(decoded_path(market, drive_id)) as decoded_dir:
        plan = build_sync_plan(decoded_dir, mdf_clock_offset_ns=offset, causal=settings.causal)
        config = plan.config
        if settings.drop_out_of_tolerance:
            config = type(config)(**{**config.__dict__, "drop_out_of_tolerance": True})
        with lake.write_dir(synced_path(market, drive_id)) as out_dir:
            report = sync_drive(config, out_dir / FRAMES_FILE, log=log)
        with lake.local_dir(synced_path(market, drive_id)) as synced_dir:
            # Small per-drive signal summary for the market's drift check (ad_assets/drift.py).
            summary = summarize_drive(synced_dir / FRAMES_FILE, decoded_dir / f"{REFERENCE_STREAM}.parquet", manifest)
        lake.write_table(DRIVE_SIGNAL_SUMMARIES.path(market, drive_id), summary)
    return report, plan.present


def _metadata(report: SyncReport, lake: Lake, market: str, drive_id: str) -> dict[str, Any]:
    rows = "\n".join(
        f"| {name} | {s.method}{' (causal)' if s.causal else ''} | {s.tolerance_ns / 1e6:.0f} | "
        f"{100 * s.within_tolerance_ratio:.2f} | {s.no_sample} | "
        f"{'' if s.max_abs_sync_error_ns is None else f'{s.max_abs_sync_error_ns / 1e6:.1f}'} |"
        for name, s in report.streams.items()
    )
    return {
        "dagster/row_count": report.frames_written,
        "frames": report.frames,
        "dropped_frames": report.dropped,
        "frames_out_of_tolerance": max((s.out_of_tolerance for s in report.streams.values()), default=0),
        "seconds": round(report.seconds, 3),
        "path": MetadataValue.path(lake.uri(f"{synced_path(market, drive_id)}/{FRAMES_FILE}")),
        "sync_per_stream": MetadataValue.md(
            "| stream | method | tolerance ms | within % | no sample | max error ms |\n|---|---|---|---|---|---|\n"
            + rows
        ),
    }


def _lateness(
    key: AssetKey, lake: Lake, market: str, drive_ids: Iterable[str], lateness_slo: timedelta
) -> AssetCheckResult:
    """How long after landing these drives were synced (warn-level: late data is still good data)."""
    now = time.time_ns()
    hours = {
        d: round((now - record["landed_at_ns"]) / 3.6e12, 2)
        for d in drive_ids
        if (record := lake.read_json(registry_path(market, d)))
    }
    late = sorted(d for d, h in hours.items() if h > lateness_slo.total_seconds() / 3600)
    return AssetCheckResult(
        asset_key=key,
        check_name=LATENESS_CHECK,
        passed=not late,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "late_drives": MetadataValue.json(late),
            FAILED_DRIVES: MetadataValue.json(late),
            "hours_since_landing": MetadataValue.json(hours),
        },
    )


def definitions(market: str, lateness_slo: timedelta = LATENESS_SLO) -> Definitions:
    key = SYNCED_FRAMES.key(market)

    @asset(
        **stage_asset_args(SYNCED_FRAMES, market),
        check_specs=[
            *check_specs(key, SYNCED_RULES),
            AssetCheckSpec(
                LATENESS_CHECK,
                asset=key,
                description=f"Synced within {lateness_slo} of landing; the alert sensor also reports "
                "drives that never sync.",
            ),
        ],
        kinds={"parquet"},
        description=f"A {market.upper()} drive as training frames: one row per front-camera frame with the nearest "
        "lidar sweep (row index) and IMU, GNSS and vehicle signals interpolated at the frame time (linear for "
        "continuous signals, previous value for states), each with its sync error and in-tolerance flag "
        "(docs/sync.md). Vectorised, windowed, bounded memory; written atomically.",
    )
    def synced_frames(
        context: AssetExecutionContext,
        config: SyncSettings,
        landing: LandingZone,
        lake: Lake,
        great_expectations: GreatExpectationsResource,
    ) -> MaterializeResult:
        synced = {d: sync_one_drive(landing, lake, market, d, config, context.log) for d in context.partition_keys}
        tables = {d: sync_tables(report, present, REQUIRED_STREAMS) for d, (report, present) in synced.items()}
        checks = [
            *evaluate_rules(key, SYNCED_RULES, tables, great_expectations),
            _lateness(key, lake, market, synced, lateness_slo),
        ]
        record_drive_checks(context, lake, market, SYNCED_FRAMES.name, synced, checks)
        if len(synced) == 1:
            ((drive_id, (report, _)),) = synced.items()
            metadata = _metadata(report, lake, market, drive_id)
        else:
            metadata = {"drives": len(synced), "dagster/row_count": sum(r.frames_written for r, _ in synced.values())}
        return MaterializeResult(metadata=metadata, check_results=checks)

    return Definitions(assets=[synced_frames])
