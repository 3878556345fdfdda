"""The curation core: ODD rules on signals, place-group splits (stable, leakage-free), quotas, rejections."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from ad_core.curate.manifest import RejectionFileError, parse_rejections
from ad_core.curate.odd import solar_elevation_deg, tag_frames
from ad_core.curate.splits import (
    DriveCandidate,
    SplitConfig,
    assign_splits,
    leakage_violations,
    place_groups,
    quota_report,
    quota_violations,
)


def _ns(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1e9)


def test_sun_elevation_is_high_at_solar_noon_and_negative_at_midnight() -> None:
    # Munich, 2026-03-20 (equinox): solar noon ~11:15 UTC, elevation ~ 90 - 48.1 = 41.9 degrees.
    lat, lon = np.array([48.137]), np.array([11.576])
    noon = solar_elevation_deg(np.array([_ns(2026, 3, 20, 11, 15)]), lat, lon)[0]
    midnight = solar_elevation_deg(np.array([_ns(2026, 3, 20, 23, 15)]), lat, lon)[0]
    assert 40.5 < noon < 43.0
    assert -45.0 < midnight < -38.0


def _frames(n: int, **columns: np.ndarray) -> pa.Table:
    ts = _ns(2026, 3, 20, 11, 0) + np.arange(n, dtype=np.int64) * 100_000_000
    return pa.table({"timestamp_ns": ts, "frame_index": np.arange(n), **columns})


def test_tags_follow_the_signals_by_name_whatever_the_stream() -> None:
    n = 1200  # 2 minutes at 10 Hz
    table = _frames(
        n,
        **{
            "chassis.VehSpeed": np.full(n, 130.0),  # another vehicle's name for the speed signal
            "chassis.YawRateRef": np.zeros(n),
            "body.WiperState": np.full(n, 3.0),
            "gnss.latitude": np.full(n, 48.1),
            "gnss.longitude": np.full(n, 11.6),
        },
    )
    result = tag_frames(table, "de")
    assert result.drive_tags == {
        "road_type": "motorway",
        "time_of_day": "day",
        "weather": "rain",
        "manoeuvre": "straight",
    }
    assert result.signals_used["speed_kmh"] == "chassis.VehSpeed"
    assert result.shares["weather"] == {"rain": 1.0}


def test_a_drive_without_the_signals_gets_unknown_with_the_reason() -> None:
    result = tag_frames(_frames(50, **{"can.EngineSpeed": np.full(50, 900.0)}), "de")
    assert set(result.drive_tags.values()) == {"unknown"} and len(result.drive_tags) == 4
    assert "no GNSS position" in str(result.reasons["time_of_day"])
    assert "no vehicle speed signal" in str(result.reasons["road_type"])
    assert "no wiper, rain-sensor or headlight signal" in str(result.reasons["weather"])
    assert "no vehicle speed signal" in str(result.reasons["manoeuvre"])


def test_manoeuvre_follows_the_curvature_of_the_path() -> None:
    # 10 Hz: 6 s standing, 6 s straight at 50 km/h, 6 s in a 500 m curve, 6 s in a 15 m junction turn.
    speed = np.r_[np.zeros(60), np.full(180, 50.0)]
    yaw_dps = np.degrees((speed / 3.6) * np.r_[np.zeros(120), np.full(60, 1 / 500), np.full(60, 1 / 15)])
    result = tag_frames(_frames(240, **{"esp.VehicleSpeed": speed, "imu.YawRate": yaw_dps}), "de")
    windows = result.frame_tags["manoeuvre"][::30].tolist()  # one value per 3 s window
    assert windows == ["standstill"] * 2 + ["straight"] * 2 + ["curve"] * 2 + ["turn"] * 2
    assert result.shares["manoeuvre"] == {"curve": 0.25, "standstill": 0.25, "straight": 0.25, "turn": 0.25}
    no_yaw = tag_frames(_frames(50, **{"esp.VehicleSpeed": np.full(50, 50.0)}), "de")
    assert set(no_yaw.frame_tags["manoeuvre"]) == {"unknown"}
    assert "no yaw rate signal (looked for ('YawRate'" in str(no_yaw.reasons["manoeuvre"])


def _drive(
    name: str, cells: set[str], frames: int = 100, weather: str = "clear", turn_frames: int = 0
) -> DriveCandidate:
    manoeuvre = {"straight": frames - turn_frames, "turn": turn_frames} if turn_frames else {"straight": frames}
    return DriveCandidate(
        name,
        frames,
        frozenset(cells),
        {
            "weather": {weather: frames},
            "time_of_day": {"day": frames},
            "road_type": {"urban": frames},
            "manoeuvre": manoeuvre,
        },
    )


def test_drives_sharing_a_cell_directly_or_through_others_form_one_place_group() -> None:
    groups = place_groups({"a": {"x"}, "b": {"x", "y"}, "c": {"y"}, "d": {"z"}})
    assert sorted(groups.values()) == [["a", "b", "c"], ["d"]]


def test_splits_are_deterministic_leakage_free_and_every_split_gets_drives() -> None:
    drives = [_drive(f"d{i:02d}", {f"cell{i}"}, weather=("rain" if i % 3 == 0 else "clear")) for i in range(20)]
    drives.append(_drive("d20", {"cell0", "cell20"}))  # shares a cell with d00: same place
    config = SplitConfig()
    first = assign_splits(drives, {}, config)
    assert first == assign_splits(list(reversed(drives)), {}, config)
    assert first.splits["d20"] == first.splits["d00"]
    counts = {s: sum(1 for v in first.splits.values() if v == s) for s in ("train", "val", "test")}
    assert counts["train"] > counts["val"] >= 2 and counts["test"] >= 2, counts
    assert leakage_violations(first.splits, {d.drive_id: d.cells for d in drives}) == []


def test_the_only_drive_with_an_odd_value_trains_rather_than_tests() -> None:
    """Five drives, one with a junction turn: wherever the greedy would put it, it goes to train."""
    drives = [_drive(f"d{i}", {f"c{i}"}, turn_frames=60 if i == k else 0) for k in range(5) for i in range(5)]
    for k in range(5):
        assignment = assign_splits(drives[5 * k : 5 * k + 5], {}, SplitConfig())
        assert assignment.splits[f"d{k}"] == "train", (k, assignment.splits)
        assert sorted(assignment.splits.values()) == ["test", "train", "train", "train", "val"]
    # Two drives turn: one of them may be judged (evaluation splits still get the value when train has it).
    two = [_drive(f"d{i}", {f"c{i}"}, turn_frames=60 if i < 2 else 0) for i in range(5)]
    assert "train" in {assign_splits(two, {}, SplitConfig()).splits[d] for d in ("d0", "d1")}
    # Every drive unique (its own weather): coverage yields, no evaluation split stays empty.
    unique = [_drive(f"d{i}", {f"c{i}"}, weather=w) for i, w in enumerate(("clear", "rain", "fog_snow", "x", "y"))]
    assert sorted(assign_splits(unique, {}, SplitConfig()).splits.values()) == [
        "test",
        "train",
        "train",
        "train",
        "val",
    ]
    # Below coverage_min_frames a value does not count: a few frames of a turn are not a domain.
    few = [_drive(f"d{i}", {f"c{i}"}, turn_frames=10 if i == 0 else 0) for i in range(5)]
    assert (
        assign_splits(few, {}, SplitConfig()).splits
        == assign_splits([_drive(f"d{i}", {f"c{i}"}) for i in range(5)], {}, SplitConfig()).splits
    )


def test_new_drives_never_move_old_ones_and_a_bridging_drive_is_held_out() -> None:
    old = [_drive(f"d{i}", {f"c{i}"}) for i in range(10)]
    first = assign_splits(old, {}, SplitConfig())
    train, other_train = [d for d, s in first.splits.items() if s == "train"][:2]
    test = next(d for d, s in first.splits.items() if s == "test")
    new = [
        _drive("n0", {"fresh"}),
        _drive("n1", {f"c{train[1:]}"}),  # same place as a train drive
        _drive("bridge", {f"c{other_train[1:]}", f"c{test[1:]}"}),  # touches train and test
    ]
    second = assign_splits(old + new, first.splits, SplitConfig())
    assert {d: second.splits[d] for d in first.splits} == first.splits
    assert second.splits["n1"] == "train"
    assert "bridge" not in second.splits
    assert "shares geo cells with drives in test and train" in second.held_out["bridge"]


def test_the_leakage_check_names_a_cell_in_two_splits() -> None:
    (violation,) = leakage_violations({"a": "train", "b": "test"}, {"a": {"c1", "c2"}, "b": {"c2"}})
    assert violation.detail == "geo cell c2 is in 2 splits (test: b; train: a)"


def test_a_quota_violation_says_which_tag_and_by_how_much() -> None:
    # 10 train drives (1 rain), 10 test drives (9 rain): test holds far more rain than the market.
    drives = {f"t{i}": _drive(f"t{i}", {f"a{i}"}, weather="rain" if i == 0 else "clear") for i in range(10)}
    drives |= {f"s{i}": _drive(f"s{i}", {f"b{i}"}, weather="rain" if i else "clear") for i in range(10)}
    assignment = {d: ("train" if d.startswith("t") else "test") for d in drives}
    messages = [v.detail for v in quota_violations(quota_report(assignment, drives, SplitConfig()))]
    assert "test: weather=rain is 90 % of its frames against 50 % in the market (15 points over the allowed 25)" in (
        messages
    )


def test_rejection_files_need_a_reason_and_integer_frames() -> None:
    text = "drive_id,frame_index,reason,reviewer,at\nd1,12,blurred,ana,2026-12-01\nd2,,wrong market,ben,2026-12-01\n"
    first, whole = parse_rejections("r.csv", text)
    assert (first.drive_id, first.frame_index, first.reason, first.reviewer) == ("d1", 12, "blurred", "ana")
    assert whole.frame_index is None
    with pytest.raises(RejectionFileError, match=r"r.csv, line 2: frame_index 'x' is not a non-negative integer"):
        parse_rejections("r.csv", "drive_id,frame_index,reason\nd1,x,blurred\n")
    with pytest.raises(RejectionFileError, match="missing column"):
        parse_rejections("r.csv", "drive,why\nd1,blurred\n")
