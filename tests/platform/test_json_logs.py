"""JSON-lines logs from real Dagster runs: fields an aggregator filters on, and secrets never in a line.

Two real runs of a tiny per-drive partitioned asset in market `de`:
* `dagster.materialize` with the instance's `python_logs` JSON handler (how Kubernetes pods can be configured
  without run config), lines read back from the handler's file;
* a job of `Definitions(loggers=platform_loggers())` with `AD_LOG_FORMAT=json`, lines read from stderr.
The asset logs a webhook URL with a token and a database URL with a password; neither may survive.
"""

# No `from __future__ import annotations`: Dagster compares the `context` annotation by identity.
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetExecutionContext, AssetKey, Definitions, asset, colored_console_logger, materialize
from dagster._core.test_utils import instance_for_test

from ad_common.partitions import drive_partitions
from ad_platform.json_logging import json_logger, platform_loggers, redact

DRIVE = "de-veh001-20260101t000000"
WEBHOOK = "https://hooks.example/services/T0SECRET/B0ALSO/xyzzy?token=tok-123456"
DB_URL = "postgresql+psycopg2://dagster:hunter2-pw@db.internal:5432/dagster"
SECRETS = ("T0SECRET", "B0ALSO", "xyzzy", "tok-123456", "hunter2-pw")


def _toy_asset(fail: bool = False) -> Any:
    @asset(key=AssetKey(["de", "toy_drive"]), partitions_def=drive_partitions("de"))
    def toy_drive(context: AssetExecutionContext) -> None:
        context.log.info(f"processing {context.partition_key}")
        context.log.warning(f"alert webhook {WEBHOOK} answered 500")
        context.log.info(f"catalog at {DB_URL}")
        if fail:
            raise RuntimeError(f"POST {WEBHOOK} failed")

    return toy_drive


def _assert_lines(lines: list[dict[str, Any]], run_id: str, job: str) -> None:
    assert lines
    assert {line["run_id"] for line in lines} == {run_id}
    assert {line["job"] for line in lines} == {job}
    assert {line["partition"] for line in lines} == {DRIVE}
    assert {line["drive"] for line in lines} == {DRIVE}
    for line in lines:
        assert {"timestamp", "level", "logger", "message"} <= line.keys()
    steps = [line for line in lines if line.get("step")]
    assert {line["step"] for line in steps} == {"de__toy_drive"}
    assert {line["asset_key"] for line in steps} == {"de/toy_drive"}
    assert {line["market"] for line in steps} == {"de"}
    messages = [line["message"] for line in steps]
    assert f"processing {DRIVE}" in messages
    assert "alert webhook https://hooks.example/*** answered 500" in messages
    assert "catalog at postgresql+psycopg2://***@db.internal:5432/dagster" in messages


def _detach_instance_handlers() -> None:
    # dictConfig attached the handler to a module-global logger: detach it so no later test writes there.
    dummy = logging.getLogger("dagster_dummy_logger")
    for handler in list(dummy.handlers):
        handler.close()
        dummy.removeHandler(handler)


def test_materialize_writes_parseable_json_lines_with_run_partition_market(tmp_path: Path) -> None:
    log_file = tmp_path / "dagster.jsonl"
    overrides = {
        "python_logs": {
            "dagster_handler_config": {
                "handlers": {"json": {"class": "logging.FileHandler", "filename": str(log_file), "formatter": "json"}},
                "formatters": {"json": {"()": "ad_platform.json_logging.JsonLineFormatter"}},
            }
        }
    }
    try:
        with instance_for_test(overrides=overrides) as instance:
            instance.add_dynamic_partitions("drives_de", [DRIVE])
            ok = materialize([_toy_asset()], instance=instance, partition_key=DRIVE)
            failed = materialize([_toy_asset(fail=True)], instance=instance, partition_key=DRIVE, raise_on_error=False)
    finally:
        _detach_instance_handlers()
    assert ok.success and not failed.success
    text = log_file.read_text()
    for secret in SECRETS:
        assert secret not in text
    lines = [json.loads(raw) for raw in text.splitlines()]
    by_run = {run.run_id: [line for line in lines if line["run_id"] == run.run_id] for run in (ok, failed)}
    assert len(by_run) == 2 and sum(map(len, by_run.values())) == len(lines)
    for run_id, run_lines in by_run.items():
        _assert_lines(run_lines, run_id, "__ephemeral_asset_job__")
    events = {line.get("event_type") for line in by_run[ok.run_id]}
    assert {"STEP_START", "ASSET_MATERIALIZATION", "STEP_SUCCESS", "PIPELINE_SUCCESS"} <= events
    failure = [line for line in by_run[failed.run_id] if line.get("event_type") == "STEP_FAILURE"]
    assert len(failure) == 1
    assert failure[0]["level"] == "ERROR"
    assert failure[0]["message"] == 'Execution of step "de__toy_drive" failed.'
    assert "RuntimeError: POST https://hooks.example/*** failed" in failure[0]["error"]


def test_ad_log_format_json_switches_the_console_logger(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AD_LOG_FORMAT", raising=False)
    assert platform_loggers()["console"] is colored_console_logger
    monkeypatch.setenv("AD_LOG_FORMAT", "json")
    loggers = platform_loggers()
    assert loggers["console"] is json_logger
    defs = Definitions(assets=[_toy_asset()], loggers=loggers)
    job = defs.resolve_implicit_global_asset_job_def()
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("drives_de", [DRIVE])
        capsys.readouterr()
        # The same run config runner.py passes: `console` keeps its `log_level` key.
        result = job.execute_in_process(
            instance=instance,
            partition_key=DRIVE,
            run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
        )
    assert result.success
    err = capsys.readouterr().err
    for secret in SECRETS:
        assert secret not in err
    lines = [json.loads(raw) for raw in err.splitlines() if raw.startswith("{")]
    assert len(lines) == len([raw for raw in err.splitlines() if raw.strip()])  # nothing but JSON lines
    _assert_lines(lines, result.run_id, job.name)


def test_redact_keeps_what_is_safe() -> None:
    assert redact("s3://ad-fleet-lake/lake/de/x.parquet") == "s3://ad-fleet-lake/lake/de/x.parquet"
    assert redact("wrote 3 files, password=abc, token: xyz") == "wrote 3 files, password=***, token: ***"
    assert redact(f"see {WEBHOOK}.") == "see https://hooks.example/***"
    assert redact("https://hooks.example") == "https://hooks.example"


def test_redact_removes_secret_env_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AD_ALERT_WEBHOOK_URL", "hooks-without-scheme/T0SECRET")
    assert redact("sent to hooks-without-scheme/T0SECRET ok") == "sent to *** ok"
