"""Bring-your-own-logs path end to end: fleet → sensor → ingest runs, on a real instance and real files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from dagster import AssetKey, instance_for_test
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest

from ad_platform.definitions import build_definitions
from ad_platform.runner import run_once
from fleetgen import generate_fleet
from tests.support import REPO_ROOT


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("AD_LANDING_DIR", "AD_LAKE_DIR", "AD_CATALOG_PATH", "DAGSTER_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AD_STATE_DIR", str(tmp_path))
    return tmp_path


def test_drives_go_through_once_reuploads_do_nothing_and_dbc_or_profile_changes_make_them_stale(state: Path) -> None:
    landing = state / "landing"
    (drive_dir,) = generate_fleet(landing, ["de"], 1, 0.4, seed=7, workers=1)
    defs = build_definitions()
    with instance_for_test() as instance:
        (outcome,) = run_once(defs, instance, state_dir=state, log=lambda _: None)
        assert (outcome.market, outcome.drive_id, outcome.status) == ("de", drive_dir.name, "materialized")
        assert outcome.materialized == ["de/decoded_signals", "de/raw_drive", "de/synced_frames"]
        decoded = state / "lake" / "decoded" / "de" / drive_dir.name
        assert (decoded / "can__esp_vehicle_speed.parquet").is_file()
        rows = defs.resources["catalog"].query("select count(*) from raw_files where drive_id = ?", [drive_dir.name])
        assert rows == [(3,)]  # mf4, mcap, drive.json

        assert run_once(defs, instance, state_dir=state, log=lambda _: None) == []

        # The same drive uploaded again (deterministic generator: identical bytes, new mtimes).
        generate_fleet(landing, ["de"], 1, 0.4, seed=7, workers=1)
        assert run_once(defs, instance, state_dir=state, log=lambda _: None) == []

        resolver = CachingStaleStatusResolver(
            instance, defs.resolve_asset_graph(), loading_context=LoadingContextForTest(instance)
        )
        key = AssetKey(["de", "decoded_signals"])
        assert resolver.get_status(key, drive_dir.name) == StaleStatus.FRESH, [
            (c.key, c.reason, c.dependency) for c in resolver.get_stale_root_causes(key, drive_dir.name)
        ]

        dbc = landing / "de" / "_dbc" / "vehicle.dbc"
        dbc.write_text(dbc.read_text() + '\nCM_ "signal table revised";\n')
        assert run_once(defs, instance, state_dir=state, log=lambda _: None) == []
        resolver = CachingStaleStatusResolver(
            instance, defs.resolve_asset_graph(), loading_context=LoadingContextForTest(instance)
        )
        assert resolver.get_status(key, drive_dir.name) == StaleStatus.STALE

        # a market sensor profile is a new data version of de/sensor_profiles: the synced drive turns stale
        synced = AssetKey(["de", "synced_frames"])
        resolver = CachingStaleStatusResolver(
            instance, defs.resolve_asset_graph(), loading_context=LoadingContextForTest(instance)
        )
        causes = {c.key for c in resolver.get_stale_root_causes(synced, drive_dir.name)}
        assert AssetKey(["de", "sensor_profiles"]) not in {k.asset_key for k in causes}
        profile = json.loads((REPO_ROOT / "ad_core/sync/profiles/fleetgen.json").read_text())
        (landing / "de" / "_profiles").mkdir()
        (landing / "de" / "_profiles" / "fleetgen.json").write_text(json.dumps({**profile, "version": 2}))
        assert run_once(defs, instance, state_dir=state, log=lambda _: None) == []
        resolver = CachingStaleStatusResolver(
            instance, defs.resolve_asset_graph(), loading_context=LoadingContextForTest(instance)
        )
        causes = {c.key.asset_key for c in resolver.get_stale_root_causes(synced, drive_dir.name)}
        assert AssetKey(["de", "sensor_profiles"]) in causes


@pytest.mark.slow
def test_demo_command_runs_end_to_end_at_small_size(tmp_path: Path) -> None:
    # Under a dot-folder, as the default <repo>/.state is: a hidden-path filter on absolute paths once emptied
    # every lake listing there (no catalog views, drift over zero drives, no drives in the metrics).
    state = tmp_path / ".state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AD_", "DAGSTER_HOME"))}
    env["AD_STATE_DIR"] = str(state)
    demo = subprocess.run(
        [sys.executable, "-m", "ad_platform", "demo", "--drives", "2", "--markets", "de,jp", "--minutes", "0.4"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "4 drive run(s) materialized, 2 failed" in demo.stdout
    assert "1 blocking asset check failed with ERROR severity: de/decoded_signals: no_gaps" in demo.stdout
    alerts = [line for line in (demo.stdout + demo.stderr).splitlines() if line.startswith("ALERT ")]
    assert any(line.startswith("ALERT ERROR de/decoded_signals[") and " no_gaps: " in line for line in alerts), alerts
    assert (
        "FAILED de/de-demo-corrupt-log: drive de/de-demo-corrupt-log: file recording.mcap is a Git LFS pointer"
        in demo.stdout
    )
    reason = json.loads((state / "landing/_quarantine/de/de-demo-corrupt-log/recording.mcap.reason.json").read_text())
    assert "Git LFS pointer" in reason["reason"]
    # the printed catalog is ready to open: its views exist and count the decoded drives the demo reported
    # (DE: 2 good drives + the GNSS-dropout drive, decoded before its blocking check stopped it)
    assert re.search(r"^  DE: 3 drive\(s\), \d+ stream tables, [\d,]+ rows$", demo.stdout, re.M), demo.stdout
    assert re.search(r"^  JP: 2 drive\(s\), \d+ stream tables", demo.stdout, re.M), demo.stdout
    with duckdb.connect(str(state / "catalog.duckdb"), read_only=True) as con:
        decoded = con.sql("SELECT market, count(DISTINCT drive_id) FROM decoded_streams GROUP BY 1 ORDER BY 1")
        assert decoded.fetchall() == [("de", 3), ("jp", 2)]
        summaries = con.sql("SELECT market, count(*) FROM drive_signal_summaries GROUP BY 1 ORDER BY 1")
        assert summaries.fetchall() == [("de", 2), ("jp", 2)]
    # drift compared the second drive of each market against the first (reference of 1 in the demo)
    for market in ("DE", "JP"):
        assert re.search(rf"^  {market}: compared 1 new drive\(s\) against 1 reference drive\(s\)", demo.stdout, re.M)
    # the metrics endpoint sees the drives: every landed drive, and the decoded ones
    assert re.search(r"^  DE: 4 landed, 3 decoded$", demo.stdout, re.M), demo.stdout
    assert re.search(r"^  JP: 2 landed, 2 decoded$", demo.stdout, re.M), demo.stdout

    again = subprocess.run(
        [sys.executable, "-m", "ad_platform", "run-once"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == []


@pytest.mark.realdata
def test_crash_reproducers_fail_their_own_drives_and_every_good_drive_is_ingested(
    state: Path, shared_data: Path
) -> None:
    """asammdf segfaults on these files (in validation, in decoding); one run-once still ingests the good drive."""
    landing = state / "landing"
    (good,) = generate_fleet(landing, ["de"], 1, 0.4, seed=5, workers=1)
    crashers = ["segv_get_master_9619.mf4", "segv_vlsd_9095.mf4"]
    for i, name in enumerate(crashers):
        folder = landing / "de" / f"de-crash-{i}"
        folder.mkdir(parents=True)
        (folder / name).write_bytes((shared_data / "bad/fuzz" / name).read_bytes())
    with instance_for_test() as instance:
        outcomes = {o.drive_id: o for o in run_once(build_definitions(), instance, state_dir=state, log=lambda _: None)}
    assert set(outcomes) == {good.name, "de-crash-0", "de-crash-1"}
    assert outcomes[good.name].status == "materialized"
    assert "de/synced_frames" in outcomes[good.name].materialized
    for i, name in enumerate(crashers):
        failed = outcomes[f"de-crash-{i}"]
        assert failed.status == "failed" and name in (failed.error or ""), failed.error
        assert "SIGSEGV" in (failed.error or ""), failed.error
