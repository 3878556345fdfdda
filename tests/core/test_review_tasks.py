"""The review loop's pure parts: flagged frames, the sample, Label Studio answers as verdict records, and one
verdict path (CSV rejections and Label Studio verdicts) into the manifest."""

from __future__ import annotations

import pyarrow as pa

from ad_common.lake_layout import FRAME_TAGS_SCHEMA, REVIEW_VERDICTS
from ad_core.curate.manifest import Verdict, build_manifest, parse_rejections, verdicts_from_records
from ad_core.curate.review_tasks import (
    NO_REASON,
    REVIEW_REASONS,
    WHOLE_DRIVE_REASON,
    TaskAnswer,
    flagged_frames,
    label_config,
    review_items,
    task_data,
    verdict_records,
)


def _tags(n: int) -> pa.Table:
    return pa.table(
        {
            "frame_index": list(range(n)),
            "timestamp_ns": [i * 100_000_000 for i in range(n)],
            "latitude": [48.0] * n,
            "longitude": [11.0] * n,
            "geo_cell": ["c"] * n,
            "road_type": ["urban"] * n,
            "time_of_day": ["day"] * n,
            "weather": ["clear" if i < n // 2 else "rain" for i in range(n)],
            "manoeuvre": ["straight"] * n,
        },
        FRAME_TAGS_SCHEMA,
    )


def _manifest(verdicts: list[Verdict]) -> pa.Table:
    drives = {"d1": "train", "d2": "test"}
    return build_manifest(
        "de",
        drives,
        {d: _tags(10) for d in drives},
        {d: (f"synced/de/{d}/frames.parquet", "sha") for d in drives},
        {d: f"decoded/de/{d}/cam.parquet" for d in drives},
        verdicts,
    )


def _answer(task: int, drive: str, frame: int, verdict: str | None, reason: str | None = None) -> TaskAnswer:
    result = []
    if verdict:
        result.append({"from_name": "verdict", "value": {"choices": [verdict]}})
    if reason:
        result.append({"from_name": "reason", "value": {"choices": [reason]}})
    result.append({"from_name": "note", "value": {"text": ["looked twice"]}})
    data = {"drive_id": drive, "frame_index": frame}
    return TaskAnswer(task, data, 100 + task, "ana@example.com", "2026-12-03T10:00:00Z", tuple(result))


def test_flagged_frames_name_the_stream_and_its_error() -> None:
    synced = pa.table(
        {
            "frame_index": [0, 1, 2],
            "imu.sync_error_ns": [1_000_000, 25_000_000, None],
            "imu.in_tolerance": [True, False, False],
            "gnss.in_tolerance": [True, True, True],
        }
    )
    assert flagged_frames(synced) == {
        1: ["imu out of tolerance (sync error 25.0 ms)"],
        2: ["imu out of tolerance (no sample)"],
    }


def test_review_items_are_the_stratified_sample_plus_flagged_frames_up_to_the_cap() -> None:
    manifest = _manifest([])
    items, capped = review_items(manifest, "v1", {"d1": {7: ["imu out of tolerance"], 8: ["x"]}}, max_flagged=1)
    assert capped == 1
    flagged = [i for i in items if any(s.startswith("flagged") for s in i.sampled_for)]
    assert len(flagged) == 1 and flagged[0].drive_id == "d1"
    values = {s for i in items for s in i.sampled_for if not s.startswith("flagged")}
    assert {"train weather=clear", "train weather=rain", "test weather=rain"} <= values
    assert items == review_items(manifest, "v1", {"d1": {7: ["imu out of tolerance"], 8: ["x"]}}, max_flagged=1)[0]
    data = task_data(items[0], "de", "v1", b"\xff\xd8jpeg", ["synced_frames: drive_lateness failed (WARN)"])
    assert data["review_key"] == f"{items[0].drive_id}/{items[0].frame_index}"
    assert data["image"].startswith("data:image/jpeg;base64,")
    assert "drive_lateness" in data["facts"]


def test_label_config_offers_accept_reject_the_fixed_reasons_and_a_note() -> None:
    config = label_config()
    assert '<Choice value="accept"/>' in config and '<Choice value="reject"/>' in config
    assert all(f'<Choice value="{r}"/>' in config for r in REVIEW_REASONS)
    assert '<TextArea name="note"' in config and WHOLE_DRIVE_REASON in REVIEW_REASONS


def test_answers_become_verdict_records_and_one_verdict_path_excludes_frames_and_drives() -> None:
    answers = [
        _answer(3, "d1", 4, "reject", "exposure or glare"),
        _answer(1, "d2", 0, "reject", WHOLE_DRIVE_REASON),
        _answer(2, "d1", 5, "accept"),
        _answer(4, "d1", 6, "reject"),  # no reason picked
        _answer(5, "d1", 7, None),  # no verdict: nothing to apply
    ]
    table = verdict_records(answers, "de", "v1", 9, "http://ls")
    assert table.schema.equals(REVIEW_VERDICTS.schema)
    assert table.column("task_id").to_pylist() == [1, 2, 3, 4]
    assert table.column("whole_drive").to_pylist() == [True, False, False, False]
    assert table.column("reason").to_pylist()[3] == NO_REASON
    assert verdict_records(list(reversed(answers)), "de", "v1", 9, "http://ls").equals(table)

    csv = parse_rejections("review/de/rejections/r.csv", "drive_id,frame_index,reason,reviewer,at\nd1,9,lens,ben,t\n")
    manifest = _manifest(verdicts_from_records(table) + csv)
    rows = {(r["drive_id"], r["frame_index"]): r for r in manifest.to_pylist()}
    assert all(rows[("d2", i)]["excluded"] for i in range(10))
    assert rows[("d2", 3)]["exclusion_reason"] == WHOLE_DRIVE_REASON
    assert rows[("d1", 4)]["exclusion_source"] == "label-studio http://ls project 9 task 3"
    assert rows[("d1", 4)]["excluded_by"] == "ana@example.com"
    assert rows[("d1", 9)]["exclusion_source"] == "review/de/rejections/r.csv:2"
    assert not rows[("d1", 5)]["excluded"]  # accepted
    assert [f for (d, f), r in rows.items() if d == "d1" and r["excluded"]] == [4, 6, 9]
