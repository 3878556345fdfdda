"""The synthetic fleet generator writes decodable, physically consistent, deterministic drives."""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import simplejpeg
from asammdf import MDF
from mcap.reader import make_reader
from mcap_protobuf.decoder import DecoderFactory as ProtobufDecoderFactory
from mcap_ros2.decoder import DecoderFactory as Ros2DecoderFactory

from fleetgen import generate_drive, generate_fleet, ground_truth
from fleetgen.motion import motion_profile
from fleetgen.profiles import make_spec

MINUTES = 0.5
CAM_SIZE = (256, 144)


def _find_index(market: str, **odd: str) -> int:
    """First drive index of ``market`` (seed 0) whose ODD matches, so tests pick real day/night drives."""
    for i in range(200):
        spec = make_spec(market, i, 1.0, 0)
        if all(spec.odd[k] == v for k, v in odd.items()):
            return i
    raise AssertionError(f"no {market} drive with {odd}")


@pytest.fixture(scope="module")
def drives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    landing = tmp_path_factory.mktemp("landing")
    return {
        "de_day": generate_drive(
            landing,
            "de",
            _find_index("de", time_of_day="day", weather="clear"),
            MINUTES,
            camera_size=CAM_SIZE,
            camera_hz=20,
        ),
        "jp_night": generate_drive(
            landing, "jp", _find_index("jp", time_of_day="night"), MINUTES, camera_size=CAM_SIZE
        ),
        "faulty": generate_drive(
            landing,
            "us",
            _find_index("us", road_type="highway"),
            1.0,
            faults=("gnss_dropout", "stuck_speed", "clock_jump"),
        ),
    }


def _manifest(drive: Path) -> dict[str, Any]:
    return json.loads((drive / "drive.json").read_text())


def _bus_signals(drive: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decode the raw CAN frames with the market DBC; timestamps converted to seconds of true drive time."""
    m = _manifest(drive)
    dbc = drive.parent / "_dbc" / "vehicle.dbc"
    offset_s = m["sensors"]["can"]["clock_offset_ns"] / 1e9
    with MDF(drive / f"{m['drive_id']}.mf4") as mdf:
        decoded = mdf.extract_bus_logging({"CAN": [(str(dbc), 0)]})
        out = {}
        for name in ("VehicleSpeed", "SteeringWheelAngle", "YawRate", "GearPosition", "WheelSpeed_FL"):
            sig = decoded.get(name)
            out[name] = (sig.timestamps - offset_s, sig.samples)
        decoded.close()
    return out


def _mcap_messages(drive: Path) -> dict[str, list[tuple[int, Any]]]:
    m = _manifest(drive)
    out: dict[str, list[tuple[int, Any]]] = defaultdict(list)
    with open(drive / f"{m['drive_id']}.mcap", "rb") as fh:
        reader = make_reader(fh, decoder_factories=[Ros2DecoderFactory(), ProtobufDecoderFactory()])
        for _schema, channel, message, decoded in reader.iter_decoded_messages(
            topics=["/camera/front/compressed", "/lidar/top/points", "/imu/data", "/gnss/fix"]
        ):
            out[channel.topic].append((message.log_time, decoded))
        for _schema, channel, message in reader.iter_messages(topics=["/logger/status"]):
            out[channel.topic].append((message.log_time, json.loads(message.data)))
    return out


def test_layout_and_manifest(drives: dict[str, Path]) -> None:
    for drive in drives.values():
        m = _manifest(drive)
        assert drive.name == m["drive_id"] and drive.parent.name == m["market"]
        assert set(m["drive_id"]) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
        assert m["drive_id"].startswith(f"{m['market']}-{m['vehicle_id']}-")
        assert (drive / f"{m['drive_id']}.mf4").is_file() and (drive / f"{m['drive_id']}.mcap").is_file()
        assert (drive.parent / "_dbc" / "vehicle.dbc").is_file()
        assert isinstance(m["start_time_ns"], int)
        assert m["odd"]["weather"] in {"clear", "rain", "fog", "snow"}
        assert m["odd"]["time_of_day"] in {"day", "dusk", "night"}
        assert m["odd"]["road_type"] in {"urban", "rural", "highway"}
        assert m["generator"]["seed"] == 0 and m["generator"]["version"]
        for s in m["sensors"].values():
            assert {"file", "stream", "nominal_hz", "clock_offset_ns"} <= set(s)
    assert _manifest(drives["jp_night"])["driving_side"] == "left"
    assert _manifest(drives["de_day"])["driving_side"] == "right"


def test_can_frames_decode_to_ground_truth(drives: dict[str, Path]) -> None:
    drive = drives["de_day"]
    gt = ground_truth(drive)
    sig = _bus_signals(drive)
    t, speed = sig["VehicleSpeed"]
    assert len(t) == pytest.approx(MINUTES * 60 * 100, rel=0.01)  # 10 ms cycle
    assert np.median(np.diff(t)) == pytest.approx(0.010, abs=1e-4)
    assert np.abs(speed - np.interp(t, gt["t_s"], gt["speed_kmh"])).max() <= 0.006  # 0.01 km/h factor
    assert speed.max() > 20.0
    t, steer = sig["SteeringWheelAngle"]
    assert np.abs(steer - np.interp(t, gt["t_s"], gt["steering_deg"])).max() <= 0.06  # 0.1 deg factor
    t, yaw = sig["YawRate"]
    assert np.abs(yaw - np.interp(t, gt["t_s"], gt["yaw_rate_dps"])).max() <= 0.01
    # Bicycle model: steering wheel angle and yaw rate agree via wheelbase and steering ratio.
    m = _manifest(drive)["vehicle"]
    moving = gt["speed_mps"] > 3
    k = np.tan(np.radians(gt["steering_deg"][moving] / m["steering_ratio"])) / m["wheelbase_m"]
    np.testing.assert_allclose(np.radians(gt["yaw_rate_dps"][moving]), gt["speed_mps"][moving] * k, atol=1e-6)
    _, gear = sig["GearPosition"]
    assert gear[0] == b"P" and b"D" in set(gear.tolist())


def test_physical_groups_rates_units_conversions(drives: dict[str, Path]) -> None:
    drive = drives["de_day"]
    m = _manifest(drive)
    gt = ground_truth(drive)
    with MDF(drive / f"{m['drive_id']}.mf4") as mdf:
        groups = {g.channel_group.acq_name: i for i, g in enumerate(mdf.groups)}
        for name, rate in (("Environment_10Hz", 10), ("Chassis_100Hz", 100), ("Powertrain_1kHz", 1000)):
            assert mdf.groups[groups[name]].channel_group.cycles_nr == pytest.approx(MINUTES * 60 * rate, abs=1)
        speed = mdf.get("VehSpeed", group=groups["Chassis_100Hz"])
        assert speed.unit == "km/h"
        assert np.median(np.diff(speed.timestamps)) == pytest.approx(0.01)
        t_true = speed.timestamps - m["sensors"]["chassis"]["clock_offset_ns"] / 1e9
        assert np.abs(speed.samples - np.interp(t_true, gt["t_s"], gt["speed_kmh"])).max() < 1e-6
        temp = mdf.get("AmbientTemp")  # int16 raw with a linear 0.1 conversion
        assert temp.unit == "degC" and temp.samples.dtype.kind == "f"
        assert np.abs(temp.samples - np.interp(temp.timestamps, gt["t_s"], gt["outside_temp_c"])).max() < 0.06
        assert mdf.get("AmbientTemp", raw=True).samples.dtype == np.int16
        gear = mdf.get("GearLever")  # value-to-text
        assert {b"P", b"D"} <= set(gear.samples.tolist())
        assert mdf.get("BrakePress").unit == "bar"
        rpm = mdf.get("EngSpeed")
        assert rpm.unit == "rpm" and np.median(np.diff(rpm.timestamps)) == pytest.approx(0.001)


def test_mcap_indexed_decodes_rates_and_images(drives: dict[str, Path]) -> None:
    drive = drives["de_day"]
    m = _manifest(drive)
    with open(drive / f"{m['drive_id']}.mcap", "rb") as fh:
        summary = make_reader(fh).get_summary()
    assert summary is not None and summary.chunk_indexes and summary.statistics
    assert all(ci.compression == "zstd" and ci.message_index_offsets for ci in summary.chunk_indexes)
    encodings = {c.topic: c.message_encoding for c in summary.channels.values()}
    assert encodings == {
        "/camera/front/compressed": "protobuf",
        "/lidar/top/points": "protobuf",
        "/imu/data": "cdr",
        "/gnss/fix": "protobuf",
        "/logger/status": "json",
    }
    assert (
        summary.schemas[next(c.schema_id for c in summary.channels.values() if c.topic == "/imu/data")].name
        == "sensor_msgs/msg/Imu"
    )
    msgs = _mcap_messages(drive)
    duration = m["duration_s"]
    for sensor in ("camera_front", "lidar_top", "imu", "gnss", "logger"):
        s = m["sensors"][sensor]
        assert len(msgs[s["stream"]]) == pytest.approx(duration * s["nominal_hz"], rel=0.02), sensor
    assert m["sensors"]["camera_front"]["nominal_hz"] == 20
    log_times = sorted(lt for topic in msgs.values() for lt, _ in topic)
    assert log_times == [lt for lt, _ in sorted((lt, 0) for topic in msgs.values() for lt, _ in topic)]
    # Header stamp = capture time + the sensor clock offset; log_time = capture + latency (>= 0).
    start = m["start_time_ns"]
    for lt, img in msgs["/camera/front/compressed"]:
        stamp = img.timestamp.seconds * 1_000_000_000 + img.timestamp.nanos
        capture = stamp - m["sensors"]["camera_front"]["clock_offset_ns"]
        assert (capture - start) % 50_000_000 == 0  # 20 Hz capture grid
        assert 0 <= lt - capture < 100_000_000
    frame = simplejpeg.decode_jpeg(msgs["/camera/front/compressed"][0][1].data)
    assert frame.shape == (CAM_SIZE[1], CAM_SIZE[0], 3)
    cloud = msgs["/lidar/top/points"][0][1]
    pts = np.frombuffer(cloud.data, dtype="<f4").reshape(-1, 4)
    assert cloud.point_stride == 16 and len(pts) == m["sensors"]["lidar_top"]["points"]
    assert np.isfinite(pts).all() and np.abs(pts[:, :3]).max() <= 121
    imu = msgs["/imu/data"][100][1]
    assert imu.header.frame_id == "imu" and imu.linear_acceleration.z == pytest.approx(9.81, abs=0.3)
    assert msgs["/logger/status"][0][1]["drive_id"] == m["drive_id"]


def _frames(drive: Path) -> np.ndarray:
    msgs = _mcap_messages(drive)["/camera/front/compressed"]
    return np.stack([simplejpeg.decode_jpeg(img.data) for _, img in msgs[::10]]).astype(np.float32)


def test_camera_brightness_and_driving_side(drives: dict[str, Path]) -> None:
    day, night = _frames(drives["de_day"]), _frames(drives["jp_night"])
    assert night.mean() < 0.5 * day.mean()
    # The solid edge line sits on the ego side of the road: right for right-hand traffic, left in Japan.
    for frames, side in ((day, "right"), (night, "left")):
        bottom = frames[:, -6:, :, :].mean(axis=(0, 1, 3))
        assert (int(np.argmax(bottom)) > len(bottom) / 2) == (side == "right")


def test_gnss_track_follows_speed_integration(drives: dict[str, Path]) -> None:
    drive = drives["de_day"]
    m = _manifest(drive)
    gt = ground_truth(drive)
    # Ground-truth track length equals integrated speed (the track is integrated from speed and heading).
    lat, lon = np.radians(gt["lat"]), np.radians(gt["lon"])
    seg = 6_378_137.0 * np.hypot(np.diff(lat), np.diff(lon) * np.cos(lat[:-1]))
    dist = np.sum(gt["speed_mps"][:-1]) * 0.01
    assert dist > 50 and seg.sum() == pytest.approx(dist, rel=0.005)
    # Each fix is within a few metres of the ground truth at its capture time.
    for _lt, fix in _mcap_messages(drive)["/gnss/fix"][::5]:
        t = (fix.timestamp.seconds * 1_000_000_000 + fix.timestamp.nanos - m["start_time_ns"]) / 1e9
        dn = math.radians(fix.latitude - np.interp(t, gt["t_s"], gt["lat"])) * 6_378_137.0
        de = math.radians(fix.longitude - np.interp(t, gt["t_s"], gt["lon"])) * 6_378_137.0 * math.cos(lat[0])
        assert math.hypot(dn, de) < 3.0


def test_faults_show_up(drives: dict[str, Path]) -> None:
    drive = drives["faulty"]
    m = _manifest(drive)
    faults = {f["type"]: f for f in m["faults"]}
    assert set(faults) == {"gnss_dropout", "stuck_speed", "clock_jump"}
    msgs = _mcap_messages(drive)
    gnss_t = np.array([lt for lt, _ in msgs["/gnss/fix"]])
    gap = np.diff(gnss_t).max() / 1e9
    assert gap >= faults["gnss_dropout"]["end_s"] - faults["gnss_dropout"]["start_s"] - 0.2 and gap >= 5
    imu_stamps = np.array([d.header.stamp.sec * 1_000_000_000 + d.header.stamp.nanosec for _, d in msgs["/imu/data"]])
    jumps = np.diff(imu_stamps)
    assert (jumps < 0).sum() == 1 and jumps.min() == pytest.approx(faults["clock_jump"]["jump_ns"], abs=20e6)
    t, speed = _bus_signals(drive)["VehicleSpeed"]
    gt = ground_truth(drive)
    f = faults["stuck_speed"]
    inside = (t >= f["start_s"]) & (t < f["end_s"])
    assert f["end_s"] - f["start_s"] >= 15 and np.ptp(speed[inside]) == 0
    assert np.ptp(np.interp(t[inside], gt["t_s"], gt["speed_kmh"])) > 1.0  # the real speed kept changing
    assert np.abs(speed[~inside] - np.interp(t[~inside], gt["t_s"], gt["speed_kmh"])).max() <= 0.006


def test_market_profiles_differ() -> None:
    def mean_highway_speed(market: str) -> float:
        speeds = [
            motion_profile(make_spec(market, i, 4.0, 0)).ground_truth()["speed_kmh"].mean()
            for i in range(40)
            if make_spec(market, i, 4.0, 0).odd["road_type"] == "highway"
        ][:3]
        return float(np.mean(speeds))

    assert mean_highway_speed("de") > mean_highway_speed("us") + 5
    urban = {
        mk: np.mean([make_spec(mk, i, 1.0, 0).odd["road_type"] == "urban" for i in range(200)]) for mk in ("cn", "us")
    }
    assert urban["cn"] > urban["us"] + 0.2
    rain = {mk: np.mean([make_spec(mk, i, 1.0, 0).odd["weather"] == "rain" for i in range(200)]) for mk in ("de", "us")}
    assert rain["de"] > rain["us"] + 0.1


def _digests(drive: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(drive.iterdir())}


def test_deterministic_by_seed(tmp_path: Path) -> None:
    a = generate_fleet(tmp_path / "a", ["cn"], 1, 0.4, seed=7, workers=1, lidar_points=512)
    b = generate_fleet(tmp_path / "b", ["cn"], 1, 0.4, seed=7, workers=1, lidar_points=512)
    c = generate_fleet(tmp_path / "c", ["cn"], 1, 0.4, seed=8, workers=1, lidar_points=512)
    assert _digests(a[0]) == _digests(b[0])
    assert a[0].name == b[0].name and (a[0].name != c[0].name or _digests(a[0]) != _digests(c[0]))
    assert _manifest(a[0])["generator"]["seed"] == 7


def test_one_minute_drives_steer_on_every_road_type() -> None:
    """A test drive without steering cannot judge a steering model: every road type's alignment curves."""
    steering: dict[str, list[np.ndarray]] = defaultdict(list)
    for market in ("de", "us", "cn", "jp"):
        for i in range(12):
            motion = motion_profile(make_spec(market, i, 1.0, 0))
            steering[motion.spec.odd["road_type"]].append(motion.field("steering_deg", np.arange(0.0, 60.0, 0.1)))
    assert set(steering) == {"highway", "rural", "urban"}
    for road, drives in steering.items():
        assert min(float(np.std(s)) for s in drives) > 0.3, road
    # Motorway curves stay gentle (the ODD tagger's motorway curvature bound); town has junction turns.
    assert max(float(np.abs(s).max()) for s in steering["highway"]) < 5.0
    assert np.mean([np.abs(s).max() > 60.0 for s in steering["urban"]]) >= 0.6
