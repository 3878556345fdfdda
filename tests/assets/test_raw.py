"""raw_drive: real materializations on a real instance; bad files fail only their drive and are quarantined."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from dagster import AssetKey, materialize

from ad_assets import decoded, raw
from ad_common.lake_layout import decoded_path
from ad_resources.quality import GreatExpectationsResource
from tests.support.platform import LocalPlatform

pytestmark = pytest.mark.realdata

GOOD_MCAP = "mcap/rosbag2__rosbag2_py_test_resources_mcap_talker_talker.mcap"
GOOD_MF4 = "mdf4/canedge_raw/cssapi__other_matlab-basics_00000014.MF4"  # unfinalized, as loggers leave it
BAD_FILES = {
    "bad/foxglove-mcap__demo__git-lfs-pointer.mcap": "Git LFS pointer",
    "bad/mdf4-converters__invalid__git-lfs-pointer.MF4": "Git LFS pointer",
    "bad/cssapi__data-processing_LOG_25674460_00000001_single_can_bus_1.MFE": "compressed/encrypted container",
    "bad/cssapi__data-processing_LOG_25674460_00000001_single_can_bus_1.MFC": "compressed/encrypted container",
    "bad/cssapi__data-processing_LOG_25674460_00000001_single_message_can_bus_1_256_window.MFM": "container",
}

RAW_DBC, RAW_DRIVE = raw.definitions("de").assets


class Platform(LocalPlatform):
    def land(self, drive: str, *sources: Path, rename: dict[str, str] | None = None) -> Path:  # type: ignore[override]
        return super().land("de", drive, *sources, rename=rename)

    @property
    def root(self) -> Path:
        return self.landing_root

    def materialize(self, drive: str):  # type: ignore[no-untyped-def]
        return materialize(
            [RAW_DRIVE],
            partition_key=drive,
            instance=self.instance,
            raise_on_error=False,
            resources={"landing": self.landing, "lake": self.lake},
        )


@pytest.fixture
def platform(local_platform: LocalPlatform) -> Platform:
    return Platform(local_platform.state, local_platform.instance)


def failure_message(result) -> str:  # type: ignore[no-untyped-def]
    (event,) = [e for e in result.all_events if e.is_step_failure]
    return event.step_failure_data.user_failure_data.description


def test_good_drive_is_registered_with_inventory_and_catalog_rows(platform: Platform, shared_data: Path) -> None:
    platform.land("de-good-1", shared_data / GOOD_MCAP, shared_data / GOOD_MF4)
    result = platform.materialize("de-good-1")
    assert result.success
    (mat,) = result.asset_materializations_for_node("de__raw_drive")
    assert mat.metadata["drive_version"].value == 1
    assert (
        mat.metadata["total_bytes"].value
        == (shared_data / GOOD_MCAP).stat().st_size + (shared_data / GOOD_MF4).stat().st_size
    )
    assert "/topic [cdr/std_msgs/msg/String]: 10" in mat.metadata["channel_topic_inventory"].value
    assert "unfinalized" in mat.metadata["files"].value

    rows = platform.catalog.query(
        "SELECT file, kind, finalized, len(streams) FROM raw_files WHERE drive_id = ? ORDER BY file",
        ["de-good-1"],
    )
    assert rows == [
        ("cssapi__other_matlab-basics_00000014.MF4", "mdf4", False, 9),
        ("rosbag2__rosbag2_py_test_resources_mcap_talker_talker.mcap", "mcap", None, 3),
    ]
    version = platform.instance.get_latest_data_version_record(AssetKey(["de", "raw_drive"]), partition_key="de-good-1")
    assert version is not None


def test_rematerializing_is_idempotent_and_a_changed_file_is_a_new_version(
    platform: Platform, shared_data: Path
) -> None:
    folder = platform.land("de-good-2", shared_data / GOOD_MCAP)
    registry = Path(platform.lake.root) / "registry" / "de" / "de-good-2.json"
    assert platform.materialize("de-good-2").success
    first = registry.read_text()
    assert platform.materialize("de-good-2").success
    assert registry.read_text() == first

    shutil.copy(
        shared_data / "mcap/rosbag2__rosbag2_py_test_resources_mcap_wbag_wbag_0.mcap",
        folder / Path(GOOD_MCAP).name,
    )
    assert platform.materialize("de-good-2").success
    record = json.loads(registry.read_text())
    assert record["version"] == 2
    assert record["fingerprint"] != json.loads(first)["fingerprint"]


@pytest.mark.parametrize("bad_file", sorted(BAD_FILES))
def test_bad_file_fails_its_own_drive_is_quarantined_and_other_drives_go_on(
    platform: Platform, shared_data: Path, bad_file: str
) -> None:
    platform.land("de-bad", shared_data / GOOD_MCAP, shared_data / bad_file)
    platform.land("de-fine", shared_data / GOOD_MCAP)

    bad = platform.materialize("de-bad")
    assert not bad.success
    message = failure_message(bad)
    name = Path(bad_file).name
    assert name in message and BAD_FILES[bad_file] in message and "Quarantined to" in message

    quarantined = platform.root / "_quarantine" / "de" / "de-bad"
    assert (quarantined / name).read_bytes() == (shared_data / bad_file).read_bytes()  # moved, not lost
    assert BAD_FILES[bad_file] in json.loads((quarantined / f"{name}.reason.json").read_text())["reason"]
    assert not (platform.root / "de" / "de-bad" / name).exists()

    # A retry does not silently succeed with the remaining files: it points at the quarantine.
    retry = platform.materialize("de-bad")
    assert not retry.success and "quarantined files" in failure_message(retry)

    assert platform.materialize("de-fine").success


def test_line_ending_mangled_and_truncated_mcaps_are_rejected_with_the_reason(
    platform: Platform, shared_data: Path, tmp_path: Path
) -> None:
    original = (shared_data / GOOD_MCAP).read_bytes()
    mangled = tmp_path / "crlf.mcap"
    mangled.write_bytes(original.replace(b"\n", b"\r\n"))  # what a text-mode transfer does
    truncated = tmp_path / "cut.mcap"
    truncated.write_bytes(original[: len(original) // 2])

    platform.land("de-crlf", mangled)
    assert "magic bytes are" in failure_message(platform.materialize("de-crlf"))
    platform.land("de-cut", truncated)
    assert "truncated" in failure_message(platform.materialize("de-cut"))


def test_a_corrupt_chunk_passes_raw_drive_and_fails_decoded_signals_which_quarantines_the_file(
    platform: Platform, shared_data: Path, tmp_path: Path
) -> None:
    """raw_drive checks the record structure only; the one decompression, in decoded_signals, checks each chunk's
    CRC: a damaged chunk fails that drive naming the file and the chunk, quarantines the file, writes nothing."""
    from mcap.reader import make_reader

    with open(shared_data / GOOD_MCAP, "rb") as fh:
        (chunk,) = make_reader(fh).get_summary().chunk_indexes
    data = bytearray((shared_data / GOOD_MCAP).read_bytes())
    data[chunk.chunk_start_offset + chunk.chunk_length // 2] ^= 0x01  # one flipped bit inside the chunk
    corrupt = tmp_path / "flip.mcap"
    corrupt.write_bytes(bytes(data))
    platform.land("de-flip", corrupt, shared_data / GOOD_MF4)
    platform.land("de-fine", shared_data / GOOD_MCAP)
    resources = {"landing": platform.landing, "lake": platform.lake, "great_expectations": GreatExpectationsResource()}
    assets = [RAW_DRIVE, *decoded.definitions("de").assets]

    def run(drive: str):  # type: ignore[no-untyped-def]
        return materialize(
            assets, partition_key=drive, instance=platform.instance, raise_on_error=False, resources=resources
        )

    flip = run("de-flip")
    assert not flip.success
    assert {m.asset_key for m in flip.get_asset_materialization_events()} == {AssetKey(["de", "raw_drive"])}
    message = failure_message(flip)
    assert message.startswith("drive de/de-flip: file flip.mcap MCAP damaged: chunk 1 (the record at byte "), message
    assert "Quarantined to" in message
    quarantined = platform.root / "_quarantine" / "de" / "de-flip"
    assert (quarantined / "flip.mcap").read_bytes() == bytes(data)
    assert "chunk 1" in json.loads((quarantined / "flip.mcap.reason.json").read_text())["reason"]
    assert not (platform.root / "de" / "de-flip" / "flip.mcap").exists()
    assert not (Path(platform.lake.root) / decoded_path("de", "de-flip")).exists()  # nothing half-written
    retry = platform.materialize("de-flip")
    assert not retry.success and "quarantined files" in failure_message(retry)
    assert run("de-fine").success


def test_a_drive_of_many_files_logs_one_line_and_bounds_its_event(platform: Platform, shared_data: Path) -> None:
    small = shared_data / "mcap" / "depthai__recording.mcap"
    count = raw.FILES_IN_METADATA + 30
    folder = platform.land("de-many")
    for i in range(count):
        shutil.copyfile(small, folder / f"part_{i:03d}.mcap")
    result = platform.materialize("de-many")
    assert result.success
    (mat,) = result.asset_materializations_for_node("de__raw_drive")
    assert mat.metadata["file_count"].value == count
    table = mat.metadata["files"].value
    assert table.count(".mcap |") == raw.FILES_IN_METADATA
    assert table.endswith("| … 30 more files (catalog: raw_files) | | | | | | |")
    ok_lines = [e.message for e in platform.instance.all_logs(result.run_id) if e.message and "ok (" in e.message]
    assert len(ok_lines) == 1 and f"de/de-many: {count} files ok (" in ok_lines[0], ok_lines
    rows = platform.catalog.query("SELECT count(*) FROM raw_files WHERE drive_id = 'de-many'")
    assert rows == [(count,)]  # the catalog still has every file
