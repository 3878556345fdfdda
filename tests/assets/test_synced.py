"""Blocking data-quality checks and synced frames, on real materializations of generated drives."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from dagster import AssetKey, instance_for_test, materialize

from ad_assets import decoded, raw, synced
from ad_core.decode import decode_drive
from ad_core.sync import sync_drive
from ad_core.sync.plan import build_sync_plan
from ad_core.sync.profiles import load_profiles, select_profile
from ad_resources.lake import LocalLake
from ad_resources.landing import LocalLandingZone
from ad_resources.quality import GreatExpectationsResource
from fleetgen import generate_drive, ground_truth

ASSETS = [*raw.definitions("de").assets, *decoded.definitions("de").assets, *synced.definitions("de").assets]
DECODED, SYNCED = AssetKey(["de", "decoded_signals"]), AssetKey(["de", "synced_frames"])


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    landing = tmp_path_factory.mktemp("landing")
    drives = {"healthy": generate_drive(landing, "de", 0, 1.0, seed=3)}
    for index, fault in enumerate(("gnss_dropout", "stuck_speed", "clock_jump"), start=1):
        drives[fault] = generate_drive(landing, "de", index, 1.0, seed=3, faults=(fault,))
    return drives


def run_drive(drive: Path, tmp_path: Path, **run_config: object):  # type: ignore[no-untyped-def]
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("drives_de", [drive.name])
        result = materialize(
            ASSETS,
            partition_key=drive.name,
            instance=instance,
            raise_on_error=False,
            run_config={"ops": {"de__synced_frames": {"config": run_config}}} if run_config else None,
            resources={
                "landing": LocalLandingZone(root=str(drive.parents[1])),
                "lake": LocalLake(root=str(tmp_path / "lake")),
                "great_expectations": GreatExpectationsResource(),
            },
        )
        checks = {(e.asset_key, e.check_name): e for e in result.get_asset_check_evaluations()}
        materialized = {m.asset_key for m in result.get_asset_materialization_events() if m.asset_key}
        return result, checks, materialized


@pytest.mark.parametrize(
    ("fault", "check", "named"),
    [
        ("gnss_dropout", "no_gaps", "mcap__gnss_fix"),
        ("stuck_speed", "no_flatlines_or_nan_runs", "VehicleSpeed"),
        ("clock_jump", "sensor_clock_monotonic", "mcap__imu_data"),
    ],
)
def test_a_corrupted_drive_fails_its_blocking_check_and_stops_downstream(
    fleet: dict[str, Path], tmp_path: Path, fault: str, check: str, named: str
) -> None:
    result, checks, materialized = run_drive(fleet[fault], tmp_path)
    assert not result.success
    evaluation = checks[(DECODED, check)]
    assert not evaluation.passed
    assert evaluation.metadata["failed_drives"].value == [fleet[fault].name]
    assert named in evaluation.metadata["what_failed"].value  # says which stream/signal, actionably
    assert DECODED in materialized and SYNCED not in materialized  # bad data never reaches the frames
    others = [name for (key, name), e in checks.items() if key == DECODED and name != check and not e.passed]
    assert others in ([], ["rates_within_tolerance"])  # a dropout also lowers the mean rate (warn only)


def test_a_healthy_drive_passes_every_check_and_its_frames_match_the_ground_truth(
    fleet: dict[str, Path], tmp_path: Path
) -> None:
    drive = fleet["healthy"]
    result, checks, materialized = run_drive(drive, tmp_path)
    assert result.success
    assert {name for (_, name), e in checks.items() if not e.passed} == set()
    assert {name for _, name in checks} == {
        "drive_lateness",
        "sensor_clock_monotonic",
        "physical_ranges",
        "no_gaps",
        "no_flatlines_or_nan_runs",
        "rates_within_tolerance",
        "clock_sanity",
        "nothing_dropped",
        "frames_within_tolerance",
        "required_sensors_present",
        "sync_reference_available",
    }
    assert SYNCED in materialized
    metadata = next(m for m in result.get_asset_materialization_events() if m.asset_key == SYNCED)
    metadata = metadata.materialization.metadata
    assert metadata["sensor_profile"].value == "fleetgen@1"
    assert metadata["reference"].value == "front_camera (mcap__camera_front_compressed)"

    frames = pq.read_table(tmp_path / "lake" / "synced" / "de" / drive.name / "frames.parquet").to_pandas()
    manifest = json.loads((drive / "drive.json").read_text())
    assert len(frames) == pytest.approx(manifest["duration_s"] * 10, rel=0.02)  # 10 Hz camera, few drops
    truth = ground_truth(drive)
    expected = np.interp(frames["timestamp_ns"], truth["t_ns"], truth["speed_kmh"])
    # Camera log time includes its capture latency: the signal is compared 25 ms earlier, within 0.5 km/h.
    assert np.abs(frames["esp_vehicle_speed.VehicleSpeed"] - expected).median() < 0.5
    assert frames["lidar_top_points.in_tolerance"].mean() > 0.99
    assert frames["lidar_top_points.row_index"].is_monotonic_increasing


def test_a_fleet_drive_without_its_camera_stops_at_a_named_check_instead_of_raising(
    fleet: dict[str, Path], tmp_path: Path
) -> None:
    """Was: ``ValueError: no camera or point-cloud stream to use as the reference clock`` with a stack trace."""
    source = fleet["healthy"]
    drive = tmp_path / "landing" / "de" / source.name
    shutil.copytree(source.parent / "_dbc", drive.parent / "_dbc")
    shutil.copytree(source, drive, ignore=shutil.ignore_patterns("*.mcap"))  # only the MDF4 (CAN, signals) is left
    result, checks, materialized = run_drive(drive, tmp_path)
    assert not result.success and SYNCED in materialized  # materialized without frames, stopped by its check
    reference = checks[(SYNCED, "sync_reference_available")]
    assert not reference.passed
    (reason,) = reference.metadata["reasons"].value.values()
    assert reason.startswith(
        "sensor profile fleetgen@1 has no reference clock for this drive: no stream plays front_camera"
    )
    required = checks[(SYNCED, "required_sensors_present")]
    assert not required.passed and "front_camera" in required.metadata["what_failed"].value
    assert not (tmp_path / "lake" / "synced" / "de" / drive.name).exists()


def test_causal_mode_never_uses_a_sample_from_after_the_frame(fleet: dict[str, Path], tmp_path: Path) -> None:
    drive = fleet["healthy"]
    result, _, _ = run_drive(drive, tmp_path, causal=True)
    assert result.success
    frames = pq.read_table(tmp_path / "lake" / "synced" / "de" / drive.name / "frames.parquet").to_pandas()
    errors = frames[[c for c in frames.columns if c.endswith(".sync_error_ns")]]
    assert (errors.fillna(0) >= 0).all().all()  # error = frame time - sample time: never negative


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("log", "frames", "streams"),
    [
        # JPEG camera with calibration topics (json, base64 images)
        ("lichtblick__custom-camera-model.mcap", 10, {"camera_calibration", "camera_calibration_custom"}),
        # a real 2-D lidar (protobuf LaserScan), no camera: its sweeps are the reference clock
        ("rplidar-zenoh__out.mcap", 256, set()),
    ],
)
def test_real_camera_and_lidar_mcaps_sync_without_error(
    shared_data: Path, tmp_path: Path, log: str, frames: int, streams: set[str]
) -> None:
    decoded = tmp_path / "decoded"
    decoded.mkdir()
    decode_drive([shared_data / "mcap" / log], decoded)
    profile = select_profile(load_profiles(), None, [])
    assert profile.name == "default"  # no drive.json, no market profile
    plan = build_sync_plan(decoded, profile)
    assert plan.config is not None
    report = sync_drive(plan.config, tmp_path / "frames.parquet")
    assert report.frames == frames
    assert {name.removesuffix("_state") for name in report.streams} == streams
    assert all(s.within_tolerance_ratio == 1.0 for s in report.streams.values())
    assert plan.present == {}  # an unknown log: nothing is required


@pytest.mark.parametrize("batch", [20, 7, 3, 1])
def test_flat_and_nan_runs_are_measured_the_same_whatever_the_batching(batch: int) -> None:
    from ad_core.quality.profile import _RunTracker

    t = np.arange(20, dtype=np.int64) * 1_000_000_000
    v = np.array([1, 1, 1, 0, 2, 2, 2, 2, 2, 3, np.nan, np.nan, 5, 5, 5, 5, 5, 5, 5, 5], dtype=float)
    flat, nan = _RunTracker(), _RunTracker()
    for i in range(0, len(t), batch):
        tb, vb = t[i : i + batch], v[i : i + batch]
        flat.update(tb, ~np.isnan(vb) & (vb != 0), vb)
        nan.update(tb, np.isnan(vb), np.zeros(len(vb)))
    assert (flat.longest_s, flat.longest_key, flat.longest_from_ns) == (7.0, 5.0, 12_000_000_000)
    assert (nan.longest_s, nan.longest_from_ns) == (1.0, 10_000_000_000)


def test_decoded_signals_refuses_a_file_changed_since_raw_drive_registered_it(
    fleet: dict[str, Path], tmp_path: Path
) -> None:
    """decoded_signals reuses raw_drive's sha256 and chunk CRCs, so it must not decode other bytes than those."""
    landing = tmp_path / "landing"
    drive = Path(shutil.copytree(fleet["healthy"], landing / "de" / fleet["healthy"].name))
    shutil.copytree(fleet["healthy"].parent / "_dbc", landing / "de" / "_dbc")
    result, _checks, materialized = run_drive(drive, tmp_path)
    assert result.success and DECODED in materialized
    mcap = next(drive.glob("*.mcap"))
    with open(mcap, "ab") as fh:  # bytes appended after registration
        fh.write(b"\0")
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("drives_de", [drive.name])
        changed = materialize(
            [*ASSETS],
            selection=[DECODED],
            partition_key=drive.name,
            instance=instance,
            raise_on_error=False,
            resources={
                "landing": LocalLandingZone(root=str(landing)),
                "lake": LocalLake(root=str(tmp_path / "lake")),
                "great_expectations": GreatExpectationsResource(),
            },
        )
    assert not changed.success
    (failure,) = [e for e in changed.all_events if e.is_step_failure]
    message = failure.step_failure_data.user_failure_data.description
    assert f"{mcap.name} ({mcap.stat().st_size - 1} bytes" in message
    assert "changed since raw_drive registered version 1" in message and "materialize raw_drive again" in message


def test_profiles_gathered_while_writing_equal_profiles_read_back(fleet: dict[str, Path], tmp_path: Path) -> None:
    """The quality checks get the profiles the sinks gather as they write: the same as reading the tables."""
    from ad_core.quality.profile import drive_profiles, profile_drive

    drive = fleet["clock_jump"]
    files = sorted(p for p in drive.iterdir() if p.suffix in (".mf4", ".mcap"))
    report = decode_drive(files, tmp_path / "out", sorted((drive.parent / "_dbc").glob("*.dbc")))
    streamed = drive_profiles(s.quality for s in report.streams if s.quality is not None)
    read_back = profile_drive(tmp_path / "out")
    assert [s.row() for s in streamed[0]] == [s.row() for s in read_back[0]]
    assert [s.row() for s in streamed[1]] == [s.row() for s in read_back[1]]
    assert len(streamed[0]) == len(list((tmp_path / "out").glob("*.parquet"))) > 5
    assert any(s.sensor_clock_backward_steps for s in streamed[0])  # the fault is in what was gathered
