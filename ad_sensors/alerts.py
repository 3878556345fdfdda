"""The alert sensor: every failure becomes exactly one alert, each tick only looks at what is new.

Three sources, one cursor (``AlertCursor``):

* Failed asset checks, blocking (ERROR) and warn-level alike. WARN failures do not fail a run, so a
  run-failure sensor never sees them; the checks are read from the runs that finished since the last tick:
  ``instance.fetch_run_status_changes`` (RUN_SUCCESS / RUN_FAILURE records after a storage id, the query
  Dagster's own run-status sensors use) and then each finished run's ``ASSET_CHECK_EVALUATION`` events
  (``instance.all_logs``). Why not the asset-check tables: ``get_asset_check_partition_info`` /
  ``get_latest_asset_check_execution_by_key`` keep only the latest execution per (check, partition), and a
  check declared on a partitioned asset without its own ``partitions_def`` is stored with partition None, so
  two drives failing one check between ticks would collapse into one row; ``get_event_records`` with a
  storage-id cursor raises on the run-sharded SQLite event log used locally.
* Failed runs: one alert per RUN_FAILURE record (a run fails once; storage-id cursor, deduped by run id).
* Per-drive lateness: a drive partition whose registry entry says it landed more than ``lateness_slo`` ago
  and that has no materialized ``<market>/synced_frames`` partition is late: one alert, and a failed
  ``drive_lateness`` check evaluation in the SensorResult. Late drives stay in the cursor until synced.

Alerts the webhook did not accept stay in the cursor and are sent again next tick (at-least-once delivery
of exactly-once decisions). The decisions are plain functions, tested without Dagster.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DefaultSensorStatus,
    EventLogEntry,
    MetadataValue,
    RunsFilter,
    RunStatusChangeRecordsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from ad_common.lake_layout import registry_path
from ad_common.partitions import drive_partitions
from ad_common.stages import LATENESS_CHECK, LATENESS_SLO, SYNCED_FRAMES
from ad_resources.alerts import Alert, AlertWebhook
from ad_resources.lake import Lake

SYNCED_ASSET = SYNCED_FRAMES.name
# A fresh cursor (new deployment, reset sensor) alerts run failures of the last day only, not all history.
FIRST_TICK_LOOKBACK = timedelta(hours=24)
RUN_EVENTS_PER_TICK = 500  # per event type; the cursor carries the rest
# More newly late drives than this in one market and tick become one summary alert (e.g. a stalled stage).
MAX_LATENESS_ALERTS_PER_MARKET = 20
MAX_PENDING = 1_000
DELIVERY_BUDGET_S = 20.0  # far below the 60 s sensor timeout
_RUN_END_EVENTS = (DagsterEventType.RUN_FAILURE, DagsterEventType.RUN_SUCCESS)
# Dagster's run tags for the partition(s) a run materializes (dagster._core.storage.tags).
_PARTITION_TAG = "dagster/partition"
_RANGE_START_TAG = "dagster/asset_partition_range_start"
_RANGE_END_TAG = "dagster/asset_partition_range_end"


@dataclass
class AlertCursor:
    """``run_event_ids``: last processed storage id per run-end event type; ``late``: per market, drives
    already alerted as late and not synced yet; ``pending``: alerts the webhook has not accepted yet."""

    run_event_ids: dict[str, int] = field(default_factory=dict)
    late: dict[str, list[str]] = field(default_factory=dict)
    pending: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def parse(cls, raw: str | None) -> AlertCursor:
        return cls(**json.loads(raw)) if raw else cls()

    def dump(self) -> str:
        return json.dumps(
            {"run_event_ids": self.run_event_ids, "late": self.late, "pending": self.pending}, sort_keys=True
        )


def new_run_ids(records: Iterable[tuple[int, str]], after_id: int | None) -> tuple[list[str], int | None]:
    """Run ids of the (storage id, run id) records after ``after_id``, each once, in storage order, and the
    advanced cursor."""
    run_ids: dict[str, None] = {}
    last = after_id
    for storage_id, run_id in sorted(records):
        if after_id is not None and storage_id <= after_id:
            continue
        run_ids.setdefault(run_id)
        last = storage_id
    return list(run_ids), last


def _metadata_text(metadata: Mapping[str, Any]) -> str:
    """Short values only (counts, drive lists): markdown tables belong in the UI, not in a chat message."""
    values = ((k, str(getattr(v, "value", v))) for k, v in metadata.items())
    return ", ".join(f"{k}={v}" for k, v in values if len(v) <= 80)


def check_failure_alerts(
    evaluations: Iterable[AssetCheckEvaluation],
    monitored: frozenset[AssetKey],
    run_id: str,
    run_partition: str | None,
) -> list[Alert]:
    """One alert per failed evaluation of a monitored asset. ``drive_lateness`` is left to the lateness
    path, so a late drive is alerted once, not again when it is finally synced."""
    alerts = []
    for evaluation in evaluations:
        if evaluation.passed or evaluation.asset_key not in monitored or evaluation.check_name == LATENESS_CHECK:
            continue
        asset = evaluation.asset_key.to_user_string()
        # Checks declared without their own partitions_def are stored unpartitioned; the run knows the drive.
        partition = evaluation.partition or run_partition
        blocking = evaluation.blocking and evaluation.severity == AssetCheckSeverity.ERROR
        detail = " | ".join(filter(None, [evaluation.description, _metadata_text(evaluation.metadata)]))
        alerts.append(
            Alert(
                asset_key=asset,
                partition=partition,
                check=evaluation.check_name,
                severity=evaluation.severity.value,
                summary=(
                    f"{'blocking check' if blocking else 'check'} {evaluation.check_name} failed on "
                    f"{asset}[{partition or '-'}]" + (f": {detail}" if detail else "")
                )[:500],
                run_id=run_id,
            )
        )
    return alerts


@dataclass
class LatenessPlan:
    newly_late: list[tuple[str, int]] = field(default_factory=list)  # (drive, landed_at_ns)
    late: list[str] = field(default_factory=list)  # every alerted drive still not synced: the next cursor


def plan_lateness(
    registered: Iterable[str],
    synced: Iterable[str],
    already_late: Iterable[str],
    landed_at_ns: Callable[[str], int | None],
    *,
    now_ns: int,
    slo_ns: int,
) -> LatenessPlan:
    """Which registered drives became late since the last tick. ``landed_at_ns`` is called only for drives
    that are neither synced nor already alerted, so a tick reads the registry of in-flight drives only."""
    synced, already_late = set(synced), set(already_late)
    plan = LatenessPlan()
    for drive in sorted(set(registered) - synced):
        if drive in already_late:
            plan.late.append(drive)
            continue
        landed = landed_at_ns(drive)
        if landed is not None and now_ns - landed > slo_ns:
            plan.newly_late.append((drive, landed))
            plan.late.append(drive)
    return plan


def lateness_alerts(market: str, newly_late: Sequence[tuple[str, int]], *, now_ns: int, slo_ns: int) -> list[Alert]:
    asset = f"{market}/{SYNCED_ASSET}"
    slo_h = slo_ns / 3.6e12
    if len(newly_late) > MAX_LATENESS_ALERTS_PER_MARKET:
        names = ", ".join(drive for drive, _ in newly_late[:10])
        return [
            Alert(
                asset_key=asset,
                partition=None,
                check=LATENESS_CHECK,
                severity="WARN",
                summary=f"{len(newly_late)} {market.upper()} drives have no {SYNCED_ASSET} {slo_h:g} h after "
                f"landing (first: {names}); is the pipeline stalled?",
            )
        ]
    return [
        Alert(
            asset_key=asset,
            partition=drive,
            check=LATENESS_CHECK,
            severity="WARN",
            summary=f"drive {market}/{drive} landed {(now_ns - landed) / 3.6e12:.1f} h ago and has no "
            f"{SYNCED_ASSET} yet (SLO {slo_h:g} h)",
        )
        for drive, landed in newly_late
    ]


def deliver(alerts: Sequence[Alert], send: Callable[[Alert], bool], *, budget_s: float) -> list[Alert]:
    """Send in order and return the unsent rest. Stops at the first refusal (the webhook is down: every
    further alert would wait out its retries too) or when the time budget is spent."""
    started = time.monotonic()
    for index, alert in enumerate(alerts):
        if time.monotonic() - started > budget_s or not send(alert):
            return list(alerts[index:])
    return []


def _run_partition(run: DagsterRun | None) -> str | None:
    if run is None:
        return None
    if _PARTITION_TAG in run.tags:
        return run.tags[_PARTITION_TAG]
    start, end = run.tags.get(_RANGE_START_TAG), run.tags.get(_RANGE_END_TAG)
    return f"{start}...{end}" if start and end else None


def _run_failure_alert(entry: EventLogEntry, run: DagsterRun | None, asset_by_step: Mapping[str, str]) -> Alert:
    data = entry.get_dagster_event().event_specific_data  # JobFailureData
    error = getattr(data, "error", None)
    first_failure = getattr(data, "first_step_failure_event", None)
    detail = f" ({error.message.strip().splitlines()[0]})" if error else ""
    summary = f"run of {run.job_name if run else 'an unknown job'} failed: {entry.message}{detail}"
    return Alert(
        asset_key=asset_by_step.get(first_failure.step_key or "") if first_failure else None,
        partition=_run_partition(run),
        check=None,
        severity="ERROR",
        summary=summary[:500],
        run_id=entry.run_id,
    )


def _finished_run_alerts(
    instance: DagsterInstance, cursor: AlertCursor, monitored: frozenset[AssetKey], now_s: float
) -> list[Alert]:
    # Single-asset ops are named after their asset key; a run failure names its first failed step.
    asset_by_step = {key.to_python_identifier(): key.to_user_string() for key in monitored}
    alerts: list[Alert] = []
    for event_type in _RUN_END_EVENTS:
        after = cursor.run_event_ids.get(event_type.value)
        records_filter = (
            RunStatusChangeRecordsFilter(event_type, after_storage_id=after)
            if after is not None
            else RunStatusChangeRecordsFilter(event_type, after_timestamp=now_s - FIRST_TICK_LOOKBACK.total_seconds())
        )
        records = instance.fetch_run_status_changes(records_filter, limit=RUN_EVENTS_PER_TICK, ascending=True).records
        run_ids, last = new_run_ids(((r.storage_id, r.run_id) for r in records), after)
        if last is not None:
            cursor.run_event_ids[event_type.value] = last
        if not run_ids:
            continue
        runs = {run.run_id: run for run in instance.get_runs(filters=RunsFilter(run_ids=run_ids))}
        end_events = {r.run_id: r.event_log_entry for r in records}
        for run_id in run_ids:
            # The run has ended, so all of its check evaluations are in the event log.
            entries = instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
            evaluations = [cast("AssetCheckEvaluation", e.get_dagster_event().event_specific_data) for e in entries]
            alerts += check_failure_alerts(evaluations, monitored, run_id, _run_partition(runs.get(run_id)))
            if event_type == DagsterEventType.RUN_FAILURE:
                alerts.append(_run_failure_alert(end_events[run_id], runs.get(run_id), asset_by_step))
    return alerts


def _lateness(
    instance: DagsterInstance, lake: Lake, cursor: AlertCursor, markets: Sequence[str], now_ns: int, slo_ns: int
) -> tuple[list[Alert], list[AssetCheckEvaluation]]:
    alerts: list[Alert] = []
    evaluations: list[AssetCheckEvaluation] = []
    for market in markets:
        synced_key = AssetKey([market, SYNCED_ASSET])

        def landed_at(drive: str, market: str = market) -> int | None:
            record = lake.read_json(registry_path(market, drive))  # None until raw_drive has registered it
            return record.get("landed_at_ns") if record else None

        # Drive partitions and synced partitions: one query each, instead of listing the registry (S3 pages).
        plan = plan_lateness(
            instance.get_dynamic_partitions(drive_partitions(market).name),
            instance.get_materialized_partitions(synced_key),
            cursor.late.get(market, []),
            landed_at,
            now_ns=now_ns,
            slo_ns=slo_ns,
        )
        if plan.late:
            cursor.late[market] = plan.late
        else:
            cursor.late.pop(market, None)
        alerts += lateness_alerts(market, plan.newly_late, now_ns=now_ns, slo_ns=slo_ns)
        evaluations += [
            AssetCheckEvaluation(
                asset_key=synced_key,
                check_name=LATENESS_CHECK,
                passed=False,
                severity=AssetCheckSeverity.WARN,
                partition=drive,
                description=f"no {SYNCED_ASSET} {(now_ns - landed) / 3.6e12:.1f} h after landing "
                f"(SLO {slo_ns / 3.6e12:g} h)",
                metadata={
                    "landed_at": MetadataValue.timestamp(landed / 1e9),
                    "hours_since_landing": round((now_ns - landed) / 3.6e12, 2),
                    "slo_hours": slo_ns / 3.6e12,
                },
            )
            for drive, landed in plan.newly_late
        ]
    return alerts, evaluations


def evaluate_alerts(
    context: SensorEvaluationContext,
    webhook: AlertWebhook,
    lake: Lake,
    *,
    markets: Sequence[str],
    monitored: frozenset[AssetKey],
    lateness_slo: timedelta,
) -> SensorResult:
    cursor = AlertCursor.parse(context.cursor)
    now_ns = time.time_ns()
    alerts = _finished_run_alerts(context.instance, cursor, monitored, now_ns / 1e9)
    late_alerts, evaluations = _lateness(
        context.instance, lake, cursor, markets, now_ns, int(lateness_slo.total_seconds() * 1e9)
    )
    alerts += late_alerts

    unsent = deliver([Alert(**a) for a in cursor.pending] + alerts, webhook.send, budget_s=DELIVERY_BUDGET_S)
    if len(unsent) > MAX_PENDING:
        context.log.error(f"dropping the {len(unsent) - MAX_PENDING} oldest undelivered alert(s)")
    cursor.pending = [a.to_dict() for a in unsent[-MAX_PENDING:]]

    summary = (
        f"{len(alerts)} new alert(s), {len(unsent)} waiting for the webhook, "
        f"{sum(map(len, cursor.late.values()))} late drive(s) not synced yet"
    )
    context.log.info(summary)
    return SensorResult(
        asset_events=evaluations,
        cursor=cursor.dump(),
        skip_reason=None if alerts or unsent or evaluations else f"nothing new ({summary})",
    )


def build_alert_sensor(
    markets: Sequence[str],
    monitored_asset_keys: Iterable[AssetKey],
    *,
    lateness_slo: timedelta = LATENESS_SLO,
) -> SensorDefinition:
    """Alerts failed checks of ``monitored_asset_keys``, every failed run, and drives of ``markets`` without
    synced frames ``lateness_slo`` after landing. Needs the ``alert_webhook`` and ``lake`` resources."""
    monitored = frozenset(monitored_asset_keys)

    @sensor(
        name="alert_sensor",
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.RUNNING,
        description="One alert per failed asset check (blocking and warn), failed run and late drive "
        f"(no synced_frames {lateness_slo.total_seconds() / 3600:g} h after landing), sent to the alert webhook. "
        "Reports late drives as failed drive_lateness checks. See docs/alerts.md.",
    )
    def alert_sensor(context: SensorEvaluationContext, alert_webhook: AlertWebhook, lake: Lake) -> SensorResult:
        return evaluate_alerts(
            context, alert_webhook, lake, markets=tuple(markets), monitored=monitored, lateness_slo=lateness_slo
        )

    return alert_sensor
