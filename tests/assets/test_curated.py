"""Curated splits end to end on the demo fleet's DE and JP drives (5 drives x 1 min each, seed 0), through
the real ingest runs (run-once) and the market-assets job on a real instance."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from dagster import AssetKey, DagsterInstance, Definitions, instance_for_test

from ad_common.lake_layout import ODD_TAGS, SPLIT_MANIFEST_SCHEMA, rejections_dir, split_manifest_path
from ad_platform.definitions import build_definitions
from ad_platform.runner import refresh_market_assets, run_once
from fleetgen import generate_fleet, ground_truth

MARKETS = ("de", "jp")
# The generator's ground truth (drive.json "odd", for tests only) in the tagger's vocabulary.
TRUTH_VOCABULARY = {"highway": "motorway", "dusk": "dusk_dawn", "fog": "fog_snow", "snow": "fog_snow"}
CHROMIUM = Path("/usr/bin/chromium")


@dataclass
class Fleet:
    state: Path
    defs: Definitions
    instance: DagsterInstance

    @property
    def lake(self) -> Path:
        return self.state / "lake"

    def refresh(self) -> dict[str, dict[str, bool]]:
        """Run the market assets; returns market -> check name -> passed for curated_splits."""
        run = refresh_market_assets(self.defs, self.instance, console_log_level="CRITICAL", markets=MARKETS)
        out: dict[str, dict[str, bool]] = {}
        self.descriptions: dict[tuple[str, str], str] = {}
        for e in run.get_asset_check_evaluations():
            if e.asset_key.path[-1] == "curated_splits":
                out.setdefault(e.asset_key.path[0], {})[e.check_name] = e.passed
                self.descriptions[(e.asset_key.path[0], e.check_name)] = e.description or ""
        return out

    def manifest(self, market: str) -> pa.Table:
        return pq.read_table(self.lake / split_manifest_path(market, "v1"))

    def latest(self, market: str, asset: str = "curated_splits") -> dict[str, object]:
        event = self.instance.get_latest_materialization_event(AssetKey([market, asset]))
        assert event is not None and event.asset_materialization is not None
        return {k: v.value for k, v in event.asset_materialization.metadata.items()}


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp, instance_for_test() as instance:
        state = Path(tmp) / ".state"
        for var in ("AD_LANDING_DIR", "AD_LAKE_DIR", "AD_CATALOG_PATH", "DAGSTER_HOME"):
            mp.delenv(var, raising=False)
        mp.setenv("AD_STATE_DIR", str(state))
        generate_fleet(state / "landing", list(MARKETS), 5, 1.0, seed=0)
        defs = build_definitions()
        outcomes = run_once(defs, instance, state_dir=state, log=lambda _: None, settle_s=0)
        assert {o.status for o in outcomes} == {"materialized"}, [(o.drive_id, o.error) for o in outcomes]
        yield Fleet(state, defs, instance)


def test_odd_tags_match_the_generators_ground_truth_on_at_least_90_percent(fleet: Fleet) -> None:
    truth_tags = ("road_type", "time_of_day", "weather")  # drive.json's; the manoeuvre's truth is the motion
    per_tag: dict[str, list[bool]] = {t: [] for t in truth_tags}
    frames_per_tag: dict[str, list[float]] = {t: [] for t in truth_tags}
    turns: list[tuple[bool, bool]] = []  # (the path has a junction turn, the tagger found one)
    for market in MARKETS:
        for drive in sorted((fleet.state / "landing" / market).glob(f"{market}-*")):
            truth = json.loads((drive / "drive.json").read_text())["odd"]
            record = pq.read_table(fleet.lake / "catalog" / "drive_odd_tags" / market / f"{drive.name}.parquet")
            row = record.to_pylist()[0]
            motion = ground_truth(drive)
            moving = motion["speed_kmh"] > 5
            turns.append(
                (
                    bool(np.abs(motion["curvature_1pm"][moving]).max() > 0.02),
                    "turn" in json.loads(row["manoeuvre_shares"]),
                )
            )
            for tag in truth_tags:
                expected = TRUTH_VOCABULARY.get(truth[tag], truth[tag])
                per_tag[tag].append(row[tag] == expected)
                frames_per_tag[tag].append(json.loads(row[f"{tag}_shares"]).get(expected, 0.0))
    accuracy = {t: sum(v) / len(v) for t, v in per_tag.items()}
    frame_accuracy = {t: sum(v) / len(v) for t, v in frames_per_tag.items()}
    print(f"drive-level accuracy {accuracy}, frame-level {frame_accuracy}")
    assert len(per_tag["weather"]) == 10
    assert all(a >= 0.9 for a in accuracy.values()), accuracy
    assert all(a >= 0.9 for a in frame_accuracy.values()), frame_accuracy
    assert any(has for has, _ in turns) and all(has == found for has, found in turns), turns


def test_splits_are_green_content_addressed_and_idempotent(fleet: Fleet) -> None:
    checks = fleet.refresh()
    assert checks == {
        m: {"no_drive_or_place_leakage": True, "odd_quotas": True, "min_frames_per_split": True} for m in MARKETS
    }
    for market in MARKETS:
        manifest = fleet.manifest(market)
        assert manifest.schema.equals(SPLIT_MANIFEST_SCHEMA)
        assert set(manifest.column("split").to_pylist()) == {"train", "val", "test"}
        metadata = fleet.latest(market)
        assert metadata["manifest_path"] == split_manifest_path(market, "v1")
        event = fleet.instance.get_latest_materialization_event(AssetKey([market, "curated_splits"]))
        assert event is not None and event.asset_materialization is not None
        assert event.asset_materialization.tags["dagster/data_version"] == metadata["manifest_sha256"]
        # Every frame row points at its synced file and the camera table holding its JPEG.
        first = manifest.slice(0, 1).to_pylist()[0]
        assert (fleet.lake / first["synced_path"]).is_file()
        assert (fleet.lake / first["camera_path"]).is_file()
    before = {m: fleet.latest(m)["manifest_sha256"] for m in MARKETS}
    fleet.refresh()
    assert {m: fleet.latest(m)["manifest_sha256"] for m in MARKETS} == before


def test_review_page_renders_in_headless_chromium_with_its_frames(fleet: Fleet) -> None:
    fleet.refresh()
    page_path = Path(str(fleet.latest("de", "split_review")["review_page"]))
    html = page_path.read_text()
    assert "DE curated split v1" in html
    assert html.count("<img ") >= int(str(fleet.latest("de", "split_review")["frames_sampled"])) >= 3
    labels = json.loads((page_path.parent / "fiftyone" / "train" / "labels.json").read_text())
    assert labels["classes"] is None and all(v.count("/") == len(ODD_TAGS) - 1 for v in labels["labels"].values())
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's `chromium` package (.ci/run does when it is missing)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip package playwright (pinned in pyproject)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(page_path.as_uri())
            page.get_by_text("DE curated split v1").wait_for()
            loaded = page.evaluate("() => [...document.images].filter(i => i.complete && i.naturalWidth > 0).length")
            total = page.evaluate("() => document.images.length")
            shot = page_path.parent / "screenshot.png"
            page.screenshot(path=str(shot), full_page=False)
        finally:
            browser.close()
    assert total >= 3 and loaded == total
    assert shot.stat().st_size > 20_000  # a page of thumbnails, not a blank one


def test_rejected_frames_are_excluded_with_who_when_why(fleet: Fleet) -> None:
    fleet.refresh()
    manifest = fleet.manifest("jp")
    drive = manifest.column("drive_id")[0].as_py()
    folder = fleet.lake / rejections_dir("jp")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "review-1.csv").write_text(
        f"drive_id,frame_index,reason,reviewer,at\n{drive},3,lens covered,ana,2026-12-02T10:00Z\n"
    )
    try:
        assert fleet.refresh()["jp"]["min_frames_per_split"]
        rows = fleet.manifest("jp").filter(pc.field("excluded")).to_pylist()
        assert [(r["drive_id"], r["frame_index"], r["exclusion_reason"], r["excluded_by"]) for r in rows] == [
            (drive, 3, "lens covered", "ana")
        ]
    finally:
        shutil.rmtree(folder)


def test_an_edited_manifest_that_puts_one_place_in_two_splits_fails_the_leakage_check(fleet: Fleet) -> None:
    fleet.refresh()
    path = fleet.lake / split_manifest_path("de", "v1")
    original = path.read_bytes()
    manifest = pq.read_table(path)
    cells = {
        r["drive_id"]: set(r["geo_cells"])
        for r in pq.read_table(fleet.lake / "catalog" / "split_assignments" / "de" / "v1.parquet").to_pylist()
    }
    # Plant: a test drive now also touches one of a train drive's geo cells (as if it had driven there).
    train = next(d for d in sorted(cells) if manifest.filter(pc.field("drive_id") == d)["split"][0].as_py() == "train")
    test = next(d for d in sorted(cells) if manifest.filter(pc.field("drive_id") == d)["split"][0].as_py() == "test")
    tags_path = fleet.lake / "odd" / "de" / test / "frame_tags.parquet"
    record_path = fleet.lake / "catalog" / "drive_odd_tags" / "de" / f"{test}.parquet"
    saved = {p: p.read_bytes() for p in (tags_path, record_path)}
    assert manifest.num_rows
    record = pq.read_table(record_path).to_pylist()
    record[0]["geo_cells"] = sorted(set(record[0]["geo_cells"]) | {sorted(cells[train])[0]})
    pq.write_table(pa.Table.from_pylist(record, pq.read_schema(record_path)), record_path)
    try:
        checks = fleet.refresh()
        assert checks["de"]["no_drive_or_place_leakage"] is False
        cell = sorted(cells[train])[0]
        assert (
            f"geo cell {cell} is in 2 splits (test: {test}; train: {train}"
            in fleet.descriptions[("de", "no_drive_or_place_leakage")]
        )
        manifest_after = fleet.manifest("de")
        assert manifest_after.filter(pc.field("drive_id") == test)["split"][0].as_py() == "test"  # stable
    finally:
        for p, data in saved.items():
            p.write_bytes(data)
        path.write_bytes(original)
