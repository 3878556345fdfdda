"""Per-market signal drift: newly synced drives against the market's reference drives (docs/drift.md).

State lives in the lake, never in memory, so any run (or pod) sees the same reference and the same history:

- ``catalog/drive_signal_summaries/<market>/<drive>.parquet``: one summary per synced drive (written by sync)
- ``reference/<market>/signal_reference.parquet``: the reference summaries, frozen once complete
- ``reference/<market>/drift_state.json``: which drive summaries (by content fingerprint) were already evaluated
- ``reports/signal_drift/<market>/<run_id>/drift.png``: the chart of each evaluation
"""

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from ad_assets.quality.drift import (
    SIGNAL_SUMMARIES,
    SUMMARY_SCHEMA,
    DriftResult,
    compare,
    drift_chart_md,
    drift_chart_png,
)
from ad_assets.synced import SYNCED_GROUP
from ad_resources.lake import Lake

DRIFT_CHECK = "distribution_drift"
DEFAULT_REFERENCE_DRIVES = 50  # enough for >= 2 drives in most time-of-day/weather buckets of a market


def reference_path(market: str) -> str:
    return f"reference/{market}/signal_reference.parquet"


def state_path(market: str) -> str:
    return f"reference/{market}/drift_state.json"


class DriftSettings(Config):
    reference_drives: int = Field(
        default=DEFAULT_REFERENCE_DRIVES,
        description="How many drives (the first ones by recording time that the check has not evaluated yet) "
        "form the market's reference.",
    )
    reset_reference: bool = Field(
        default=False,
        description="Drop the reference; the next drives that have not been evaluated yet form a new one.",
    )


def _read_tables(lake: Lake, folder: str, paths: list[str]) -> pa.Table:
    if not paths:
        return SUMMARY_SCHEMA.empty_table()
    with lake.local_dir(folder) as local:
        tables = [pq.read_table(local / p[len(folder) + 1 :], schema=SUMMARY_SCHEMA) for p in paths]
    return pa.concat_tables(tables)


def read_summaries(lake: Lake, market: str) -> pa.Table:
    """Every drive summary of a market, sorted by recording start (the order the reference is filled in)."""
    folder = f"catalog/{SIGNAL_SUMMARIES}/{market}"
    table = _read_tables(lake, folder, lake.list_files(folder, ".parquet"))
    return table.sort_by([("start_time_ns", "ascending"), ("drive_id", "ascending")])


def read_reference(lake: Lake, market: str) -> pa.Table:
    path = reference_path(market)
    return _read_tables(lake, path.rsplit("/", 1)[0], [path] if lake.exists(path) else [])


def _fingerprints(table: pa.Table) -> dict[str, str]:
    return dict(zip(table.column("drive_id").to_pylist(), table.column("fingerprint").to_pylist(), strict=True))


def compare_drive_sets(lake: Lake, reference: tuple[str, list[str]], new: tuple[str, list[str]]) -> DriftResult:
    """Compare two sets of synced drives, each given as (market, drive ids), from their summaries in the lake."""

    def pick(market: str, ids: list[str]) -> pa.Table:
        table = read_summaries(lake, market)
        return table.filter(pc.is_in(table.column("drive_id"), pa.array(ids)))

    return compare(pick(*reference), pick(*new))


def _metadata(result: DriftResult, png_uri: str) -> dict[str, Any]:
    return {
        "drifted_signals": MetadataValue.json(result.drifted_signals),
        "new_drives": MetadataValue.json(result.new_drives),
        "reference_drives": len(result.reference_drives),
        "statistics": MetadataValue.json({name: s.to_dict() for name, s in result.signals.items()}),
        "chart": MetadataValue.md(drift_chart_md(result)),
        "chart_png": MetadataValue.path(png_uri),
    }


def build_drift_asset(market: str) -> Any:
    key = AssetKey([market, "signal_drift"])

    @asset(
        key=key,
        group_name=SYNCED_GROUP,
        deps=[AssetKey([market, "synced_frames"])],
        check_specs=[
            AssetCheckSpec(
                DRIFT_CHECK,
                asset=key,
                blocking=False,
                description="Speed, yaw rate and image brightness of newly synced drives match the market's "
                "reference, compared within the same road type / time of day and weather (warn only).",
            )
        ],
        kinds={"parquet"},
        tags={"ad-platform/stage": "sync", "ad-platform/market": market},
    )
    def signal_drift(context: AssetExecutionContext, config: DriftSettings, lake: Lake) -> MaterializeResult:
        """Drift of speed, yaw rate and image brightness of newly synced drives against the market reference.

        The reference is the first ``reference_drives`` drives (by recording time) the check sees; every drive
        synced after that is compared once, like with like (docs/drift.md). Warns, never blocks: a drifted drive
        is still valid data, but curation and training should know about it.
        """
        summaries = read_summaries(lake, market)
        reference = SUMMARY_SCHEMA.empty_table() if config.reset_reference else read_reference(lake, market)
        evaluated: dict[str, str] = (lake.read_json(state_path(market)) or {}).get("evaluated", {})
        in_reference = set(reference.column("drive_id").to_pylist())
        unseen = [
            i
            for i, (drive, fingerprint) in enumerate(_fingerprints(summaries).items())
            if drive not in in_reference and evaluated.get(drive) != fingerprint
        ]
        missing = max(0, config.reference_drives - reference.num_rows)
        if missing:
            joining = summaries.take(pa.array(unseen[:missing], pa.int64()))
            reference = pa.concat_tables([reference, joining])
            lake.write_table(reference_path(market), reference)
            # Counted as evaluated too, so a reset builds the new reference from later drives, not the same ones.
            evaluated.update(_fingerprints(joining))
            unseen = unseen[missing:]
        new = summaries.take(pa.array(unseen, pa.int64()))
        if reference.num_rows < config.reference_drives or new.num_rows == 0:
            status = (
                f"collecting the reference: {reference.num_rows}/{config.reference_drives} drives"
                if reference.num_rows < config.reference_drives
                else "no new drives since the last evaluation"
            )
            check = AssetCheckResult(
                check_name=DRIFT_CHECK,
                passed=True,
                severity=AssetCheckSeverity.WARN,
                metadata={"status": status, "new_drives": MetadataValue.json([])},
            )
        else:
            result = compare(reference, new)
            png = f"reports/signal_drift/{market}/{context.run.run_id}"
            with lake.write_dir(png) as out:
                (out / "drift.png").write_bytes(drift_chart_png(result))
            check = AssetCheckResult(
                check_name=DRIFT_CHECK,
                passed=not result.drifted,
                severity=AssetCheckSeverity.WARN,
                metadata={"status": "evaluated", **_metadata(result, lake.uri(f"{png}/drift.png"))},
                description=(
                    f"Drift in {', '.join(result.drifted_signals)} over {new.num_rows} new drive(s)"
                    if result.drifted
                    else f"No drift over {new.num_rows} new drive(s)"
                ),
            )
            context.log.info(drift_chart_md(result))
        # Recorded after the comparison: a run that dies before this line re-evaluates the same drives.
        evaluated.update(_fingerprints(new))
        lake.write_json(state_path(market), {"evaluated": evaluated})
        return MaterializeResult(
            metadata={
                "summaries": summaries.num_rows,
                "reference_drives": reference.num_rows,
                "new_drives": new.num_rows,
                "path": MetadataValue.path(lake.uri(reference_path(market))),
            },
            check_results=[check],
        )

    return signal_drift
