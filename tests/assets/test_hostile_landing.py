"""Hostile or vanishing landing-zone content: links out of the landing zone, control characters in names, a
drive folder deleted after registration."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from dagster import SensorResult, build_sensor_context, materialize

from ad_assets import decoded, raw
from ad_resources.quality import GreatExpectationsResource
from ad_sensors.landing import LandingCursor, evaluate_landing, plan_tick
from tests.support.platform import LocalPlatform

SECRET = b"root:x:0:0:SECRET-CONTENT-4711:/root:/bin/bash\n"
_, RAW_DRIVE = raw.definitions("de").assets


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A file outside the landing zone that no link may expose."""
    secret = tmp_path / "outside" / "passwd"
    secret.parent.mkdir()
    secret.write_bytes(SECRET)
    return secret


def _materialize(platform: LocalPlatform, drive: str):  # type: ignore[no-untyped-def]
    return materialize(
        [RAW_DRIVE],
        partition_key=drive,
        instance=platform.instance,
        raise_on_error=False,
        resources={"landing": platform.landing, "lake": platform.lake},
    )


def _failure(result) -> str:  # type: ignore[no-untyped-def]
    (event,) = [e for e in result.all_events if e.is_step_failure]
    return event.step_failure_data.user_failure_data.description


def _everything_written(platform: LocalPlatform, run_id: str) -> str:
    """Every event of the run as stored, plus every file under the state folder that is not a link."""
    events = [str(entry) for entry in platform.instance.all_logs(run_id)]
    files = [p.read_bytes().decode("latin-1") for p in platform.state.rglob("*") if p.is_file() and not p.is_symlink()]
    return "\n".join(events + files)


def test_links_out_of_the_landing_zone_are_refused_never_read_and_quarantined(
    local_platform: LocalPlatform, outside: Path
) -> None:
    folder = local_platform.land("de", "de-linked")
    (folder / "drive.json").write_text("{}")
    (folder / "passwd.mcap").symlink_to(outside)
    (folder / "shadow.mf4").symlink_to(outside)

    result = _materialize(local_platform, "de-linked")
    assert not result.success
    message = _failure(result)
    assert "passwd.mcap is a symbolic link; links are never followed" in message
    assert "shadow.mf4 is a symbolic link" in message
    written = _everything_written(local_platform, result.run_id)
    for leak in (SECRET.decode()[:16], "SECRET-CONTENT", hashlib.sha256(SECRET).hexdigest()):
        assert leak not in message and leak not in written, leak

    quarantine = local_platform.landing_root / "_quarantine" / "de" / "de-linked"
    assert (quarantine / "passwd.mcap").is_symlink()  # the link was moved, not what it points to
    assert outside.read_bytes() == SECRET
    reason = json.loads((quarantine / "passwd.mcap.reason.json").read_text())
    assert reason["reason"].startswith("passwd.mcap is a symbolic link")
    assert not (Path(local_platform.lake.root) / "catalog" / "raw_files" / "de" / "de-linked.parquet").exists()
    assert not (Path(local_platform.lake.root) / "registry" / "de" / "de-linked.json").exists()


def test_a_linked_drive_folder_is_refused(local_platform: LocalPlatform, outside: Path) -> None:
    (local_platform.landing_root / "de").mkdir(parents=True)
    (local_platform.landing_root / "de" / "de-folder-link").symlink_to(outside.parent, target_is_directory=True)
    (outside.parent / "recording.mcap").write_bytes(SECRET)
    local_platform.instance.add_dynamic_partitions("drives_de", ["de-folder-link"])

    result = _materialize(local_platform, "de-folder-link")
    assert not result.success
    message = _failure(result)
    assert message == (
        "drive de/de-folder-link: refused: the drive folder is a symbolic link; links are never followed (a link "
        "can point outside the landing zone): copy the drive's files into a real folder."
    )
    assert "SECRET-CONTENT" not in _everything_written(local_platform, result.run_id)
    assert (outside.parent / "recording.mcap").read_bytes() == SECRET


def test_sensor_requests_a_run_for_a_drive_with_a_link_and_never_hashes_it(
    local_platform: LocalPlatform, outside: Path
) -> None:
    folder = local_platform.landing_root / "de" / "de-link-only"
    folder.mkdir(parents=True)
    (folder / "a.mcap").symlink_to(outside)
    os.utime(folder / "a.mcap", ns=(10**18, 10**18), follow_symlinks=False)  # old: settled
    os.utime(folder, ns=(10**18, 10**18))
    with build_sensor_context(instance=local_platform.instance) as context:
        result = evaluate_landing(context, local_platform.landing, local_platform.lake, markets=("de",))
    assert isinstance(result, SensorResult)
    (request,) = result.run_requests
    assert request.partition_key == "de-link-only"
    (listing,) = local_platform.landing.list_drives(["de"])
    assert listing.files == ()
    assert [(r.name, r.mtime_ns) for r in listing.refused] == [("a.mcap", 10**18)]


def test_control_characters_in_names_never_reach_a_log_line(local_platform: LocalPlatform) -> None:
    forged = "Drive\n2026-01-01 INFO - de.raw_drive - all drives ok"
    folder = local_platform.landing_root / "de" / forged
    folder.mkdir(parents=True)
    (folder / "a.json").write_text("{}")
    plan = plan_tick(
        local_platform.landing.list_drives(["de"]),
        LandingCursor(),
        {},
        lambda *_: None,
        lambda *_: "",
        max_drives=10,
        time_budget_s=5,
        settle_s=0,
        now_ns=time.time_ns() + 10**9,
    )
    (line,) = plan.invalid_names
    assert "\n" not in line
    assert line.startswith("'de/Drive\\n2026-01-01 INFO - de.raw_drive - all drives ok': not a valid drive id")


def test_a_drive_folder_deleted_after_registration_fails_naming_the_drive(local_platform: LocalPlatform) -> None:
    folder = local_platform.land("de", "de-vanished")
    (folder / "drive.json").write_text("{}")
    assert _materialize(local_platform, "de-vanished").success
    shutil.rmtree(folder)
    (decoded_signals,) = decoded.definitions("de").assets
    result = materialize(
        [RAW_DRIVE, decoded_signals],
        selection=[decoded_signals.key],
        partition_key="de-vanished",
        instance=local_platform.instance,
        raise_on_error=False,
        resources={**local_platform.resources, "great_expectations": GreatExpectationsResource()},
    )
    assert not result.success
    assert _failure(result) == (
        f"drive de/de-vanished: its landing folder is gone ({local_platform.landing_root}/de/de-vanished holds no "
        "files): it was deleted or moved after registration; re-land the drive"
    )
