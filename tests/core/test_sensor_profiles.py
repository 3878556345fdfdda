"""Vehicle sensor profiles: parsing, selection per drive, roles found by what a stream is, the plan they give."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ad_core.sync import GridReference, sync_drive
from ad_core.sync.plan import build_sync_plan
from ad_core.sync.profiles import ProfileError, load_profiles, parse_profile, profiles_version, select_profile

T0 = 1_700_000_000_000_000_000
MS = 1_000_000


def table(path: Path, ts: np.ndarray, meta: dict[str, str], **cols: np.ndarray) -> Path:
    t = pa.table({"timestamp_ns": pa.array(ts, pa.int64()), **cols})
    pq.write_table(t.replace_schema_metadata({k.encode(): v.encode() for k, v in meta.items()}), path)
    return path


def test_built_in_profiles_parse_and_the_fleet_is_one_of_them() -> None:
    profiles = {p.name: p for p in load_profiles()}
    assert set(profiles) == {"fleetgen", "default"}
    fleet = profiles["fleetgen"]
    assert fleet.required == ("front_camera", "lidar", "imu", "gnss", "vehicle_speed")
    assert fleet.reference == ("front_camera",) and fleet.roles["lidar"].tolerance_ns == 60 * MS
    assert profiles["default"].reference == ("front_camera", "lidar", 10.0) and profiles["default"].required == ()


def test_selection_by_drive_json_by_match_and_the_default() -> None:
    profiles = load_profiles()
    assert select_profile(profiles, {"generator": {"version": "1.1.0"}}, []).name == "fleetgen"
    assert select_profile(profiles, {"drive_id": "x"}, []).name == "default"
    assert select_profile(profiles, {"sensor_profile": "fleetgen"}, []).name == "fleetgen"
    with pytest.raises(ProfileError, match="names sensor profile 'kona-ev', which is not defined"):
        select_profile(profiles, {"sensor_profile": "kona-ev"}, [])


def test_a_market_profile_replaces_a_built_in_one_and_changes_the_version(tmp_path: Path) -> None:
    own = tmp_path / "canedge.json"
    own.write_text(
        json.dumps(
            {
                "name": "canedge-obd",
                "version": 3,
                "match": {"streams": ["can__gnss_*"]},
                "roles": {"vehicle_speed": {"rules": [{"signal": "S1_PID_0D_VehicleSpeed"}]}},
                "reference": [{"grid_hz": 20}],
                "required": ["vehicle_speed"],
            }
        )
    )
    profiles = load_profiles([own])
    assert [p.name for p in profiles] == ["canedge-obd", "default", "fleetgen"]
    assert select_profile(profiles, None, ["can__gnss_pos", "can__obd2"]).label == "canedge-obd@3"
    assert select_profile(profiles, None, ["can__obd2"]).name == "default"
    base = profiles_version({})
    assert profiles_version({own.name: own.read_bytes()}) != base == profiles_version({})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "unknown keys ['colour']"),
        ({"reference": [{"role": "radar"}]}, "give a defined role or a positive grid_hz"),
        ({"required": ["radar"]}, "required roles ['radar'] are not defined"),
        ({"roles": {"imu": {"rules": [{"topic_name": "/imu"}]}}}, "a rule needs some of"),
    ],
)
def test_a_broken_profile_names_the_file_and_the_problem(change: dict[str, object], message: str) -> None:
    data = {"name": "x", "version": 1, "roles": {"imu": {"rules": [{"kind": "signals"}]}}, "reference": []}
    with pytest.raises(ProfileError, match=r"sensor profile mine\.json: .*" + message.replace("[", r"\[")):
        parse_profile(json.dumps({**data, **change}), "mine.json")


def test_the_default_profile_finds_a_camera_by_its_schema_not_its_topic(tmp_path: Path) -> None:
    ts = T0 + np.arange(0, 1000, 100, dtype=np.int64) * MS
    table(tmp_path / "mcap__sensors_cam0.parquet", ts, {"kind": "image", "mcap_topic": "/sensors/cam0"})
    imu_ts = T0 + np.arange(0, 1000, 5, dtype=np.int64) * MS
    ax = np.zeros(len(imu_ts))
    table(tmp_path / "mcap__a.parquet", imu_ts, {"schema_name": "sensor_msgs/msg/Imu"}, **{"linear_acceleration.x": ax})
    plan = build_sync_plan(tmp_path, select_profile(load_profiles(), None, []))
    assert plan.reference == "front_camera (mcap__sensors_cam0)"
    assert plan.roles["front_camera"].stream == "mcap__sensors_cam0"  # type: ignore[union-attr]
    assert plan.roles["imu"].stream == "mcap__a"  # type: ignore[union-attr]
    assert plan.checked == {"a"}


def test_a_signal_only_drive_syncs_on_a_10_hz_grid_over_the_span_its_role_streams_share(tmp_path: Path) -> None:
    speed_ts = T0 + np.arange(0, 2000, 10, dtype=np.int64) * MS
    table(tmp_path / "can__vehicle.parquet", speed_ts, {"kind": "can"}, VehicleSpeed=np.linspace(0, 50, len(speed_ts)))
    lat_ts = T0 + np.arange(0, 2000, 1000, dtype=np.int64) * MS
    table(tmp_path / "can__gnss_pos.parquet", lat_ts, {"kind": "can"}, Latitude=np.array([56.1, 56.2]))
    plan = build_sync_plan(tmp_path, select_profile(load_profiles(), None, []))
    assert plan.reference == "grid 10 Hz over can__gnss_pos+can__vehicle"  # 0 .. 1 s: both have samples
    assert plan.config is not None and isinstance(plan.config.reference, GridReference)
    report = sync_drive(plan.config, tmp_path / "frames.parquet")
    frames = pq.read_table(tmp_path / "frames.parquet")
    assert report.frames == 11 and frames["timestamp_ns"][1].as_py() - frames["timestamp_ns"][0].as_py() == 100 * MS
    assert frames["vehicle.VehicleSpeed"][10].as_py() == pytest.approx(25.1256, abs=1e-3)


def test_a_grid_over_one_role_stream_that_jumps_years_is_refused_with_the_reason(tmp_path: Path) -> None:
    ts = np.array([1_000_000_000, T0], dtype=np.int64)  # time since boot, then an absolute stamp
    table(tmp_path / "can__vehicle.parquet", ts, {"kind": "can"}, VehicleSpeed=np.array([1.0, 2.0]))
    plan = build_sync_plan(tmp_path, select_profile(load_profiles(), None, []))
    assert plan.config is None
    assert plan.reason is not None and "that stream's clock jumps" in plan.reason and "can__vehicle" in plan.reason


def test_an_empty_decoded_drive_cannot_be_synced(tmp_path: Path) -> None:
    plan = build_sync_plan(tmp_path, select_profile(load_profiles(), None, []))
    assert (plan.config, plan.reason) == (None, "no decoded stream has any rows: there is nothing to sync")
