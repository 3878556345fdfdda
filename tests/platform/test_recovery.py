"""A run-once killed with SIGKILL in the middle of decoded_signals is recovered by the next run-once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.tags import RUN_FAILURE_REASON_TAG

from ad_platform.definitions import build_definitions
from ad_platform.runner import run_once
from fleetgen import generate_fleet
from tests.support import REPO_ROOT


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("AD_LANDING_DIR", "AD_LAKE_DIR", "AD_CATALOG_PATH", "DAGSTER_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AD_STATE_DIR", str(tmp_path))
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return tmp_path


def _kill_during_decode(state: Path, drive: str) -> list[Path]:
    """Start `run-once` and SIGKILL it (and its decoder child) once decoded_signals has begun writing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AD_", "DAGSTER_HOME"))}
    env["AD_STATE_DIR"] = str(state)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ad_platform", "run-once", "--settle-s", "0"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    decoded = state / "lake" / "decoded" / "de"
    deadline = time.monotonic() + 300
    temporaries: list[Path] = []
    while not temporaries and proc.poll() is None and time.monotonic() < deadline:
        temporaries = list(decoded.glob(f".{drive}.tmp-*")) if decoded.is_dir() else []
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert temporaries, "run-once ended before decoded_signals started writing"
    return temporaries


def test_a_run_killed_in_decoded_signals_is_recovered_by_the_next_run_once(state: Path) -> None:
    (drive,) = generate_fleet(state / "landing", ["de"], 1, 1.0, seed=21, workers=1)
    temporaries = _kill_during_decode(state, drive.name)
    assert all(t.exists() for t in temporaries)  # the kill left the half-written decode behind

    defs = build_definitions()
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(state / "dagster_home"))) as instance:
        (killed,) = instance.get_runs()
        assert killed.status == DagsterRunStatus.STARTED
        assert instance.get_latest_materialization_event(AssetKey(["de", "raw_drive"])) is not None

        # With no recovery attempts allowed, the drive is given up at once; the cleanup happens all the same.
        lines: list[str] = []
        (given_up,) = run_once(defs, instance, state_dir=state, log=lines.append, settle_s=0, recovery_max_attempts=0)
        assert (given_up.drive_id, given_up.status, given_up.run_id) == (drive.name, "given_up", None)
        assert given_up.error is not None and given_up.error.startswith(
            f"de/{drive.name}@v1: interrupted and re-requested 0 time(s) without reaching synced_frames; given up"
        )
        failed = instance.get_run_by_id(killed.run_id)
        assert failed is not None and failed.status == DagsterRunStatus.FAILURE
        assert failed.tags[RUN_FAILURE_REASON_TAG] == "UNEXPECTED_TERMINATION"
        assert not any(t.exists() for t in temporaries)
        assert any("is gone (killed?): marked failed by the next run-once" in line for line in lines), lines
        assert any(line.startswith(f"removed the temporary decoded/de/.{drive.name}.tmp-") for line in lines)

        (recovered,) = run_once(defs, instance, state_dir=state, log=lines.append, settle_s=0)
        assert (recovered.drive_id, recovered.registration, recovered.status) == (
            drive.name,
            "recovery",
            "materialized",
        )
        assert recovered.materialized == [
            "de/decoded_signals",
            "de/drive_recording",
            "de/odd_tags",
            "de/raw_drive",
            "de/synced_frames",
        ]
        run = instance.get_run_by_id(recovered.run_id)
        assert run is not None and run.tags["ad-platform/recovery-of"] == f"de/{drive.name}@v1"
        assert (state / "lake" / "synced" / "de" / drive.name / "frames.parquet").is_file()

        assert run_once(defs, instance, state_dir=state, log=lines.append, settle_s=0) == []  # nothing left
