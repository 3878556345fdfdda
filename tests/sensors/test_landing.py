"""Landing-zone sensor: exactly-once registration, content identity, chunked ticks, cursor."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from dagster import SensorResult, SkipReason, build_sensor_context

from ad_common.lake_layout import registry_path
from ad_core.inspect import sha256_file
from ad_resources.lake import LocalLake
from ad_resources.landing import LocalLandingZone
from ad_sensors.landing import LandingCursor, LandingSensorSettings, evaluate_landing
from tests.support.platform import LocalPlatform

OLD = time.time_ns() - 3_600 * 10**9  # landed an hour ago: settled


def land(root: Path, market: str, drive: str, files: dict[str, bytes], mtime_ns: int = OLD) -> None:
    folder = root / market / drive
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = folder / name
        path.write_bytes(data)
        os.utime(path, ns=(mtime_ns, mtime_ns))
    os.utime(folder, ns=(mtime_ns, mtime_ns))  # the folder's mtime is part of the settle rule


def register_as_raw_drive_would(lake: LocalLake, landing: LocalLandingZone, market: str, drive: str) -> None:
    folder = Path(landing.root) / market / drive
    files = {
        f.name: {"sha256": sha256_file(folder / f.name), "size": f.size, "mtime_ns": f.mtime_ns}
        for f in landing.drive_files(market, drive)
    }
    lake.write_json(registry_path(market, drive), {"version": 1, "fingerprint": "x", "files": files})


class Harness:
    """A real SQLite instance, the real sensor function, and Dagster's handling of its result applied."""

    def __init__(self, platform: LocalPlatform, settings=LandingSensorSettings) -> None:  # type: ignore[no-untyped-def]
        self.landing, self.lake, self.instance = platform.landing, platform.lake, platform.instance
        self.cursor: str | None = None
        self.settings = settings

    def tick(self, markets: tuple[str, ...] = ("de", "us")) -> SensorResult | SkipReason:
        with build_sensor_context(instance=self.instance, cursor=self.cursor) as context:
            result = evaluate_landing(context, self.landing, self.lake, markets=markets, settings=self.settings)
        if isinstance(result, SensorResult):
            for request in result.dynamic_partitions_requests:
                self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
            self.cursor = result.cursor
        return result

    def partitions(self, market: str) -> list[str]:
        return self.instance.get_dynamic_partitions(f"drives_{market}")


@pytest.fixture
def harness(local_platform: LocalPlatform) -> Harness:
    return Harness(local_platform)


def requested(result: SensorResult | SkipReason) -> list[tuple[str, str, str]]:
    if isinstance(result, SkipReason):
        return []
    return sorted((r.job_name, r.partition_key, r.tags["ad-platform/registration"]) for r in result.run_requests)


def test_new_drives_register_once_per_market(harness: Harness) -> None:
    root = Path(harness.landing.root)
    land(root, "de", "de-veh001-a", {"a.mcap": b"1"})
    land(root, "us", "us-veh001-a", {"a.mcap": b"2"})
    land(root, "_quarantine", "ignored", {"x": b"3"})

    first = harness.tick()
    assert requested(first) == [("ingest_de", "de-veh001-a", "new"), ("ingest_us", "us-veh001-a", "new")]
    assert harness.partitions("de") == ["de-veh001-a"]
    assert harness.partitions("us") == ["us-veh001-a"]
    assert isinstance(harness.tick(), SkipReason)  # nothing new: nothing requested twice


def test_reupload_of_identical_content_registers_nothing_but_a_change_is_a_new_version(
    harness: Harness,
) -> None:
    root = Path(harness.landing.root)
    land(root, "de", "de-drive-1", {"drive.mcap": b"payload-v1", "drive.json": b"{}"})
    assert requested(harness.tick()) == [("ingest_de", "de-drive-1", "new")]
    register_as_raw_drive_would(harness.lake, harness.landing, "de", "de-drive-1")

    # Re-upload: same bytes, new modification time.
    land(root, "de", "de-drive-1", {"drive.mcap": b"payload-v1"}, mtime_ns=OLD + 10**9)
    assert requested(harness.tick()) == []
    assert harness.partitions("de") == ["de-drive-1"]

    # Same size, different bytes: only the content hash can tell, and it does.
    land(root, "de", "de-drive-1", {"drive.mcap": b"payload-v2"}, mtime_ns=OLD + 2 * 10**9)
    assert requested(harness.tick()) == [("ingest_de", "de-drive-1", "changed")]
    # A new file is a change too.
    land(root, "de", "de-drive-1", {"extra.mf4": b"x"}, mtime_ns=OLD + 3 * 10**9)
    assert requested(harness.tick()) == [("ingest_de", "de-drive-1", "changed")]
    assert harness.partitions("de") == ["de-drive-1"]


def test_unsettled_drives_wait_and_invalid_names_are_reported(harness: Harness) -> None:
    root = Path(harness.landing.root)
    land(root, "de", "Drive With Spaces", {"a.mcap": b"1"})
    land(root, "de", "de-uploading", {"a.mcap": b"1"}, mtime_ns=time.time_ns())
    result = harness.tick(("de",))
    assert requested(result) == []
    assert harness.partitions("de") == []
    assert json.loads(harness.cursor or "{}")["keys"] == ["de/Drive With Spaces"]
    # Once the upload has settled it registers.
    os.utime(root / "de" / "de-uploading" / "a.mcap", ns=(OLD + 5, OLD + 5))
    os.utime(root / "de" / "de-uploading", ns=(OLD + 5, OLD + 5))
    assert requested(harness.tick(("de",))) == [("ingest_de", "de-uploading", "new")]


def test_a_tick_that_stopped_midway_through_equal_timestamps_resumes_without_loss_or_repeat(
    local_platform: LocalPlatform,
) -> None:
    class TwoPerTick(LandingSensorSettings):
        max_drives_per_tick = 2

    harness = Harness(local_platform, TwoPerTick)
    for i in range(5):  # all with the same mtime, as a bulk copy produces
        land(Path(harness.landing.root), "de", f"de-bulk-{i}", {"a.mcap": b"x"})
    seen = []
    for _ in range(4):
        seen += [key for _, key, _ in requested(harness.tick(("de",)))]
    assert seen == [f"de-bulk-{i}" for i in range(5)]
    assert LandingCursor.parse(harness.cursor).mtime_ns == OLD


@pytest.mark.slow
def test_ten_thousand_new_drives_are_registered_in_chunked_ticks_well_under_the_timeout(
    harness: Harness,
) -> None:
    root = Path(harness.landing.root)
    for i in range(10_000):
        land(root, "de" if i % 2 else "us", f"{'de' if i % 2 else 'us'}-veh{i:05d}", {"d.mcap": b"m"}, OLD + i)
    tick_seconds, registered = [], []
    while True:
        started = time.monotonic()
        result = harness.tick()
        tick_seconds.append(time.monotonic() - started)
        if isinstance(result, SkipReason):
            break
        registered += [key for _, key, _ in requested(result)]
    print(
        f"\n10,000 drives: {len(tick_seconds) - 1} ticks, slowest {max(tick_seconds):.2f} s "
        f"(cap {LandingSensorSettings.max_drives_per_tick}/tick)"
    )
    assert len(registered) == len(set(registered)) == 10_000
    assert len(tick_seconds) - 1 == 10_000 // LandingSensorSettings.max_drives_per_tick
    assert len(harness.partitions("de")) == len(harness.partitions("us")) == 5_000
    assert max(tick_seconds) < 30, tick_seconds


def test_a_copy_that_preserves_mtimes_waits_for_the_folder_to_settle(harness: Harness) -> None:
    """`cp -p`/`rsync -t` give every finished file its old mtime: only the folder's own mtime shows that files
    are still arriving (it moves with each file created)."""
    root = Path(harness.landing.root)
    harness.tick(("de",))  # the first tick reports the market's sensor-profile version: not a skip
    land(root, "de", "de-copying", {"a.mcap": b"1"})
    os.utime(root / "de" / "de-copying", ns=(time.time_ns(), time.time_ns()))  # the next file just appeared
    result = harness.tick(("de",))
    assert requested(result) == [] and harness.partitions("de") == []
    assert "1 settling" in str(getattr(result, "skip_message", ""))
    os.utime(root / "de" / "de-copying", ns=(OLD, OLD))
    assert requested(harness.tick(("de",))) == [("ingest_de", "de-copying", "new")]
