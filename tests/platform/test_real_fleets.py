"""Real public logs as drives, through run-once: each reaches synced_frames or stops at a named, intended check.

The table is the one in docs/real-fleets.md. Was (issue 10): every good drive ``failed``, none synced.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import DagsterEventType, instance_for_test

from ad_platform.definitions import build_definitions
from ad_platform.runner import refresh_market_assets, run_once
from tests.support.real_fleets import build_landing

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

SYNCED = "synced"
# drive -> SYNCED, or the blocking check it stops at ("<asset>:<check>")
EXPECTED = {
    "us/obd-car-3ba199e2-s164": SYNCED,
    "us/obd-car-3ba199e2-s165": SYNCED,
    "us/obd2-11bit": SYNCED,
    "us/obd2-29bit": SYNCED,
    "us/wwh-obd-truck": SYNCED,
    "de/kona-ev-uds": SYNCED,
    "de/leaf-ev-uds-gnss": "synced_frames:frames_within_tolerance",  # the 100 Hz IMU drops out for 0.5 s
    "de/kia-ev-two-files": "decoded_signals:no_gaps",  # UDS battery polling pauses for 10 s
    "de/uds-test-0d2c6546": SYNCED,
    "de/j1939-truck": "decoded_signals:no_gaps",  # EEC1 (10 Hz) silent for 128 s
    "de/j1939-truck-tp": SYNCED,
    "de/j1939-truck-gnss": SYNCED,
    "de/j1939-truck-canedge3": "decoded_signals:no_gaps",  # EEC1/CCVS1 silent for 2.1 s
    "de/nmea2000-boat": "decoded_signals:no_gaps",  # NMEA 2000 fast packets are not reassembled
    "de/bench-traffic": SYNCED,
    "de/j1939-no-dbc": "synced_frames:sync_reference_available",  # only raw frames: no DBC for them
    "jp/camera-json": SYNCED,
    "jp/lidar-2d": SYNCED,
    "jp/ros2-sensors": SYNCED,
    "jp/ros2-all-types": "synced_frames:frames_within_tolerance",  # 2 messages per topic, 9 s apart
    "jp/ros2-split": SYNCED,
    "jp/ros2-services": SYNCED,
    "jp/camera-metadata": SYNCED,
    "jp/osi-simulation": SYNCED,
    "jp/relative-clock": SYNCED,
    "cn/ecu-measurement": SYNCED,
    "cn/canape-measurement": SYNCED,
    "cn/vendor-decoded-3ba199e2": SYNCED,
}


def _check_results(instance, run_id: str) -> dict[str, tuple[bool, str]]:  # type: ignore[no-untyped-def]
    """'<asset>:<check>' -> (passed, severity) of one run."""
    out = {}
    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records:
        data = record.event_log_entry.dagster_event.event_specific_data
        out[f"{data.asset_key.path[-1]}:{data.check_name}"] = (data.passed, data.severity.value)
    return out


def test_every_real_drive_syncs_or_stops_at_a_named_check(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("AD_LANDING_DIR", "AD_LAKE_DIR", "AD_CATALOG_PATH", "DAGSTER_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AD_STATE_DIR", str(tmp_path))
    drives = build_landing(shared_data, tmp_path / "landing")
    assert {f"{m}/{d}" for m, d in drives} == set(EXPECTED)
    defs = build_definitions()
    with instance_for_test() as instance:
        ran = run_once(defs, instance, state_dir=tmp_path, log=print, settle_s=0)
        outcomes = {f"{o.market}/{o.drive_id}": o for o in ran}
        assert set(outcomes) == set(EXPECTED)
        got = {}
        for drive, o in outcomes.items():
            checks = _check_results(instance, o.run_id)
            blocking = sorted(name for name, (passed, severity) in checks.items() if not passed and severity == "ERROR")
            if o.status == "materialized":
                assert f"{o.market}/synced_frames" in o.materialized and not blocking, drive
                got[drive] = SYNCED
            else:
                # a named check, never an exception: the run's failure is that check's
                assert len(blocking) == 1 and "blocking asset check failed" in (o.error or ""), (drive, o.error)
                got[drive] = blocking[0]
        assert got == EXPECTED

        # nothing lost in silence: unknown CAN ids are kept, and the catalog has the rows the warning reports
        catalog = defs.resources["catalog"]
        raw = catalog.query(
            "select rows, status from decoded_streams where drive_id = 'j1939-truck-tp' and stream = ?",
            ["can__unknown_frames"],
        )
        assert raw == [(10881, "undecoded")]
        soc = catalog.query(
            "select rows, status from decoded_streams where drive_id = 'kona-ev-uds' and stream = ?",
            ["can__battery__response_257"],
        )
        assert soc == [(120, "ok")]  # ISO-TP reassembled UDS responses (was: 100 % null, status ok)
        dropped = _check_results(instance, outcomes["de/j1939-truck-tp"].run_id)["decoded_signals:nothing_dropped"]
        assert dropped == (False, "WARN")
        clock = _check_results(instance, outcomes["jp/relative-clock"].run_id)["decoded_signals:clock_sanity"]
        assert clock == (False, "WARN")  # 1970 time since boot, flagged, yet synced

        # ODD tags on real logs: every synced drive is tagged; what its signals cannot tell is `unknown` with the
        # reason, never guessed. The OBD-II cars' road type comes from PID 0x0D speed, found by its standard name.
        odd = {
            f"{m}/{d}": row
            for m, d, *row in catalog.query(
                "select market, drive_id, road_type, road_type_reason, time_of_day, time_of_day_reason, weather, "
                "weather_reason, manoeuvre, manoeuvre_reason from drive_odd_tags"
            )
        }
        assert set(odd) == {d for d, v in EXPECTED.items() if v == SYNCED}
        assert all(row[i + 1] for row in odd.values() for i in (0, 2, 4, 6) if row[i] == "unknown"), odd
        obd_cars = ("us/obd-car-3ba199e2-s164", "us/obd-car-3ba199e2-s165", "us/obd2-11bit")
        assert [odd[d][0] for d in obd_cars] == ["rural", "urban", "urban"]
        assert odd["us/obd-car-3ba199e2-s164"][2] == "day"  # sun elevation at the CANmod GNSS position

        # Splits of every market: leakage-free; a split too small for its minimum fails that named check (JP's
        # short recordings), never an exception; the drive without frames is left out, not split.
        market_run = refresh_market_assets(defs, instance, markets=("de", "us", "cn", "jp"))
        checks = {
            (e.asset_key.path[0], e.check_name): e.passed
            for e in market_run.get_asset_check_evaluations()
            if e.asset_key.path[-1] == "curated_splits"
        }
        assert len(checks) == 12 and all(checks[(m, "no_drive_or_place_leakage")] for m in ("de", "us", "cn", "jp"))
        assert {k for k, passed in checks.items() if not passed} == {("jp", "min_frames_per_split")}
        assigned = catalog.query(
            "select market || '/' || drive_id, count(distinct split) from split_assignments group by 1"
        )
        assert all(n == 1 for _, n in assigned)
        assert {d for d, _ in assigned} == set(odd) - {"jp/ros2-services"}
