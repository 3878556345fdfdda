"""The alert webhook's URL is a secret: a failing POST never puts it in a log line, an error or the instance."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
from dagster import instance_for_test

from ad_platform.definitions import build_definitions
from ad_platform.runner import run_once, send_alerts_once
from ad_resources.alerts import Alert, AlertWebhook

SECRETS = ("T0SECRET", "B0SECRET", "XOXBSECRETTOKEN", "SECRETQUERY")


def _closed_loopback_url() -> str:
    """A Slack-shaped URL on a loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/services/T0SECRET/B0SECRET/XOXBSECRETTOKEN?token=SECRETQUERY"


def _assert_no_secret(text: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"{leaked} in:\n{text}"


def test_undeliverable_alert_is_logged_without_the_url(caplog: pytest.LogCaptureFixture) -> None:
    webhook = AlertWebhook(url=_closed_loopback_url(), max_attempts=2, backoff_s=0, timeout_s=2)
    caplog.set_level(logging.DEBUG)
    alert = Alert("de/raw_drive", "de-x", None, "ERROR", "raw_drive failed")
    assert webhook.send(alert) is False
    (line,) = [r.getMessage() for r in caplog.records if "did not accept" in r.getMessage()]
    assert "after 2 attempt(s) (ConnectionError: HTTPConnectionPool(host='127.0.0.1'" in line
    assert "Max retries exceeded with url: ***" in line
    _assert_no_secret("\n".join(r.getMessage() for r in caplog.records))


def test_alert_sensor_with_an_unreachable_webhook_leaks_the_url_nowhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture
) -> None:
    for var in ("AD_LANDING_DIR", "AD_LAKE_DIR", "AD_CATALOG_PATH", "DAGSTER_HOME", "AD_LOG_FORMAT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AD_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("AD_ALERT_WEBHOOK_URL", _closed_loopback_url())
    drive = tmp_path / "landing" / "de" / "de-lfs-pointer"
    drive.mkdir(parents=True)
    (drive / "recording.mcap").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    caplog.set_level(logging.DEBUG)
    defs = build_definitions()
    with instance_for_test() as instance:
        (outcome,) = run_once(defs, instance, state_dir=tmp_path, log=lambda _: None, settle_s=0)
        assert outcome.status == "failed"
        send_alerts_once(defs, instance)  # the run failure is alerted; the POST fails (connection refused)
        stored = [str(entry) for run in instance.get_runs() for entry in instance.all_logs(run.run_id)]
        sensor_state = [str(s) for s in instance.all_instigator_state()]
    out, err = capfd.readouterr()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "alert webhook did not accept the alert after 3 attempt(s)" in logged
    assert "with url: ***" in logged
    _assert_no_secret("\n".join([logged, out, err, *stored, *sensor_state]))
