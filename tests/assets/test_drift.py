"""Signal drift: quiet within a market, fires across markets, on drives generated, decoded and synced for real."""

from __future__ import annotations

import logging
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from dagster import AssetKey, materialize

from ad_assets import drift
from ad_assets.drift import compare_drive_sets, read_summaries
from ad_assets.synced import SyncSettings, sync_one_drive
from ad_common.lake_layout import decoded_path
from ad_core.decode import decode_drive
from ad_core.quality.drift import DriftResult
from ad_resources.lake import LocalLake
from ad_resources.landing import LocalLandingZone
from fleetgen import generate_drive
from fleetgen.profiles import make_spec
from tests.support.platform import LocalPlatform

MINUTES = 0.5
OPTIONS = {"camera_size": (160, 90), "lidar_points": 256}
# (time_of_day, weather, road_type) of the reference and of the new drives: every new drive has >= 2
# reference drives in its brightness bucket (time of day, weather) and in its speed bucket (road type).
REFERENCE_ODD = [
    ("day", "clear", "urban"),
    ("day", "clear", "urban"),
    ("day", "clear", "highway"),
    ("night", "clear", "urban"),
    ("night", "clear", "highway"),
    ("night", "clear", "highway"),
]
NEW_ODD = [("day", "clear", "urban"), ("day", "clear", "highway"), ("night", "clear", "highway")]
MARKETS = ("de", "us", "cn", "jp")
LOG = logging.getLogger(__name__)


def _indices(market: str) -> tuple[list[int], list[int]]:
    """Drive indices (seed 0) with the wanted ODDs; reference drives are recorded before the new ones."""
    wanted, chosen, i = [*REFERENCE_ODD, *NEW_ODD], [], 0
    while wanted:
        odd = make_spec(market, i, MINUTES, 0).odd
        if (odd["time_of_day"], odd["weather"], odd["road_type"]) == wanted[0]:
            chosen.append(i)
            wanted.pop(0)
        i += 1
    return chosen[: len(REFERENCE_ODD)], chosen[len(REFERENCE_ODD) :]


def _generate(args: tuple[Path, str, int]) -> Path:
    return generate_drive(args[0], args[1], args[2], MINUTES, **OPTIONS)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalLake, dict[str, tuple[list[str], list[str]]]]:
    """All markets' drives decoded and synced into one lake through the platform's own functions."""
    t0 = time.perf_counter()
    landing, lake = tmp_path_factory.mktemp("landing"), LocalLake(root=str(tmp_path_factory.mktemp("lake")))
    indices = {m: _indices(m) for m in MARKETS}
    jobs = [(landing, m, i) for m in MARKETS for part in indices[m] for i in part]
    with ProcessPoolExecutor(max_workers=2) as pool:
        drives = list(pool.map(_generate, jobs))
    for drive in drives:
        market = drive.parent.name
        with lake.write_dir(decoded_path(market, drive.name)) as out:
            decode_drive(sorted(drive.glob("*.m*")), out, [landing / market / "_dbc" / "vehicle.dbc"])
        sync_one_drive(LocalLandingZone(root=str(landing)), lake, market, drive.name, SyncSettings(), LOG)
    names = iter(d.name for d in drives)
    ids = {m: ([next(names) for _ in ref], [next(names) for _ in new]) for m, (ref, new) in indices.items()}
    print(f"\n{len(drives)} drives generated, decoded, synced, summarised in {time.perf_counter() - t0:.1f} s")
    return lake, ids


def _show(label: str, result: DriftResult) -> None:
    stats = {n: (s.log_shift and round(s.log_shift, 3), s.threshold) for n, s in result.signals.items()}
    print(f"{label:8} drifted={result.drifted_signals} (log shift, threshold): {stats}")


def test_summaries_are_written_by_sync(fleet: tuple[LocalLake, dict[str, tuple[list[str], list[str]]]]) -> None:
    lake, ids = fleet
    table = read_summaries(lake, "de")
    assert sorted(table.column("drive_id").to_pylist()) == sorted(ids["de"][0] + ids["de"][1])
    row = table.to_pylist()[0]
    assert row["frames"] == pytest.approx(MINUTES * 60 * 10, rel=0.02) and row["brightness_frames"] == 60
    assert sum(row["speed_kmh_hist"]) > 0 and sum(row["yaw_rate_dps_hist"]) > 0 and sum(row["brightness_hist"]) == 60


def test_drift_check_fires_across_markets_and_stays_quiet_within_one(
    fleet: tuple[LocalLake, dict[str, tuple[list[str], list[str]]]],
) -> None:
    lake, ids = fleet
    for market in MARKETS:
        result = compare_drive_sets(lake, (market, ids[market][0]), (market, ids[market][1]))
        _show(f"{market}->{market}", result)
        assert not result.drifted
        brightness = result.signals["brightness"]
        assert brightness.coverage == 1.0 and abs(brightness.log_shift or 0) < brightness.threshold / 2
    # DE vs JP and US vs CN as asked, DE vs US; JP vs DE and US vs JP are neighbouring camera programmes (hardest).
    for ref, new in (("de", "jp"), ("jp", "de"), ("us", "cn"), ("cn", "us"), ("de", "us"), ("us", "jp")):
        result = compare_drive_sets(lake, (ref, ids[ref][0]), (new, ids[new][1]))
        _show(f"{ref}->{new}", result)
        assert "brightness" in result.drifted_signals
        brightness = result.signals["brightness"]
        assert brightness.coverage == 1.0 and abs(brightness.log_shift or 0) > 1.5 * brightness.threshold
        assert "yaw_rate" not in result.drifted_signals  # path geometry, not a market trait: never flags


def test_drift_asset_warns_with_a_chart_and_reports_nothing_new_twice(
    fleet: tuple[LocalLake, dict[str, tuple[list[str], list[str]]]], tmp_path: Path
) -> None:
    lake = LocalLake(root=str(tmp_path / "lake"))
    shutil.copytree(Path(fleet[0].root) / "catalog", tmp_path / "lake" / "catalog")
    asset = next(iter(drift.definitions("de").assets))
    key = AssetKey(["de", "signal_drift"])
    config = {"ops": {"de__signal_drift": {"config": {"reference_drives": len(REFERENCE_ODD)}}}}

    def run() -> dict[str, object]:
        result = materialize([asset], resources={"lake": lake}, run_config=config)
        ((check,),) = [result.get_asset_check_evaluations()]
        assert result.success and check.asset_key == key and check.severity.value == "WARN"
        return {"passed": check.passed, **{k: v.value for k, v in check.metadata.items()}}

    first = run()  # reference from the first 6 DE drives, then the 3 later DE drives are new
    assert first["passed"] and first["status"] == "evaluated" and len(first["new_drives"]) == len(NEW_ODD)
    assert "### brightness — ok" in first["chart"]
    again = run()
    assert again == {"passed": True, "status": "no new drives since the last evaluation", "new_drives": []}

    # A batch of drives recorded with another market's camera programme lands in DE.
    jp_summaries = Path(fleet[0].root) / "catalog" / "drive_signal_summaries" / "jp"
    for drive in fleet[1]["jp"][1]:
        shutil.copy(jp_summaries / f"{drive}.parquet", tmp_path / "lake" / "catalog" / "drive_signal_summaries" / "de")
    drifted = run()
    assert not drifted["passed"] and "brightness" in drifted["drifted_signals"]
    assert sorted(drifted["new_drives"]) == sorted(fleet[1]["jp"][1])
    assert "### brightness — **DRIFT**" in drifted["chart"] and "| day/clear |" in drifted["chart"]
    assert Path(drifted["chart_png"]).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert drifted["statistics"]["brightness"]["drifted"] is True
    assert run()["status"] == "no new drives since the last evaluation"


def test_drift_over_no_drives_is_not_a_pass(local_platform: LocalPlatform) -> None:
    """A market with no synced drive yet: the check fails (warn) saying there is no data, never passes."""
    result = materialize(
        [next(iter(drift.definitions("us").assets))], resources={"lake": local_platform.lake}, raise_on_error=False
    )
    ((check,),) = [result.get_asset_check_evaluations()]
    assert result.success and not check.passed and check.severity.value == "WARN"
    assert check.metadata["status"].value == "no data"
    assert check.description.startswith("No data: no synced US drive")
