"""Recovery of interrupted drives: a run killed mid-ingest is re-requested, a bounded number of times.

A drive is *interrupted* when its latest ingest run planned ``<market>/synced_frames`` but did not materialize it
and ended in a failure that is not a step's verdict: the run worker died (killed, OOM, node lost) and run
monitoring, or the next ``run-once``, marked the run failed. Without recovery nothing asks for it again: the
registry already holds the drive, so the landing sensor sees an unchanged re-upload.

A step that failed (a corrupt file, a blocking check) is a verdict on the data: running it again gives the same
answer, so those drives are left alone. Each drive version is re-requested at most ``max_attempts`` times, the
attempts ``backoff_s`` apart (doubling), counted by the runs' recovery tag; then it is *given up*: reported
and logged as an error, until the drive is re-landed or materialized by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dagster import DagsterInstance, DagsterRunStatus, RunRequest, RunsFilter
from dagster._core.events import RunFailureReason
from dagster._core.storage.tags import RUN_FAILURE_REASON_TAG

from ad_common.stages import INGEST_JOB, LANDED_AT_TAG, SYNCED_FRAMES

RECOVERY_TAG = "ad-platform/recovery-of"  # <market>/<drive>@v<registered version>
REGISTRATION_TAG = "ad-platform/registration"  # why a run was requested: new | changed | retry | recovery


@dataclass
class RecoveryPlan:
    requests: list[RunRequest] = field(default_factory=list)
    given_up: list[tuple[str, str, str]] = field(default_factory=list)  # (market, drive, message)


def interrupted(status: DagsterRunStatus, tags: Mapping[str, str]) -> bool:
    """A failed run that no step failed: its worker died (no reason, UNEXPECTED_TERMINATION, ...)."""
    return (
        status == DagsterRunStatus.FAILURE and tags.get(RUN_FAILURE_REASON_TAG) != RunFailureReason.STEP_FAILURE.value
    )


def plan_recovery(
    instance: DagsterInstance,
    markets: Sequence[str],
    registered_version: Callable[[str, str], Mapping[str, Any] | None],
    *,
    skip: Collection[str],
    max_attempts: int,
    backoff_s: float,
    now_s: float | None = None,
) -> RecoveryPlan:
    """Run requests for the interrupted drives of ``markets`` (``skip``: ``market/drive`` keys already requested)."""
    now_s = time.time() if now_s is None else now_s
    plan = RecoveryPlan()
    for market in markets:
        # partition -> (run id, storage id) of the latest run that planned synced_frames and did not materialize it
        pending = (
            instance.event_log_storage.get_latest_asset_partition_materialization_attempts_without_materializations(
                SYNCED_FRAMES.key(market)
            )
        )
        pending = {p: v for p, v in pending.items() if f"{market}/{p}" not in skip}
        if not pending:
            continue
        runs = {r.run_id: r for r in instance.get_runs(RunsFilter(run_ids=[run_id for run_id, _ in pending.values()]))}
        for drive, (run_id, _) in sorted(pending.items()):
            run = runs.get(run_id)
            if run is None or not interrupted(run.status, run.tags):
                continue
            registry = registered_version(market, drive)
            recovery_key = f"{market}/{drive}@v{registry['version'] if registry else 0}"
            attempts = instance.get_run_records(RunsFilter(tags={RECOVERY_TAG: recovery_key}), limit=max_attempts)
            if len(attempts) >= max_attempts:
                plan.given_up.append(
                    (
                        market,
                        drive,
                        f"{recovery_key}: interrupted and re-requested {len(attempts)} time(s) without reaching "
                        f"synced_frames; given up (last run {run_id}). Re-land the drive or materialize it by hand.",
                    )
                )
                continue
            last_end = attempts[0].end_time if attempts else None
            if last_end is not None and now_s - last_end < backoff_s * 2 ** (len(attempts) - 1):
                continue
            tags = {RECOVERY_TAG: recovery_key, REGISTRATION_TAG: "recovery"}
            if registry and registry.get("landed_at_ns"):
                tags[LANDED_AT_TAG] = str(registry["landed_at_ns"])
            plan.requests.append(
                RunRequest(
                    run_key=f"{recovery_key}#recovery-{len(attempts) + 1}",
                    job_name=INGEST_JOB.job_name(market),
                    partition_key=drive,
                    tags=tags,
                )
            )
    return plan
