"""Review in real tools, end to end: three 30 s DE drives through the real ingest runs and splits, a real Label
Studio on loopback (session fixture, ``.venv-review``), reviewers answering through its API, the verdicts sensor,
the next split version; and the MCAP recording of every synced drive read back with the mcap reader."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from dagster import AssetKey, DagsterInstance, Definitions, SkipReason, build_sensor_context, instance_for_test
from foxglove_schemas_protobuf.CompressedImage_pb2 import CompressedImage
from mcap.reader import make_reader

from ad_common.lake_layout import REVIEW_VERDICTS, recording_path, split_manifest_path
from ad_common.stages import REVIEW_JOB
from ad_core.curate.review_tasks import WHOLE_DRIVE_REASON
from ad_core.decode.parquet_out import read_frame
from ad_platform.definitions import build_definitions
from ad_platform.runner import refresh_market_assets, run_once
from ad_resources.label_studio import LabelStudioClient, LabelStudioResource, LocalServer
from ad_sensors.review import SENSOR_NAME
from fleetgen import generate_fleet

CHROMIUM = Path("/usr/bin/chromium")
DOCS_SHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "review-project.png"


@dataclass
class Fleet:
    state: Path
    defs: Definitions
    instance: DagsterInstance

    @property
    def lake(self) -> Path:
        return self.state / "lake"

    def manifest(self) -> pa.Table:
        return pq.read_table(self.lake / split_manifest_path("de", "v1"))

    def metadata(self, asset: str) -> dict[str, object]:
        event = self.instance.get_latest_materialization_event(AssetKey(["de", asset]))
        assert event is not None and event.asset_materialization is not None
        return {k: v.value for k, v in event.asset_materialization.metadata.items()}


@pytest.fixture(scope="module")
def fleet(label_studio_launch: object) -> Iterator[Fleet]:  # the server starts while the fleet is built
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp, instance_for_test() as instance:
        state = Path(tmp) / ".state"
        for var in ("AD_LANDING_DIR", "AD_LAKE_DIR", "AD_CATALOG_PATH", "DAGSTER_HOME", "AD_LABEL_STUDIO_URL"):
            mp.delenv(var, raising=False)
        mp.setenv("AD_STATE_DIR", str(state))
        generate_fleet(state / "landing", ["de"], 3, 0.5, seed=0)
        defs = build_definitions()
        outcomes = run_once(defs, instance, state_dir=state, log=lambda _: None, settle_s=0)
        assert {o.status for o in outcomes} == {"materialized"}, [(o.drive_id, o.error) for o in outcomes]
        assert refresh_market_assets(defs, instance, console_log_level="CRITICAL", markets=("de",)).success
        yield Fleet(state, defs, instance)


def _with_server(monkeypatch: pytest.MonkeyPatch, url: str, token: str) -> Definitions:
    """The platform's definitions pointed at ``url`` (EnvVars: set for the rest of the test)."""
    monkeypatch.setenv("AD_LABEL_STUDIO_URL", url)
    monkeypatch.setenv("AD_LABEL_STUDIO_TOKEN", token)
    return build_definitions()


def _materialize(defs: Definitions, fleet: Fleet, asset: str, raise_on_error: bool = True) -> object:
    return defs.resolve_job_def(REVIEW_JOB.name).execute_in_process(
        instance=fleet.instance,
        asset_selection=[AssetKey(["de", asset])],
        raise_on_error=raise_on_error,
        run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
    )


def _tick(defs: Definitions, fleet: Fleet, cursor: str | None) -> object:
    sensor_def = defs.resolve_sensor_def(SENSOR_NAME)
    with build_sensor_context(
        instance=fleet.instance, cursor=cursor, resources=defs.resources, definitions=defs
    ) as context:
        return sensor_def(context)


def _answer(verdict: str, reason: str | None = None, note: str = "") -> list[dict[str, object]]:
    result: list[dict[str, object]] = [
        {"from_name": "verdict", "to_name": "frame", "type": "choices", "value": {"choices": [verdict]}}
    ]
    if reason:
        result.append({"from_name": "reason", "to_name": "frame", "type": "choices", "value": {"choices": [reason]}})
    if note:
        result.append({"from_name": "note", "to_name": "frame", "type": "textarea", "value": {"text": [note]}})
    return result


def test_every_synced_drive_has_a_recording_that_reads_back_frame_for_frame(fleet: Fleet) -> None:
    for drive_dir in sorted((fleet.lake / "synced" / "de").iterdir()):
        frames = pq.read_table(drive_dir / "frames.parquet")
        lidar_rows = set(frames.column("lidar_top_points.row_index").drop_null().to_pylist())
        with open(fleet.lake / recording_path("de", drive_dir.name), "rb") as f:
            reader = make_reader(f)
            counts: dict[str, int] = {}
            first_image = first_sync = None
            log_times = []
            for _, channel, message in reader.iter_messages(
                topics=["/camera/camera_front_compressed", "/lidar/lidar_top_points", "/sync/error"]
            ):
                counts[channel.topic] = counts.get(channel.topic, 0) + 1
                if channel.topic == "/camera/camera_front_compressed":
                    log_times.append(message.log_time)
                    first_image = first_image or CompressedImage.FromString(message.data)
                if channel.topic == "/sync/error":
                    first_sync = first_sync or json.loads(message.data)
            summary = reader.get_summary()
        assert summary is not None and summary.statistics is not None
        topics = {summary.channels[c].topic: n for c, n in summary.statistics.channel_message_counts.items()}
        assert counts == {
            "/camera/camera_front_compressed": frames.num_rows,
            "/lidar/lidar_top_points": len(lidar_rows),
            "/sync/error": frames.num_rows,
        }
        signals = {t for t in topics if t.startswith("/signals/")}
        assert {"/signals/imu_data", "/signals/gnss_fix", "/signals/esp_vehicle_speed"} <= signals
        assert all(topics[t] == frames.num_rows for t in signals)
        assert topics["/gnss/gnss_fix"] == frames.num_rows
        # on the sync reference timeline, and the JPEG bytes are the decoded camera table's
        assert log_times == frames.column("timestamp_ns").to_pylist()
        camera = fleet.lake / "decoded" / "de" / drive_dir.name / "mcap__camera_front_compressed.parquet"
        assert first_image is not None and first_image.data == read_frame(camera, 0)
        assert first_image.format == "jpeg"
        assert first_sync is not None and isinstance(first_sync["imu_data"], float)
        assert isinstance(first_sync["out_of_tolerance"], list)
    metadata = fleet.metadata("drive_recording")
    assert 15 <= float(str(metadata["mib_per_minute"])) <= 60


def test_review_loop_push_answer_poll_and_the_next_split_excludes_the_rejections(
    fleet: Fleet, label_studio_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    defs = _with_server(monkeypatch, label_studio_server.url, label_studio_server.token)
    client = LabelStudioClient(label_studio_server.url, label_studio_server.token)

    started = time.monotonic()
    _materialize(defs, fleet, "review_project")
    push_s = time.monotonic() - started
    first = fleet.metadata("review_project")
    tasks = client.tasks(int(str(first["project_id"])))
    assert len(tasks) == first["tasks"] == first["tasks_pushed"] >= 9  # 3 splits x 3 tags x >= 1 value
    task = tasks[0].data
    assert task["market"] == "de" and task["split_version"] == "v1" and task["image"].startswith("data:image/jpeg")
    assert {"road_type", "time_of_day", "weather", "checks", "drive_checks", "facts"} <= set(task)

    _materialize(defs, fleet, "review_project")  # same split version: same project, nothing new
    again = fleet.metadata("review_project")
    assert (again["project_id"], again["tasks_pushed"]) == (first["project_id"], 0)
    assert len(client.tasks(int(str(first["project_id"])))) == len(tasks)

    # Reviewers answer: reject a frame, reject a whole drive (the drive-level reason), accept a frame.
    by_drive: dict[str, list[object]] = {}
    for t in tasks:
        by_drive.setdefault(t.data["drive_id"], []).append(t)
    frame_drive, whole_drive = sorted(by_drive)[:2]
    rejected_task = by_drive[frame_drive][0]
    client.annotate(rejected_task.id, _answer("reject", "camera blurred, dirty or obstructed", "lens smudge"))
    client.annotate(by_drive[whole_drive][0].id, _answer("reject", WHOLE_DRIVE_REASON))
    client.annotate(by_drive[frame_drive][1].id, _answer("accept"))

    result = _tick(defs, fleet, None)
    assert [r.asset_selection for r in result.run_requests] == [[AssetKey(["de", "review_verdicts"])]]
    started = time.monotonic()
    _materialize(defs, fleet, "review_verdicts")
    poll_s = time.monotonic() - started
    verdicts = pq.read_table(fleet.lake / REVIEW_VERDICTS.path("de", "v1")).to_pylist()
    assert sorted((v["drive_id"], v["verdict"], v["whole_drive"]) for v in verdicts) == sorted(
        [(frame_drive, "reject", False), (whole_drive, "reject", True), (frame_drive, "accept", False)]
    )
    assert {v["reviewer"] for v in verdicts} == {label_studio_server.username}
    before = (fleet.lake / REVIEW_VERDICTS.path("de", "v1")).read_bytes()
    assert not _tick(defs, fleet, result.cursor).run_requests  # re-polling: nothing new, nothing requested
    _materialize(defs, fleet, "review_verdicts")
    assert (fleet.lake / REVIEW_VERDICTS.path("de", "v1")).read_bytes() == before  # idempotent

    refresh_market_assets(fleet.defs, fleet.instance, console_log_level="CRITICAL", markets=("de",))
    manifest = fleet.manifest()
    excluded = manifest.filter(pc.field("excluded"))
    frame_rows = excluded.filter(pc.field("drive_id") == frame_drive).to_pylist()
    assert [(r["frame_index"], r["exclusion_reason"], r["excluded_by"]) for r in frame_rows] == [
        (rejected_task.data["frame_index"], "camera blurred, dirty or obstructed", label_studio_server.username)
    ]
    assert frame_rows[0]["exclusion_source"].endswith(f"task {rejected_task.id}")
    whole = manifest.filter(pc.field("drive_id") == whole_drive)
    assert whole.num_rows > 0 and all(whole.column("excluded").to_pylist())
    assert set(whole.column("exclusion_reason").to_pylist()) == {WHOLE_DRIVE_REASON}
    assert fleet.metadata("curated_splits")["frames_excluded_by"] == {"label-studio": excluded.num_rows}
    print(f"\nreview figures: push {push_s:.1f} s ({len(tasks)} tasks), poll {poll_s:.1f} s ({len(verdicts)} verdicts)")


def test_an_unreachable_server_fails_clearly_and_loses_nothing(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    project = fleet.lake / "review" / "de" / "projects" / "v1.json"
    if not project.exists():  # the loop test did not run (no Label Studio): a project file stands in
        project.parent.mkdir(parents=True, exist_ok=True)
        project.write_text(json.dumps({"project_id": 1, "server": "http://127.0.0.1:9"}))
    verdicts = fleet.lake / REVIEW_VERDICTS.path("de", "v1")
    before = verdicts.read_bytes() if verdicts.exists() else None
    defs = _with_server(monkeypatch, "http://127.0.0.1:9", "any-token")
    run = _materialize(defs, fleet, "review_verdicts", raise_on_error=False)
    assert not run.success
    failure = next(e for e in run.all_events if e.is_step_failure)
    assert "Label Studio at http://127.0.0.1:9 is unreachable" in str(failure.step_failure_data.error)
    assert (verdicts.read_bytes() if verdicts.exists() else None) == before
    skipped = _tick(defs, fleet, '{"de": "earlier"}')
    assert isinstance(skipped, SkipReason) and "unreachable" in str(skipped.skip_message)


def test_screenshot_of_the_review_project_in_headless_chromium(
    fleet: Fleet, label_studio_server: LocalServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A review task as a reviewer sees it; AD_UPDATE_DOCS_IMAGES=1 also writes it to docs/img/."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's `chromium` package (.ci/run does when it is missing)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip package playwright (pinned in pyproject)")
    defs = _with_server(monkeypatch, label_studio_server.url, label_studio_server.token)
    _materialize(defs, fleet, "review_project")
    project_id = int(str(fleet.metadata("review_project")["project_id"]))
    task_id = LabelStudioClient(label_studio_server.url, label_studio_server.token).tasks(project_id)[0].id
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(f"{label_studio_server.url}/user/login/")
            page.fill("input[name=email]", label_studio_server.username)
            page.fill("input[name=password]", label_studio_server.password)
            page.click("button[type=submit]")
            page.wait_for_function("() => !location.pathname.startsWith('/user/login')", timeout=60_000)
            page.goto(f"{label_studio_server.url}/projects/{project_id}/data?task={task_id}")
            page.get_by_text("whole drive unusable", exact=False).first.wait_for(timeout=90_000)
            page.wait_for_function(
                "() => [...document.images].some(i => i.complete && i.naturalWidth > 100)", timeout=60_000
            )
            page.wait_for_timeout(1500)  # the image fades in
            shot = tmp_path / DOCS_SHOT.name
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    assert shot.stat().st_size > 30_000
    if os.environ.get("AD_UPDATE_DOCS_IMAGES") == "1":
        shutil.copyfile(shot, DOCS_SHOT)


def test_the_resource_without_a_url_points_at_the_local_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AD_STATE_DIR", str(tmp_path))
    assert LabelStudioResource().client_if_running() is None  # never started by a poll
