"""Bring-your-own-logs path end to end: fleet → sensor → ingest runs, on a real instance and real files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest
from dagster import AssetKey, DagsterInstance, instance_for_test
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.instance.ref import InstanceRef
from dagster._core.loader import LoadingContextForTest

from ad_platform.definitions import build_definitions
from ad_platform.runner import RunOnceBusy, outcomes_json, run_once, run_once_lock
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
        (outcome,) = run_once(defs, instance, state_dir=state, log=lambda _: None, settle_s=0)
        assert (outcome.market, outcome.drive_id, outcome.status) == ("de", drive_dir.name, "materialized")
        assert outcome.materialized == [
            "de/decoded_signals",
            "de/drive_recording",
            "de/odd_tags",
            "de/raw_drive",
            "de/synced_frames",
        ]
        decoded = state / "lake" / "decoded" / "de" / drive_dir.name
        assert (decoded / "can__esp_vehicle_speed.parquet").is_file()
        rows = defs.resources["catalog"].query("select count(*) from raw_files where drive_id = ?", [drive_dir.name])
        assert rows == [(3,)]  # mf4, mcap, drive.json

        assert run_once(defs, instance, state_dir=state, log=lambda _: None, settle_s=0) == []

        # The same drive uploaded again (deterministic generator: identical bytes, new mtimes).
        generate_fleet(landing, ["de"], 1, 0.4, seed=7, workers=1)
        assert run_once(defs, instance, state_dir=state, log=lambda _: None, settle_s=0) == []

        resolver = CachingStaleStatusResolver(
            instance, defs.resolve_asset_graph(), loading_context=LoadingContextForTest(instance)
        )
        key = AssetKey(["de", "decoded_signals"])
        assert resolver.get_status(key, drive_dir.name) == StaleStatus.FRESH, [
            (c.key, c.reason, c.dependency) for c in resolver.get_stale_root_causes(key, drive_dir.name)
        ]

        dbc = landing / "de" / "_dbc" / "vehicle.dbc"
        dbc.write_text(dbc.read_text() + '\nCM_ "signal table revised";\n')
        assert run_once(defs, instance, state_dir=state, log=lambda _: None, settle_s=0) == []
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
        [
            sys.executable,
            "-m",
            "ad_platform",
            "demo",
            "--drives",
            "3",
            "--markets",
            "de,jp",
            "--minutes",
            "0.4",
            "--epochs",
            "1",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "6 drive run(s) materialized, 2 failed" in demo.stdout
    assert "1 blocking asset check failed with ERROR severity: de/decoded_signals: no_gaps" in demo.stdout
    # Each log record is printed once: no library's logging.basicConfig() repeats Dagster's lines on the root logger.
    assert "INFO:dagster" not in demo.stderr and "ERROR:dagster" not in demo.stderr, demo.stderr[-2000:]
    alerts = [line[line.index("ALERT ") :] for line in (demo.stdout + demo.stderr).splitlines() if "ALERT " in line]
    assert any(line.startswith("ALERT ERROR de/decoded_signals[") and " no_gaps: " in line for line in alerts), alerts
    assert (
        "FAILED de/de-demo-corrupt-log: drive de/de-demo-corrupt-log: file recording.mcap is a Git LFS pointer"
        in demo.stdout
    )
    reason = json.loads((state / "landing/_quarantine/de/de-demo-corrupt-log/recording.mcap.reason.json").read_text())
    assert "Git LFS pointer" in reason["reason"]
    # the printed catalog is ready to open: its views exist and count the decoded drives the demo reported
    # (DE: 3 good drives + the GNSS-dropout drive, decoded before its blocking check stopped it)
    assert re.search(r"^  DE: 4 drive\(s\), \d+ stream tables, [\d,]+ rows$", demo.stdout, re.M), demo.stdout
    assert re.search(r"^  JP: 3 drive\(s\), \d+ stream tables", demo.stdout, re.M), demo.stdout
    with duckdb.connect(str(state / "catalog.duckdb"), read_only=True) as con:
        decoded = con.sql("SELECT market, count(DISTINCT drive_id) FROM decoded_streams GROUP BY 1 ORDER BY 1")
        assert decoded.fetchall() == [("de", 4), ("jp", 3)]
        summaries = con.sql("SELECT market, count(*) FROM drive_signal_summaries GROUP BY 1 ORDER BY 1")
        assert summaries.fetchall() == [("de", 3), ("jp", 3)]
        splits = con.sql("SELECT market, split, count(*) FROM split_assignments GROUP BY ALL ORDER BY ALL")
        assert splits.fetchall() == [(m, s, 1) for m in ("de", "jp") for s in ("test", "train", "val")]
    # drift compared the newer drives of each market against the first (reference of 1 in the demo)
    for market in ("DE", "JP"):
        assert re.search(rf"^  {market}: compared 2 new drive\(s\) against 1 reference drive\(s\)", demo.stdout, re.M)
        assert re.search(
            rf"^  {market} v1: train 1/\d+, val 1/\d+, test 1/\d+; no_drive_or_place_leakage ok, odd_quotas ok, "
            "min_frames_per_split ok$",
            demo.stdout,
            re.M,
        ), demo.stdout
    # the metrics endpoint sees the drives: every landed drive, and the decoded ones
    assert re.search(r"^  DE: 5 landed, 4 decoded$", demo.stdout, re.M), demo.stdout
    assert re.search(r"^  JP: 3 landed, 3 decoded$", demo.stdout, re.M), demo.stdout

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
        outcomes = {
            o.drive_id: o
            for o in run_once(build_definitions(), instance, state_dir=state, log=lambda _: None, settle_s=0)
        }
    assert set(outcomes) == {good.name, "de-crash-0", "de-crash-1"}
    assert outcomes[good.name].status == "materialized"
    assert "de/synced_frames" in outcomes[good.name].materialized
    for i, name in enumerate(crashers):
        failed = outcomes[f"de-crash-{i}"]
        assert failed.status == "failed" and name in (failed.error or ""), failed.error
        assert "SIGSEGV" in (failed.error or ""), failed.error


LONG_AGO_NS = time.time_ns() - 3_600 * 10**9


def backdate(folder: Path) -> None:
    """What waiting out the settle window does to a drive folder: everything in it was last touched long ago."""
    for path in folder.iterdir():
        os.utime(path, ns=(LONG_AGO_NS, LONG_AGO_NS))
    os.utime(folder, ns=(LONG_AGO_NS, LONG_AGO_NS))


def test_a_drive_still_being_written_is_settling_not_quarantined(state: Path) -> None:
    landing = state / "landing"
    good, uploading = generate_fleet(landing, ["de"], 2, 0.4, seed=3, workers=1)
    backdate(good)
    mcap = next(uploading.glob("*.mcap"))
    content = mcap.read_bytes()
    mcap.write_bytes(content[: len(content) // 3])
    done_uploading = threading.Event()

    def upload_slowly() -> None:  # a slow link: a few bytes every 0.2 s for as long as run-once runs
        with open(mcap, "ab") as fh:
            offset = len(content) // 3
            while not done_uploading.wait(0.2):
                fh.write(content[offset : offset + 16])
                fh.flush()
                offset += 16

    uploader = threading.Thread(target=upload_slowly)
    uploader.start()
    defs = build_definitions()
    with instance_for_test() as instance:
        try:
            outcomes = {o.drive_id: o for o in run_once(defs, instance, state_dir=state, log=lambda _: None)}
        finally:
            done_uploading.set()
            uploader.join()
        assert outcomes[good.name].status == "materialized"
        waiting = outcomes[uploading.name]
        assert (waiting.status, waiting.run_id, waiting.registration) == ("settling", None, None)
        assert waiting.error == (
            f"de/{uploading.name}: still being written (changed less than 5 s ago); left for the next run"
        )
        assert not (landing / "_quarantine").exists()
        assert len(content) // 3 < mcap.stat().st_size < len(content)  # left where it is, still growing

        mcap.write_bytes(content)  # the upload completes; then the settle window passes
        backdate(uploading)
        (done,) = run_once(defs, instance, state_dir=state, log=lambda _: None)
        assert (done.drive_id, done.status, done.registration) == (uploading.name, "materialized", "new")
        assert "de/synced_frames" in done.materialized


def test_folders_that_are_not_drives_are_in_the_json_output(state: Path) -> None:
    for name in (".partial-upload", "Drive With Spaces"):
        folder = state / "landing" / "de" / name
        folder.mkdir(parents=True)
        (folder / "a.mcap").write_bytes(b"x")
        backdate(folder)
    with instance_for_test() as instance:
        report = json.loads(outcomes_json(run_once(build_definitions(), instance, state_dir=state, log=print)))
        assert [(o["drive_id"], o["status"], o["run_id"]) for o in report] == [
            (".partial-upload", "skipped", None),
            ("Drive With Spaces", "invalid_name", None),
        ]
        assert report[0]["error"] == (
            "de/.partial-upload: hidden folder (name starts with '.'), not a drive; rename it to 'partial-upload' "
            "if it is one"
        )
        assert "rename the folder to 'drive-with-spaces'" in report[1]["error"]
        # reported once: the cursor has them, as the sensor's has
        assert run_once(build_definitions(), instance, state_dir=state, log=print) == []


def _write_local_instance_config(state: Path) -> Path:
    """The embedded default's instance folder, written once before processes that share it start."""
    home = state / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return home


def _run_once_process(state: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AD_", "DAGSTER_HOME"))}
    env["AD_STATE_DIR"] = str(state)
    return subprocess.Popen(
        [sys.executable, "-m", "ad_platform", "run-once", "--settle-s", "0", *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_run_once_at_once_materialize_each_drive_once(state: Path) -> None:
    drives = generate_fleet(state / "landing", ["de"], 2, 0.4, seed=11, workers=1)
    home = _write_local_instance_config(state)
    first, second = _run_once_process(state), _run_once_process(state)
    (out1, err1), (out2, err2) = first.communicate(timeout=600), second.communicate(timeout=600)
    results = sorted([(first.returncode, out1, err1), (second.returncode, out2, err2)])
    (rc_done, out_done, err_done), (rc_busy, out_busy, err_busy) = results
    assert (rc_done, rc_busy) == (0, 75), err_done + err_busy
    assert sorted((o["drive_id"], o["status"]) for o in json.loads(out_done)) == sorted(
        (d.name, "materialized") for d in drives
    )
    assert json.loads(out_busy) == []
    assert re.search(r"another run-once \(pid \d+, since [0-9T:-]+Z\) holds .*run_once\.lock; nothing done", err_busy)

    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        assert len(instance.get_runs()) == 2
        raw = instance.fetch_materializations(AssetKey(["de", "raw_drive"]), limit=10).records
        assert sorted(r.partition_key for r in raw) == sorted(d.name for d in drives)


def test_run_once_while_another_holds_the_lock_does_nothing(state: Path) -> None:
    generate_fleet(state / "landing", ["de"], 1, 0.4, seed=12, workers=1)
    with instance_for_test() as instance, run_once_lock(state):
        with pytest.raises(RunOnceBusy, match=rf"another run-once \(pid {os.getpid()}, since .*\) holds"):
            run_once(build_definitions(), instance, state_dir=state, log=print, settle_s=0)
        assert instance.get_runs() == []


def test_run_once_prepares_its_process_before_the_first_step_as_the_step_forkserver_does() -> None:
    """GX imported, the startup heap frozen out of the collector's way, the MDF decoders' forkserver running."""
    code = (
        "import gc, json, os, sys\n"
        "import multiprocessing.forkserver as forkserver\n"
        "from ad_platform.runner import prepare_process\n"
        "before = 'great_expectations' in sys.modules\n"
        "prepare_process()\n"
        "pid = forkserver._forkserver._forkserver_pid\n"
        "alive = pid is not None and os.waitpid(pid, os.WNOHANG) == (0, 0)\n"
        "print(json.dumps({'gx_before': before, 'gx': 'great_expectations' in sys.modules,\n"
        "    'frozen': gc.get_freeze_count(), 'forkserver_alive': alive}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert (seen["gx_before"], seen["gx"], seen["forkserver_alive"]) == (False, True, True)
    assert seen["frozen"] > 100_000  # the definitions' and GX's objects (~750,000 measured)
