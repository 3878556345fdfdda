"""Label Studio review projects of a split version (docs/review.md): which frames, what a task holds, what a
reviewer answers, and how an answer becomes a verdict record. Pure: the client lives in ad_resources.

The sample is :func:`ad_core.curate.review.sample_frames` (the static page's: per split and ODD value,
reproducible) plus every frame a quality check flagged (a stream out of its sync tolerance), up to a cap.
A task's ``review_key`` (``<drive>/<frame>``) is its identity: re-pushing a split version adds only new keys.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ad_common.lake_layout import ODD_TAGS, REVIEW_VERDICTS
from ad_core.curate.manifest import ACCEPT, REJECT
from ad_core.curate.review import sample_frames

# The fixed reasons a reviewer picks from; the last one rejects the whole drive, not only the frame.
WHOLE_DRIVE_REASON = "whole drive unusable (calibration, wrong vehicle or market)"
REVIEW_REASONS = (
    "camera blurred, dirty or obstructed",
    "exposure or glare",
    "frame does not match its signals (sync)",
    "wrong ODD tag",
    "sensor artefact (lidar, GNSS, IMU)",
    "privacy (faces, plates)",
    WHOLE_DRIVE_REASON,
)
NO_REASON = "rejected in review (no reason picked)"


def label_config() -> str:
    """The labeling interface: the frame, what the platform knows about it, accept/reject, a reason, a note."""
    reasons = "\n".join(f'    <Choice value="{html.escape(r, quote=True)}"/>' for r in REVIEW_REASONS)
    return f"""<View>
  <Header value="$title"/>
  <Image name="frame" value="$image" zoom="true"/>
  <Text name="facts" value="$facts"/>
  <Header value="Verdict" size="5"/>
  <Choices name="verdict" toName="frame" choice="single-radio" required="true" showInline="true">
    <Choice value="{ACCEPT}"/>
    <Choice value="{REJECT}"/>
  </Choices>
  <Header value="Reason (for a rejection)" size="5"/>
  <Choices name="reason" toName="frame" choice="single-radio">
{reasons}
  </Choices>
  <TextArea name="note" toName="frame" placeholder="note (optional)" maxSubmissions="1" editable="true"/>
</View>"""


def project_title(market: str, split_version: str) -> str:
    return f"{market.upper()} split {split_version}"


@dataclass
class ReviewItem:
    drive_id: str
    frame_index: int
    split: str
    camera_path: str
    tags: dict[str, str]
    sampled_for: list[str] = field(default_factory=list)  # "weather=rain", "flagged: imu out of tolerance"

    @property
    def key(self) -> str:
        return f"{self.drive_id}/{self.frame_index}"


def flagged_frames(synced: pa.Table) -> dict[int, list[str]]:
    """frame_index -> the streams out of sync tolerance in that frame (with the error), from a synced table."""
    streams = [c.removesuffix(".in_tolerance") for c in synced.column_names if c.endswith(".in_tolerance")]
    out: dict[int, list[str]] = {}
    frames = synced.column("frame_index").to_pylist()
    for stream in streams:
        bad = pc.invert(pc.fill_null(synced.column(f"{stream}.in_tolerance"), False))
        if not pc.any(bad).as_py():
            continue
        error_column = f"{stream}.sync_error_ns"
        errors = synced.column(error_column).to_pylist() if error_column in synced.column_names else None
        for i in pc.indices_nonzero(bad).to_pylist():
            error = errors[i] if errors else None
            what = "no sample" if error is None else f"sync error {error / 1e6:.1f} ms"
            out.setdefault(frames[i], []).append(f"{stream} out of tolerance ({what})")
    return out


def review_items(
    manifest: pa.Table,
    version: str,
    flagged: Mapping[str, Mapping[int, list[str]]],
    per_value: int = 3,
    max_flagged: int = 200,
) -> tuple[list[ReviewItem], int]:
    """The stratified sample plus flagged kept frames (at most ``max_flagged``, reproducibly chosen).

    Returns the items sorted by key and how many flagged frames were left out by the cap."""
    items: dict[str, ReviewItem] = {}
    for f in sample_frames(manifest, version, per_value):
        item = items.setdefault(
            f"{f.drive_id}/{f.frame_index}", ReviewItem(f.drive_id, f.frame_index, f.split, f.camera_path, f.tags)
        )
        item.sampled_for.append(f"{f.split} {f.tag}={f.value}")
    kept = manifest.filter(pc.and_(pc.invert(manifest.column("excluded")), pc.is_valid(manifest.column("camera_path"))))
    rows = {
        (r["drive_id"], r["frame_index"]): r
        for r in kept.select(["drive_id", "frame_index", "split", "camera_path", *ODD_TAGS]).to_pylist()
    }
    candidates = sorted(
        ((d, i) for d, frames in flagged.items() for i in frames if (d, i) in rows),
        key=lambda k: hashlib.sha256(f"{version}/{k[0]}/{k[1]}".encode()).digest(),
    )
    for drive, index in candidates[:max_flagged]:
        r = rows[(drive, index)]
        item = items.setdefault(
            f"{drive}/{index}",
            ReviewItem(drive, index, r["split"], r["camera_path"], {t: r[t] for t in ODD_TAGS}),
        )
        item.sampled_for += [f"flagged: {why}" for why in flagged[drive][index]]
    return sorted(items.values(), key=lambda i: (i.drive_id, i.frame_index)), max(0, len(candidates) - max_flagged)


def task_data(item: ReviewItem, market: str, version: str, jpeg: bytes, drive_checks: Iterable[str]) -> dict[str, Any]:
    """One Label Studio task: the frame as a JPEG data URL (no storage to configure on the server) and its facts."""
    failed = list(drive_checks)
    facts = [
        f"market {market.upper()}, split {item.split} of {version}",
        "ODD: " + ", ".join(f"{t} {item.tags[t]}" for t in ODD_TAGS),
        "sampled for: " + "; ".join(item.sampled_for),
        "drive checks: " + ("; ".join(failed) if failed else "all passed"),
    ]
    return {
        "review_key": item.key,
        "title": f"{item.drive_id} frame {item.frame_index}",
        "image": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode(),
        "facts": "\n".join(facts),
        "market": market,
        "split_version": version,
        "split": item.split,
        "drive_id": item.drive_id,
        "frame_index": item.frame_index,
        **item.tags,
        "checks": [why.removeprefix("flagged: ") for why in item.sampled_for if why.startswith("flagged: ")],
        "drive_checks": failed,
    }


def _choice(result: Iterable[Mapping[str, Any]], name: str) -> str | None:
    for r in result:
        if r.get("from_name") == name:
            values = r.get("value", {}).get("choices") or r.get("value", {}).get("text") or []
            return str(values[0]) if values else None
    return None


@dataclass(frozen=True)
class TaskAnswer:
    """What the review loop needs of a Label Studio task (the client's Task, flattened)."""

    task_id: int
    data: Mapping[str, Any]
    annotation_id: int
    reviewer: str
    updated_at: str
    result: tuple[Mapping[str, Any], ...]


def verdict_records(answers: Iterable[TaskAnswer], market: str, version: str, project_id: int, server: str) -> pa.Table:
    """One REVIEW_VERDICTS row per answered task (its latest annotation), sorted by task: deterministic, so
    polling twice writes the same bytes."""
    rows = []
    for a in sorted(answers, key=lambda a: a.task_id):
        verdict = _choice(a.result, "verdict")
        if verdict not in (ACCEPT, REJECT):
            continue  # skipped or answered without a verdict: nothing to apply
        reason = _choice(a.result, "reason") or (NO_REASON if verdict == REJECT else "")
        rows.append(
            {
                "market": market,
                "split_version": version,
                "project_id": project_id,
                "task_id": a.task_id,
                "annotation_id": a.annotation_id,
                "drive_id": str(a.data["drive_id"]),
                "frame_index": int(a.data["frame_index"]),
                "verdict": verdict,
                "reason": reason,
                "whole_drive": verdict == REJECT and reason == WHOLE_DRIVE_REASON,
                "note": _choice(a.result, "note") or "",
                "reviewer": a.reviewer,
                "reviewed_at": a.updated_at,
                "source": f"label-studio {server} project {project_id} task {a.task_id}",
            }
        )
    return pa.Table.from_pylist(rows, REVIEW_VERDICTS.schema)
