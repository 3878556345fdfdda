"""Per-market signal drift: newly synced drives against the market's reference drives (docs/drift.md).

State lives in the lake, never in memory, so any run (or pod) sees the same reference and the same history:
the per-drive summaries written by sync, the frozen reference, the drives already evaluated and one chart per
evaluation (paths in ``ad_common/lake_layout.py``).
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
    Config,
    Definitions,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from ad_assets.stage_asset import stage_asset_args
from ad_common.lake_layout import DRIVE_SIGNAL_SUMMARIES, drift_reference_path, drift_report_dir, drift_state_path
from ad_common.stages import SIGNAL_DRIFT
from ad_core.quality.drift import (
    SUMMARY_SCHEMA,
    DriftResult,
    compare,
    drift_chart_md,
    drift_chart_png,
)
from ad_resources.lake import Lake

DRIFT_CHECK = "distribution_drift"
DEFAULT_REFERENCE_DRIVES = 50  # enough for >= 2 drives in most time-of-day/weather buckets of a market


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
    folder = DRIVE_SIGNAL_SUMMARIES.market_folder(market)
    table = _read_tables(lake, folder, lake.list_files(folder, ".parquet"))
    return table.sort_by([("start_time_ns", "ascending"), ("drive_id", "ascending")])


def read_reference(lake: Lake, market: str) -> pa.Table:
    path = drift_reference_path(market)
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


def definitions(market: str) -> Definitions:
    key = SIGNAL_DRIFT.key(market)

    @asset(
        **stage_asset_args(SIGNAL_DRIFT, market),
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
    )
    def signal_drift(context: AssetExecutionContext, config: DriftSettings, lake: Lake) -> MaterializeResult:
        """Drift of speed, yaw rate and image brightness of newly synced drives against the market reference.

        The reference is the first ``reference_drives`` drives (by recording time) the check sees; every drive
        synced after that is compared once, like with like (docs/drift.md). Warns, never blocks: a drifted drive
        is still valid data, but curation and training should know about it.
        """
        summaries = read_summaries(lake, market)
        reference = SUMMARY_SCHEMA.empty_table() if config.reset_reference else read_reference(lake, market)
        evaluated: dict[str, str] = (lake.read_json(drift_state_path(market)) or {}).get("evaluated", {})
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
            lake.write_table(drift_reference_path(market), reference)
            # Counted as evaluated too, so a reset builds the new reference from later drives, not the same ones.
            evaluated.update(_fingerprints(joining))
            unseen = unseen[missing:]
        new = summaries.take(pa.array(unseen, pa.int64()))
        if summaries.num_rows == 0:
            # An aggregate over nothing is no evidence of health: say so instead of passing.
            check = AssetCheckResult(
                check_name=DRIFT_CHECK,
                passed=False,
                severity=AssetCheckSeverity.WARN,
                metadata={"status": "no data", "new_drives": MetadataValue.json([])},
                description=f"No data: no synced {market.upper()} drive has a signal summary yet, nothing was compared",
            )
        elif reference.num_rows < config.reference_drives or new.num_rows == 0:
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
            png = drift_report_dir(market, context.run.run_id)
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
        lake.write_json(drift_state_path(market), {"evaluated": evaluated})
        return MaterializeResult(
            metadata={
                "summaries": summaries.num_rows,
                "reference_drives": reference.num_rows,
                "new_drives": new.num_rows,
                "path": MetadataValue.path(lake.uri(drift_reference_path(market))),
            },
            check_results=[check],
        )

    return Definitions(assets=[signal_drift])
