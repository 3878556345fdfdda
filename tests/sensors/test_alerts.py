"""Alert sensor and webhook: real assets and runs on a real SQLite instance, a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    DagsterInstance,
    MaterializeResult,
    SensorResult,
    asset,
    build_sensor_context,
    instance_for_test,
    materialize,
)
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from ad_common.lake_layout import registry_path
from ad_common.partitions import drive_partitions
from ad_resources.alerts import Alert, AlertWebhook
from ad_resources.lake import LocalLake
from ad_sensors.alerts import (
    LATENESS_CHECK,
    MAX_LATENESS_ALERTS_PER_MARKET,
    AlertCursor,
    build_alert_sensor,
    check_failure_alerts,
    deliver,
    lateness_alerts,
    new_run_ids,
    plan_lateness,
)

HOUR_NS = 3_600 * 10**9
UI = "http://dagster.test:3000"
DECODED = AssetKey(["de", "decoded_signals"])
SYNCED = AssetKey(["de", "synced_frames"])


class Receiver:
    """A webhook on 127.0.0.1 that records JSON bodies; ``refuse`` answers that many requests with 503."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.refuse = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    status = 503 if receiver.refuse > 0 else 200
                    if status == 503:
                        receiver.refuse -= 1
                    else:
                        receiver.bodies.append(body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def take(self) -> list[dict[str, Any]]:
        with self.lock:
            bodies, self.bodies = self.bodies, []
        return bodies


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    thread = threading.Thread(target=rec.server.serve_forever, daemon=True)
    thread.start()
    yield rec
    rec.server.shutdown()
    rec.server.server_close()


@asset(
    key=DECODED,
    partitions_def=drive_partitions("de"),
    check_specs=[
        AssetCheckSpec("streams_present", asset=DECODED, blocking=True),
        AssetCheckSpec("gap_ratio", asset=DECODED),
    ],
)
def decoded_signals(context) -> Iterator[Any]:
    bad = context.partition_key == "bad"
    yield MaterializeResult()
    yield AssetCheckResult(
        check_name="gap_ratio", passed=not bad, severity=AssetCheckSeverity.WARN, metadata={"gap_ratio": 0.4}
    )
    yield AssetCheckResult(
        check_name="streams_present", passed=not bad, severity=AssetCheckSeverity.ERROR, description="no camera"
    )


# drive_lateness declared as the platform does: the asset body must yield it (a declared check it never yields
# fails the run with DagsterStepOutputNotFoundError); the sensor adds failed evaluations for drives never synced.
@asset(
    key=SYNCED,
    deps=[DECODED],
    partitions_def=drive_partitions("de"),
    check_specs=[AssetCheckSpec(LATENESS_CHECK, asset=SYNCED)],
)
def synced_frames() -> Iterator[Any]:
    yield MaterializeResult()
    yield AssetCheckResult(check_name=LATENESS_CHECK, passed=True, severity=AssetCheckSeverity.WARN)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DagsterInstance, Path, str]]:
    """One failing run (drive 'bad': blocking + warn check fail) and one good run ('late_synced'), plus a
    registry with a late, a fresh, a late-but-synced drive and the bad drive (landed just now)."""
    lake_root = tmp_path_factory.mktemp("lake")
    lake = LocalLake(root=str(lake_root))
    now = time.time_ns()
    for drive, age_h in {"late": 7, "fresh": 1, "late_synced": 7, "bad": 0}.items():
        lake.write_json(registry_path("de", drive), {"drive_id": drive, "landed_at_ns": now - age_h * HOUR_NS})
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("drives_de", ["late", "fresh", "late_synced", "bad"])
        runs = {
            drive: materialize(
                [decoded_signals, synced_frames], instance=instance, partition_key=drive, raise_on_error=False
            )
            for drive in ("bad", "late_synced")
        }
        assert not runs["bad"].success and runs["late_synced"].success
        yield instance, lake_root, runs["bad"].run_id


def _tick(fleet: tuple[DagsterInstance, Path, str], webhook: AlertWebhook, cursor: str | None) -> SensorResult:
    instance, lake_root, _ = fleet
    sensor = build_alert_sensor(["de"], [DECODED, SYNCED])
    with build_sensor_context(
        instance=instance, cursor=cursor, resources={"alert_webhook": webhook, "lake": LocalLake(root=str(lake_root))}
    ) as context:
        result = sensor(context)
    assert isinstance(result, SensorResult)
    return result


def _key(body: dict[str, Any]) -> tuple[Any, ...]:
    return body["asset_key"], body["partition"], body["check"], body["severity"], body["run_url"]


def test_each_failure_alerted_once(fleet: tuple[DagsterInstance, Path, str], receiver: Receiver) -> None:
    instance, _, bad_run = fleet
    webhook = AlertWebhook(url=receiver.url, ui_base_url=UI)
    first = _tick(fleet, webhook, None)
    bodies = receiver.take()
    run_url = f"{UI}/runs/{bad_run}"
    assert sorted(map(_key, bodies), key=str) == sorted(
        [
            ("de/decoded_signals", "bad", "streams_present", "ERROR", run_url),
            ("de/decoded_signals", "bad", "gap_ratio", "WARN", run_url),
            ("de/decoded_signals", "bad", None, "ERROR", run_url),  # the failed run
            ("de/synced_frames", "late", LATENESS_CHECK, "WARN", None),
        ],
        key=str,
    )
    assert all(b["run_id"] == bad_run for b in bodies if b["run_url"])
    assert next(b for b in bodies if b["check"] == "streams_present")["summary"].endswith(": no camera")
    assert "gap_ratio=0.4" in next(b for b in bodies if b["check"] == "gap_ratio")["summary"]

    (evaluation,) = first.asset_events
    assert isinstance(evaluation, AssetCheckEvaluation)
    assert (evaluation.asset_key, evaluation.check_name, evaluation.partition) == (SYNCED, LATENESS_CHECK, "late")
    assert not evaluation.passed and evaluation.severity == AssetCheckSeverity.WARN
    assert AlertCursor.parse(first.cursor).late == {"de": ["late"]}

    # What the daemon does with the sensor's asset_events: the declared check shows the late drive as failed.
    instance.report_runless_asset_event(evaluation)
    infos = instance.event_log_storage.get_asset_check_partition_info([AssetCheckKey(SYNCED, LATENESS_CHECK)])
    status = {i.partition_key: i.latest_execution_status for i in infos}
    assert status["late"] == AssetCheckExecutionRecordStatus.FAILED

    second = _tick(fleet, webhook, first.cursor)
    assert receiver.take() == []
    assert second.asset_events == [] and second.skip_reason
    assert AlertCursor.parse(second.cursor).late == {"de": ["late"]}


def test_undelivered_alerts_are_sent_next_tick(fleet: tuple[DagsterInstance, Path, str], receiver: Receiver) -> None:
    webhook = AlertWebhook(url=receiver.url, max_attempts=2, backoff_s=0)
    receiver.refuse = 2  # the first alert's two attempts; the tick then stops sending
    first = _tick(fleet, webhook, None)
    assert receiver.take() == [] and len(AlertCursor.parse(first.cursor).pending) == 4
    second = _tick(fleet, webhook, first.cursor)
    assert len(receiver.take()) == 4 and AlertCursor.parse(second.cursor).pending == []
    _tick(fleet, webhook, second.cursor)
    assert receiver.take() == []


def test_webhook_retries_then_delivers(receiver: Receiver) -> None:
    alert = Alert("de/decoded_signals", "d1", "gap_ratio", "WARN", "gap", run_id="abc")
    receiver.refuse = 1
    assert AlertWebhook(url=receiver.url, backoff_s=0, ui_base_url=UI + "/").send(alert)
    assert receiver.take() == [
        {
            "asset_key": "de/decoded_signals",
            "partition": "d1",
            "check": "gap_ratio",
            "severity": "WARN",
            "summary": "gap",
            "run_id": "abc",
            "run_url": f"{UI}/runs/abc",
        }
    ]
    assert AlertWebhook(url=None).send(alert)  # log only
    unreachable = AlertWebhook(url="http://127.0.0.1:9/hook", max_attempts=2, backoff_s=0, timeout_s=1)
    assert not unreachable.send(alert)


def test_plan_lateness() -> None:
    landed = {"late": 0, "fresh": 5 * HOUR_NS, "synced": 0, "known": 0, "unregistered_run": None}
    reads: list[str] = []

    def landed_at(drive: str) -> int | None:
        reads.append(drive)
        return landed[drive]

    plan = plan_lateness(
        landed, {"synced", "gone"}, {"known", "gone"}, landed_at, now_ns=7 * HOUR_NS, slo_ns=6 * HOUR_NS
    )
    assert plan.newly_late == [("late", 0)]
    assert plan.late == ["known", "late"]  # 'gone' is synced: forgotten
    assert sorted(reads) == ["fresh", "late", "unregistered_run"]  # synced and already-late drives are not read


def test_new_run_ids_and_delivery() -> None:
    assert new_run_ids([(7, "b"), (5, "a"), (6, "a"), (3, "old")], 4) == (["a", "b"], 7)
    assert new_run_ids([], 4) == ([], 4)
    alerts = [Alert(None, None, None, "ERROR", str(i)) for i in range(3)]
    assert deliver(alerts, lambda a: a.summary != "1", budget_s=10) == alerts[1:]


def test_check_failure_alerts_and_summary() -> None:
    def evaluation(check: str, passed: bool, key: AssetKey = DECODED) -> AssetCheckEvaluation:
        return AssetCheckEvaluation(asset_key=key, check_name=check, passed=passed, blocking=True)

    evaluations = [
        evaluation("a", False),
        evaluation("b", True),
        evaluation("c", False, AssetKey(["x"])),
        evaluation(LATENESS_CHECK, False, SYNCED),
    ]
    (alert,) = check_failure_alerts(evaluations, frozenset({DECODED, SYNCED}), "r1", "drive7")
    assert (alert.check, alert.partition, alert.severity, alert.run_id) == ("a", "drive7", "ERROR", "r1")
    assert alert.summary.startswith("blocking check a failed on de/decoded_signals[drive7]")

    many = [(f"d{i}", 0) for i in range(MAX_LATENESS_ALERTS_PER_MARKET + 1)]
    (summary,) = lateness_alerts("de", many, now_ns=7 * HOUR_NS, slo_ns=6 * HOUR_NS)
    assert summary.partition is None and summary.summary.startswith(f"{len(many)} DE drives")
    assert len(lateness_alerts("de", many[:2], now_ns=7 * HOUR_NS, slo_ns=6 * HOUR_NS)) == 2
