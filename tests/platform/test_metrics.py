"""Pipeline metrics and JSON logs, on a real instance after a real (small) demo run.

The endpoint is started as its own process (`python -m ad_platform.metrics --port P`, what a deployment runs) and
scraped over loopback; the exposition is parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetKey,
    DagsterInstance,
    Definitions,
    asset,
    asset_check,
    instance_for_test,
    materialize,
)
from prometheus_client.parser import text_string_to_metric_families

from ad_common.partitions import drive_partitions
from ad_platform.definitions import build_definitions
from ad_platform.json_logging import JsonLineFormatter, platform_loggers
from ad_platform.metrics import PipelineCollector, render
from ad_platform.runner import DriveOutcome, run_once
from ad_resources.lake import LocalLake
from fleetgen import generate_fleet
from tests.support import REPO_ROOT

MARKETS = ["de", "jp"]
BAD_DRIVE = "de-demo-corrupt-log"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _samples(text: str) -> tuple[Samples, dict[str, str]]:
    """(sample name, labels) -> value, and metric family name -> type."""
    samples: Samples = {}
    types = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, types


def _get(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[DriveOutcome]]]:
    """1 drive x 2 markets x 0.4 min plus one corrupt DE drive, materialized on an on-disk SQLite instance."""
    state = tmp_path_factory.mktemp("metrics_state")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("AD_LANDING_DIR", "AD_LAKE_DIR", "AD_CATALOG_PATH", "DAGSTER_HOME"):
            mp.delenv(var, raising=False)
        mp.setenv("AD_STATE_DIR", str(state))
        landing = state / "landing"
        generate_fleet(landing, MARKETS, 1, 0.4, seed=3, workers=1)
        bad = landing / "de" / BAD_DRIVE
        bad.mkdir(parents=True)
        (bad / "recording.mcap").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
        home = state / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        with DagsterInstance.from_config(str(home)) as instance:
            outcomes = run_once(build_definitions(), instance, state_dir=state, log=lambda _: None, settle_s=0)
        yield state, outcomes


def test_metrics_endpoint_reports_drives_lag_bytes_and_failed_runs(demo: tuple[Path, list[DriveOutcome]]) -> None:
    state, outcomes = demo
    assert sorted((o.market, o.status) for o in outcomes) == [
        ("de", "failed"),
        ("de", "materialized"),
        ("jp", "materialized"),
    ]

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AD_", "DAGSTER_HOME"))}
    env["AD_STATE_DIR"] = str(state)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ad_platform.metrics", "--port", str(port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        text = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
            except requests.ConnectionError:
                time.sleep(0.25)
                continue
            assert response.status_code == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = response.text
            break
        assert text is not None, f"endpoint never answered (exit {proc.poll()})"
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert "serving pipeline metrics on http://127.0.0.1:" in stderr

    samples, types = _samples(text)
    assert types["ad_ingest_lag_seconds"] == "histogram"
    assert types["ad_stage_bytes"] == types["ad_stage_seconds"] == "summary"
    assert types["ad_drives_decoded"] == types["ad_runs"] == "gauge"
    for line in ("# HELP ad_drives_registered ", "# TYPE ad_drives_registered gauge"):
        assert line in text

    for market in MARKETS:
        assert _get(samples, "ad_drives_registered", market=market) == 1
        assert _get(samples, "ad_drives_decoded", market=market) == 1
        assert _get(samples, "ad_drives_landed", market=market) == (2 if market == "de" else 1)
        assert _get(samples, "ad_ingest_lag_seconds_count", market=market) == 1
        lag = _get(samples, "ad_ingest_lag_seconds_sum", market=market)
        assert 0 <= lag < 600
        assert _get(samples, "ad_ingest_lag_seconds_bucket", market=market, le="+Inf") == 1
        for stage in ("raw_drive", "decoded_signals"):
            assert _get(samples, "ad_stage_bytes_count", market=market, stage=stage) == 1
            assert _get(samples, "ad_stage_bytes_sum", market=market, stage=stage) > 1e6
        assert _get(samples, "ad_stage_seconds_sum", market=market, stage="decoded_signals") > 0
        assert _get(samples, "ad_stage_throughput_mb_per_s", market=market, stage="decoded_signals") > 0
        assert (
            _get(samples, "ad_asset_partitions", market=market, asset=f"{market}/raw_drive", status="materialized") == 1
        )
        assert _get(samples, "ad_runs", job=f"ingest_{market}", status="SUCCESS") == 1
    # The raw bytes are the registry's own total: the metric reads what raw_drive recorded.
    registry = json.loads(next((state / "lake/registry/de").glob("*.json")).read_text())
    assert _get(samples, "ad_stage_bytes_sum", market="de", stage="raw_drive") == registry["total_bytes"]
    # The corrupt drive: landed, never registered, its partition failed, one failed run.
    assert _get(samples, "ad_asset_partitions", market="de", asset="de/raw_drive", status="failed") == 1
    assert _get(samples, "ad_runs", job="ingest_de", status="FAILURE") == 1
    assert _get(samples, "ad_runs", job="ingest_jp", status="FAILURE") == 0
    # Markets without drives are reported as zero, not left out (dashboards and alerts see them).
    assert _get(samples, "ad_drives_landed", market="us") == 0


def test_check_failures_are_counted_per_check_and_severity(tmp_path: Path) -> None:
    @asset(key=AssetKey(["de", "toy_table"]))
    def toy_table() -> int:
        return 1

    @asset_check(asset=toy_table, name="rows_in_range")
    def rows_in_range() -> AssetCheckResult:
        return AssetCheckResult(passed=False, severity=AssetCheckSeverity.WARN, metadata={"rows": 1})

    @asset_check(asset=toy_table, name="schema_ok")
    def schema_ok() -> AssetCheckResult:
        return AssetCheckResult(passed=True)

    lake = LocalLake(root=str(tmp_path / "lake"))
    defs = Definitions(assets=[toy_table], asset_checks=[rows_in_range, schema_ok], resources={"lake": lake})
    with instance_for_test() as instance:
        for _ in range(2):
            assert materialize([toy_table, rows_in_range, schema_ok], instance=instance).success
        samples, _ = _samples(render(defs, instance))
        failure = {"market": "de", "asset": "de/toy_table", "check": "rows_in_range", "severity": "WARN"}
        assert _get(samples, "ad_asset_check_failures", **failure) == 2
        assert _get(samples, "ad_asset_check_latest_failed", **failure) == 1
        ok = {"market": "de", "asset": "de/toy_table", "check": "schema_ok", "severity": "ERROR"}
        assert ("ad_asset_check_failures", frozenset(ok.items())) not in samples
        assert _get(samples, "ad_asset_check_latest_failed", **ok) == 0

        # Incremental: a second scrape of the same collector sees only new events and stays consistent.
        collector = PipelineCollector(defs, instance, lake=lake)
        first = [m.name for m in collector.collect()]
        assert first == [m.name for m in collector.collect()]


def test_json_logger_emits_one_parseable_line_per_event_with_run_and_partition(
    demo: tuple[Path, list[DriveOutcome]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Route 1: the Dagster logger on a Definitions job (what `Definitions(loggers=...)` enables)."""
    state, outcomes = demo
    drive = next(o.drive_id for o in outcomes if o.market == "jp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AD_STATE_DIR", str(state))
        defs = Definitions.merge(build_definitions(), Definitions(loggers=platform_loggers()))
        with instance_for_test() as instance:
            instance.add_dynamic_partitions("drives_jp", [drive])
            capsys.readouterr()
            result = defs.resolve_job_def("ingest_jp").execute_in_process(
                instance=instance,
                partition_key=drive,
                run_config={
                    "loggers": {
                        "json": {"config": {"log_level": "DEBUG", "stream": "stdout"}},
                        # What run_once configures: the console logger must still exist beside json.
                        "console": {"config": {"log_level": "CRITICAL"}},
                    }
                },
            )
    assert result.success
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert lines, "no JSON lines on stdout"
    assert {line["run_id"] for line in lines} == {result.run_id}
    assert {line["partition"] for line in lines} == {drive}
    assert {line["job"] for line in lines} == {"ingest_jp"}
    for line in lines:
        assert {"timestamp", "level", "message"} <= line.keys()
    materialized = [line for line in lines if line.get("event_type") == "ASSET_MATERIALIZATION"]
    assert {line["asset_key"] for line in materialized} >= {"jp/raw_drive", "jp/decoded_signals"}
    # User log lines of an asset step are attributed to the asset (from the job's asset layer).
    user = [line for line in lines if "event_type" not in line and line.get("step") == "jp__raw_drive"]
    assert user and all(line["asset_key"] == "jp/raw_drive" for line in user)
    assert any(f"{drive}:" in line["message"] and "ok" in line["message"] for line in user)


def test_json_formatter_from_instance_python_logs_in_a_real_materialize(tmp_path: Path) -> None:
    """Route 2: `python_logs.dagster_handler_config` in dagster.yaml, no run config, with `materialize`."""
    log_file = tmp_path / "dagster.jsonl"
    partitions = drive_partitions("de")

    @asset(key=AssetKey(["de", "toy_drive"]), partitions_def=partitions)
    def toy_drive(context) -> None:  # type: ignore[no-untyped-def]
        context.log.info(f"processing {context.partition_key}")

    overrides = {
        "python_logs": {
            "dagster_handler_config": {
                "handlers": {"json": {"class": "logging.FileHandler", "filename": str(log_file), "formatter": "json"}},
                "formatters": {"json": {"()": "ad_platform.json_logging.JsonLineFormatter"}},
            }
        }
    }
    with instance_for_test(overrides=overrides) as instance:
        instance.add_dynamic_partitions(partitions.name or "", ["de-veh001-x"])
        result = materialize([toy_drive], instance=instance, partition_key="de-veh001-x")
        assert result.success
    # dictConfig attached the handler to a module-global logger: detach it so no later test writes here.
    dummy = logging.getLogger("dagster_dummy_logger")
    for handler in list(dummy.handlers):
        handler.close()
        dummy.removeHandler(handler)
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    mine = [line for line in lines if line.get("run_id") == result.run_id]
    assert mine and all(line["partition"] == "de-veh001-x" for line in mine)
    user = [line for line in mine if line["message"] == "processing de-veh001-x"]
    assert user and user[0]["asset_key"] == "de/toy_drive" and user[0]["step"] == "de__toy_drive"
    assert any(line.get("event_type") == "ASSET_MATERIALIZATION" for line in mine)
    assert JsonLineFormatter().format(logging.makeLogRecord({"msg": "plain"})).startswith('{"timestamp"')


def test_grafana_dashboard_queries_only_series_the_endpoint_exposes(demo: tuple[Path, list[DriveOutcome]]) -> None:
    state, _ = demo
    dashboard = json.loads((REPO_ROOT / "deploy/grafana/ad-platform-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"\bad_[a-z_]+", e)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AD_STATE_DIR", str(state))
        with DagsterInstance.from_config(str(state / "dagster_home")) as instance:
            _, types = _samples(render(build_definitions(), instance))
    assert used and used <= types.keys(), used - types.keys()
    assert {"ad_drives_decoded", "ad_ingest_lag_seconds", "ad_stage_throughput_mb_per_s"} <= used
    assert {"ad_asset_check_failures", "ad_runs"} <= used
