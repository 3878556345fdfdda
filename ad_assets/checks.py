"""Run the quality rules on a drive's profiles and turn the outcome into Dagster asset-check results."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetExecutionContext, AssetKey, MetadataValue

from ad_common.lake_layout import DRIVE_CHECKS, drive_checks_path, registry_path
from ad_core.decode.parquet_out import snake
from ad_core.quality.rules import QualityRule
from ad_resources.lake import Lake
from ad_resources.quality import GreatExpectationsResource, Suite, SuiteOutcome

# Metadata key every per-drive check result carries: the drives of the step that failed it. The drive_checks
# catalog record (the dbt catalog's QA status per drive) is derived from it.
FAILED_DRIVES = "failed_drives"


def check_specs(asset_key: AssetKey, rules: Sequence[QualityRule]) -> list[AssetCheckSpec]:
    return [AssetCheckSpec(r.name, asset=asset_key, blocking=r.blocking, description=r.description) for r in rules]


def nominal_rates(manifest: Mapping[str, Any] | None) -> dict[str, float]:
    """Decoded stream name -> nominal rate, from a drive manifest's ``sensors`` section (if the drive has one)."""
    rates: dict[str, float] = {}
    for sensor in (manifest or {}).get("sensors", {}).values():
        stream, hz = sensor.get("stream"), sensor.get("nominal_hz")
        if not stream or not hz:
            continue
        prefix = "mcap__" if str(sensor.get("file", "")).endswith(".mcap") else "mdf__"
        rates[prefix + snake(stream)] = float(hz)
    return rates


def _cell(value: Any) -> str:
    text = json.dumps(value, default=str) if isinstance(value, list | dict) else str(value)
    return text.replace("|", "\\|")[:80]


def _failures_markdown(drive_id: str, outcome: SuiteOutcome) -> str:
    lines = []
    for failure in outcome.failures:
        lines.append(
            f"**{drive_id}** — `{failure.expectation}` on `{failure.column}`: {failure.unexpected_count} row(s)"
        )
        if failure.unexpected_rows:
            header = list(failure.unexpected_rows[0])
            lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(_cell(r[c]) for c in header) + " |" for r in failure.unexpected_rows]
        lines.append("")
    return "\n".join(lines)


def evaluate_rules(
    asset_key: AssetKey,
    rules: Sequence[QualityRule],
    tables: Mapping[str, Mapping[str, pd.DataFrame]],
    gx: GreatExpectationsResource,
    details: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[AssetCheckResult]:
    """One result per rule over all drives of the step (one drive per run from the sensor, many in backfills);
    one GX validation per drive and table, covering every rule on that table.

    ``tables``: drive -> table name -> the dataframe a rule's expectations run on; ``details``: rule name ->
    extra metadata for its result (texts too long for the failing-rows table, such as a full reason).
    """
    by_table: dict[str, list[QualityRule]] = {}
    for rule in rules:
        by_table.setdefault(rule.table, []).append(rule)
    validated = {  # drive -> rule name -> outcome
        drive: {
            name: outcome
            for table, table_rules in by_table.items()
            for name, outcome in gx.validate(
                f"{table}__{drive}",
                drive_tables[table],
                {r.name: Suite(r.expectations(), list(r.id_columns)) for r in table_rules},
            ).items()
        }
        for drive, drive_tables in tables.items()
    }
    results = []
    for rule in rules:
        outcomes = {drive: by_rule[rule.name] for drive, by_rule in validated.items()}
        failed = {d: o for d, o in outcomes.items() if not o.success}
        metadata: dict[str, Any] = {
            "drives_checked": len(outcomes),
            "rows_checked": sum(len(t[rule.table]) for t in tables.values()),
            FAILED_DRIVES: MetadataValue.json(sorted(failed)),
            "failing_rows": sum(f.unexpected_count for o in failed.values() for f in o.failures),
        }
        if failed:
            metadata["what_failed"] = MetadataValue.md("\n".join(_failures_markdown(d, o) for d, o in failed.items()))
        metadata.update((details or {}).get(rule.name, {}))
        results.append(
            AssetCheckResult(
                asset_key=asset_key,
                check_name=rule.name,
                passed=not failed,
                severity=AssetCheckSeverity.ERROR if rule.blocking else AssetCheckSeverity.WARN,
                metadata=metadata,
                description=rule.description,
            )
        )
    return results


def record_drive_checks(
    context: AssetExecutionContext,
    lake: Lake,
    market: str,
    stage: str,
    drive_ids: Iterable[str],
    results: Sequence[AssetCheckResult],
) -> None:
    """Write each drive's outcome of ``results`` as its ``drive_checks`` record (one file per drive and stage).

    A drive failed a check when the result's ``failed_drives`` metadata names it; a result without that key
    applies to every drive of the step.
    """
    specs = {spec.name: spec for spec in context.assets_def.check_specs}
    now = time.time_ns()
    for drive_id in drive_ids:
        version = (lake.read_json(registry_path(market, drive_id)) or {}).get("version")
        rows = []
        for result in results:
            failed = result.metadata.get(FAILED_DRIVES)
            passed = drive_id not in failed.value if failed is not None else result.passed  # type: ignore[operator]
            spec = specs.get(str(result.check_name))
            rows.append(
                {
                    "market": market,
                    "drive_id": drive_id,
                    "drive_version": version,
                    "stage": stage,
                    "asset_key": (result.asset_key or context.asset_key).to_user_string(),
                    "check_name": result.check_name,
                    "passed": bool(passed),
                    "severity": result.severity.value,
                    "blocking": bool(spec and spec.blocking),
                    "description": result.description,
                    "run_id": context.run.run_id,
                    "evaluated_at_ns": now,
                }
            )
        lake.write_table(drive_checks_path(market, drive_id, stage), pa.Table.from_pylist(rows, DRIVE_CHECKS.schema))
