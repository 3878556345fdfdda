"""Run the landing sensor and the runs it requests once, in-process: "bring your own logs" without a daemon.

This is what `python -m ad_platform run-once` and `make demo` use; `dagster dev` runs the same sensor and
jobs through the daemon instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    ExecuteInProcessResult,
    RunsFilter,
    SensorResult,
    build_sensor_context,
)
from dagster._core.events import JobFailureData, RunFailureReason

from ad_common import settings
from ad_common.atomic import STALE_AFTER_S, write_bytes_atomic
from ad_common.markets import MARKETS
from ad_common.stages import (
    CURATED_SPLITS,
    MARKET_ASSETS_JOB,
    ONNX_JOB,
    SIGNAL_DRIFT,
    TRAIN_JOB,
    TRAINED_MODEL,
    job_asset_keys,
)
from ad_core.decode.isolate import start_forkserver
from ad_sensors.landing import DRIVE_VERSION_REASON_TAG, LandingSensorSettings, Notice, landing_tick

CURSOR_FILE = "run_once_cursor.json"
LOCK_FILE = "run_once.lock"
# Runs executed in-process by run-once carry these tags: only run-once can tell that one was left behind.
LAUNCHED_BY_TAG, LAUNCHED_BY = "ad-platform/launched-by", "run-once"
PID_TAG = "ad-platform/run-once-pid"
_UNFINISHED = [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]


class RunOnceSettings(LandingSensorSettings):
    """The sensor's rules, settle window included: run-once may start while a copy is still running (cron)."""


class RunOnceBusy(RuntimeError):
    """Another run-once holds the state folder's lock."""


@dataclass
class DriveOutcome:
    market: str
    drive_id: str
    registration: str | None  # new | changed | retry | recovery; None for a folder that got no run
    # materialized | failed | settling (left for the next run) | invalid_name | skipped | given_up
    status: str
    run_id: str | None
    error: str | None = None
    materialized: list[str] = field(default_factory=list)

    @classmethod
    def from_notice(cls, notice: Notice) -> DriveOutcome:
        return cls(notice.market, notice.drive_id, None, notice.status, None, notice.message)


@contextlib.contextmanager
def run_once_lock(state_dir: Path, *, wait: bool = False) -> Iterator[None]:
    """Hold ``<state>/run_once.lock`` (flock) for the whole run-once, so two never do the same work twice.

    The kernel releases the lock when its holder dies, however it dies: a killed run-once never blocks the
    next. ``wait``: block until the holder is done (it then finds nothing left); else raise RunOnceBusy."""
    path = state_dir / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "a process"
            raise RunOnceBusy(f"another run-once ({holder}) holds {path}; nothing done") from None
        fh.truncate(0)
        fh.write(f"pid {os.getpid()}, since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
        fh.flush()
        yield


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


def prepare_process() -> None:
    """What run-once does once per process before it executes a step: start the MDF decoders' forkserver (its
    preload runs on the other core meanwhile), then prepare this process as the step forkserver of launched runs
    prepares itself (``ad_platform/step_process.py``)."""
    start_forkserver()
    importlib.import_module("ad_platform.step_process")


def run_once(
    defs: Definitions,
    instance: DagsterInstance | Callable[[], DagsterInstance],
    *,
    state_dir: Path | None = None,
    log: Any = print,
    console_log_level: str = "WARNING",
    settle_s: float = RunOnceSettings.settle_s,
    recovery_max_attempts: int = RunOnceSettings.recovery_max_attempts,
    wait_for_lock: bool = False,
) -> list[DriveOutcome]:
    """Evaluate the landing sensor until it has nothing left, executing every requested run in-process.

    ``settle_s``: a drive changed more recently is left for the next run (status ``settling``); 0 when the
    caller wrote the files itself and knows they are complete. Interrupted drives are re-requested
    (``ad_sensors/recovery.py``) up to ``recovery_max_attempts`` times. Raises RunOnceBusy (see
    :func:`run_once_lock`). ``instance`` may be a function that opens it, called once the lock is held: two
    processes creating a fresh SQLite instance at once race in its schema migration.
    """
    state = state_dir or settings.state_dir()
    with run_once_lock(state, wait=wait_for_lock):
        prepare_process()
        instance = instance if isinstance(instance, DagsterInstance) else instance()
        recover_after_kill(defs, instance, log)
        tick_settings = type(
            "Settings", (RunOnceSettings,), {"settle_s": settle_s, "recovery_max_attempts": recovery_max_attempts}
        )
        return _run_once(defs, instance, state, log, console_log_level, tick_settings)


def recover_after_kill(defs: Definitions, instance: DagsterInstance, log: Any) -> None:
    """What a killed run-once left behind, cleaned up under the lock (so no run-once is running now).

    Its unfinished runs are marked failed (the embedded default has no daemon whose run monitoring would): the
    reason UNEXPECTED_TERMINATION makes their drives interrupted, so the landing tick re-requests them. Then the
    lake's orphaned temporaries are removed: all of them when no run at all is in progress on the instance
    (a ``dagster dev`` beside run-once may be writing), else only those older than an hour.
    """
    for run in instance.get_runs(RunsFilter(statuses=_UNFINISHED, tags={LAUNCHED_BY_TAG: LAUNCHED_BY})):
        message = (
            f"run-once (pid {run.tags.get(PID_TAG, '?')}) that executed this run is gone (killed?): marked failed "
            "by the next run-once, which re-requests the drive"
        )
        instance.report_run_failed(
            run, message, JobFailureData(error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION)
        )
        log(f"{run.tags.get('dagster/partition', run.run_id)}: {message}")
    writing = instance.get_runs_count(RunsFilter(statuses=[*_UNFINISHED, DagsterRunStatus.QUEUED]))
    for leftover in defs.resources["lake"].sweep_temporaries(older_than_s=0 if not writing else STALE_AFTER_S):
        log(f"removed the temporary {leftover} of a killed write")


def _run_once(
    defs: Definitions,
    instance: DagsterInstance,
    state: Path,
    log: Any,
    console_log_level: str,
    tick_settings: type[RunOnceSettings],
) -> list[DriveOutcome]:
    cursor_path = state / CURSOR_FILE
    # read under the lock: a run-once that held it before has moved the cursor past its drives
    cursor = json.loads(cursor_path.read_text())["cursor"] if cursor_path.exists() else None
    resources = defs.resources
    outcomes: list[DriveOutcome] = []
    notices: list[Notice] = []
    while True:
        with build_sensor_context(instance=instance, cursor=cursor, resources=resources, definitions=defs) as context:
            result, plan = landing_tick(context, resources["landing"], resources["lake"], settings=tick_settings)
        notices = [n for n in notices if n.status != "settling"] + plan.notices  # settling: as last seen
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
                tags={**request.tags, LAUNCHED_BY_TAG: LAUNCHED_BY, PID_TAG: str(os.getpid())},
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
        write_bytes_atomic(cursor_path, json.dumps({"cursor": cursor}).encode())
        if not progressed:
            break
    return outcomes + [DriveOutcome.from_notice(n) for n in notices]


def refresh_market_assets(
    defs: Definitions,
    instance: DagsterInstance,
    console_log_level: str = "WARNING",
    reference_drives: int | None = None,
    markets: tuple[str, ...] = MARKETS,
) -> ExecuteInProcessResult:
    """Materialize the market-level assets (the schedule's job) of ``markets`` once, e.g. after a batch of drives.

    ``reference_drives`` overrides how many drives form each market's drift reference (the demo's fleet is
    far smaller than a real market's). Markets without drives are left out: their splits would (rightly) fail
    their checks with "no data"."""
    run_config: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": console_log_level}}}}
    if reference_drives is not None:
        run_config["ops"] = {
            SIGNAL_DRIFT.key(m).to_python_identifier(): {"config": {"reference_drives": reference_drives}}
            for m in markets
        }
    return defs.resolve_job_def(MARKET_ASSETS_JOB.name).execute_in_process(
        instance=instance,
        raise_on_error=False,
        run_config=run_config,
        asset_selection=job_asset_keys(MARKET_ASSETS_JOB, markets),
    )


def train_models_once(
    defs: Definitions,
    instance: DagsterInstance,
    markets: list[str],
    console_log_level: str = "WARNING",
    training: dict[str, Any] | None = None,
) -> dict[str, ExecuteInProcessResult | str]:
    """Run ``train_models_<m>`` for each market whose ``<m>/curated_splits`` has been materialized; the others
    get the reason they were skipped. ``training`` overrides the trained_model config (the demo's is small)."""
    out: dict[str, ExecuteInProcessResult | str] = {}
    for market in markets:
        splits = CURATED_SPLITS.key(market)
        if instance.get_latest_materialization_event(splits) is None:
            out[market] = f"skipped: {splits.to_user_string()} not materialized yet"
            continue
        run_config: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": console_log_level}}}}
        if training:
            run_config["ops"] = {TRAINED_MODEL.key(market).to_python_identifier(): {"config": training}}
        out[market] = defs.resolve_job_def(TRAIN_JOB.job_name(market)).execute_in_process(
            instance=instance, raise_on_error=False, run_config=run_config
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
