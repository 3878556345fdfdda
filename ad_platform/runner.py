"""Run the landing sensor and the runs it requests once, in-process: "bring your own logs" without a daemon.

This is what `python -m ad_platform run-once` and `make demo` use; `dagster dev` runs the same sensor and
jobs through the daemon instead.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dagster import AssetKey, DagsterInstance, Definitions, ExecuteInProcessResult, SensorResult, build_sensor_context

from ad_common import settings
from ad_common.markets import MARKETS
from ad_common.stages import CURATED_SPLITS_NAME, MARKET_ASSETS_JOB, ONNX_JOB, SIGNAL_DRIFT, TRAIN_JOB
from ad_sensors.landing import DRIVE_VERSION_REASON_TAG, LandingSensorSettings, evaluate_landing

CURSOR_FILE = "run_once_cursor.json"


class RunOnceSettings(LandingSensorSettings):
    """Run on demand after the user copied the files: nothing is still uploading, so no settle wait."""

    settle_s = 0.0


@dataclass
class DriveOutcome:
    market: str
    drive_id: str
    registration: str  # new | changed | retry
    status: str  # materialized | failed
    run_id: str
    error: str | None = None
    materialized: list[str] = field(default_factory=list)


def _failure_reason(result: Any) -> str:
    for event in result.all_events:
        if event.is_step_failure:
            data = event.step_failure_data
            if data.user_failure_data is not None and data.user_failure_data.description:
                return data.user_failure_data.description
            if data.error is None:
                return "step failed"
            error, messages = data.error, []
            while error is not None:  # the framework's wrapper, then the actual cause
                messages.append(error.message.strip())
                error = error.cause
            return " <- ".join(messages)
    return "run failed"


def run_once(
    defs: Definitions,
    instance: DagsterInstance,
    *,
    state_dir: Path | None = None,
    log: Any = print,
    console_log_level: str = "WARNING",
) -> list[DriveOutcome]:
    """Evaluate the landing sensor until it has nothing left, executing every requested run in-process."""
    cursor_path = (state_dir or settings.state_dir()) / CURSOR_FILE
    cursor = json.loads(cursor_path.read_text())["cursor"] if cursor_path.exists() else None
    resources = defs.resources
    outcomes: list[DriveOutcome] = []
    while True:
        with build_sensor_context(instance=instance, cursor=cursor, resources=resources, definitions=defs) as context:
            result = evaluate_landing(context, resources["landing"], resources["lake"], settings=RunOnceSettings)
        if not isinstance(result, SensorResult):
            break
        for request in result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        for event in result.asset_events:
            instance.report_runless_asset_event(event)
        for request in result.run_requests or []:
            market = request.job_name.removeprefix("ingest_")
            log(f"ingest {market}/{request.partition_key} ({request.tags[DRIVE_VERSION_REASON_TAG]})")
            job = defs.resolve_job_def(request.job_name)
            run = job.execute_in_process(
                instance=instance,
                partition_key=request.partition_key,
                tags=request.tags,
                raise_on_error=False,
                # The full event log is in the instance (and the UI); the console only needs problems.
                run_config={"loggers": {"console": {"config": {"log_level": console_log_level}}}},
            )
            outcomes.append(
                DriveOutcome(
                    market=market,
                    drive_id=request.partition_key,
                    registration=request.tags[DRIVE_VERSION_REASON_TAG],
                    status="materialized" if run.success else "failed",
                    run_id=run.run_id,
                    error=None if run.success else _failure_reason(run),
                    materialized=sorted(
                        e.asset_key.to_user_string()
                        for e in run.get_asset_materialization_events()
                        if e.asset_key is not None
                    ),
                )
            )
        progressed = bool(result.run_requests) or result.cursor != cursor
        cursor = result.cursor
        cursor_path.parent.mkdir(parents=True, exist_ok=True)
        cursor_path.write_text(json.dumps({"cursor": cursor}))
        if not progressed:
            break
    return outcomes


def refresh_market_assets(
    defs: Definitions,
    instance: DagsterInstance,
    console_log_level: str = "WARNING",
    reference_drives: int | None = None,
) -> ExecuteInProcessResult:
    """Materialize the market-level assets (the schedule's job) once, e.g. after a batch of drives.

    ``reference_drives`` overrides how many drives form each market's drift reference (the demo's fleet is
    far smaller than a real market's)."""
    run_config: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": console_log_level}}}}
    if reference_drives is not None:
        run_config["ops"] = {
            SIGNAL_DRIFT.key(m).to_python_identifier(): {"config": {"reference_drives": reference_drives}}
            for m in MARKETS
        }
    return defs.resolve_job_def(MARKET_ASSETS_JOB.name).execute_in_process(
        instance=instance, raise_on_error=False, run_config=run_config
    )


def train_models_once(
    defs: Definitions, instance: DagsterInstance, markets: list[str], console_log_level: str = "WARNING"
) -> dict[str, ExecuteInProcessResult | str]:
    """Run ``train_models_<m>`` for each market whose ``<m>/curated_splits`` has been materialized; the others
    get the reason they were skipped."""
    out: dict[str, ExecuteInProcessResult | str] = {}
    for market in markets:
        splits = AssetKey([market, CURATED_SPLITS_NAME])
        if instance.get_latest_materialization_event(splits) is None:
            out[market] = f"skipped: {splits.to_user_string()} not materialized yet"
            continue
        out[market] = defs.resolve_job_def(TRAIN_JOB.job_name(market)).execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": console_log_level}}}},
        )
    return out


def compile_onnx_once(
    defs: Definitions, instance: DagsterInstance, markets: list[str], console_log_level: str = "WARNING"
) -> dict[str, ExecuteInProcessResult]:
    """Run ``compile_onnx_<m>`` for each market (its approved model -> ONNX engine, parity, lineage)."""
    return {
        market: defs.resolve_job_def(ONNX_JOB.job_name(market)).execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": console_log_level}}}},
        )
        for market in markets
    }


def send_alerts_once(defs: Definitions, instance: DagsterInstance) -> None:
    """Evaluate the alert sensor once, as the daemon would after these runs (alerts are logged and POSTed)."""
    with build_sensor_context(instance=instance, resources=defs.resources, definitions=defs) as context:
        result = defs.resolve_sensor_def("alert_sensor")(context)
    for event in getattr(result, "asset_events", None) or []:
        instance.report_runless_asset_event(event)


def outcomes_json(outcomes: list[DriveOutcome]) -> str:
    return json.dumps([asdict(o) for o in outcomes], indent=2)
