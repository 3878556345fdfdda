"""The split manifest (one row per frame, ``SPLIT_MANIFEST_SCHEMA``) and the reviewers' verdicts it applies.

Verdicts come two ways, into one type (:class:`Verdict`) and one rule: CSV files with the header
``drive_id,frame_index,reason,reviewer,at`` (every row a rejection), and the ``review_verdicts`` records of the
Label Studio review projects (``REVIEW_VERDICTS``, docs/review.md). A verdict without a frame index is about
the whole drive. Rejected frames stay in the manifest with ``excluded = true`` and who/when/why/where from,
so the manifest says what was left out and training never sees it.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ad_common.lake_layout import ODD_TAGS, SPLIT_MANIFEST_SCHEMA

REJECTION_COLUMNS = ("drive_id", "frame_index", "reason", "reviewer", "at")
ACCEPT, REJECT = "accept", "reject"


@dataclass(frozen=True)
class Verdict:
    drive_id: str
    frame_index: int | None  # None: the whole drive
    reason: str
    reviewer: str
    at: str
    source: str  # where the verdict was given: "<csv file>:<line>" or "label-studio <url> project <p> task <t>"
    verdict: str = REJECT


def verdicts_from_records(table: pa.Table) -> list[Verdict]:
    """The Label Studio verdicts of ``REVIEW_VERDICTS`` records (one row per reviewed task)."""
    return [
        Verdict(
            drive_id=r["drive_id"],
            frame_index=None if r["whole_drive"] else r["frame_index"],
            reason=r["reason"] or "",
            reviewer=r["reviewer"] or "",
            at=r["reviewed_at"] or "",
            source=r["source"],
            verdict=r["verdict"],
        )
        for r in table.to_pylist()
    ]


class RejectionFileError(ValueError):
    pass


def parse_rejections(name: str, text: str) -> list[Verdict]:
    """Rejections of one CSV file; a missing column or a bad frame index names the file and line."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ("drive_id", "reason") if c not in (reader.fieldnames or [])]
    if missing:
        raise RejectionFileError(f"{name}: missing column(s) {missing}; expected header {','.join(REJECTION_COLUMNS)}")
    out = []
    for line, row in enumerate(reader, start=2):
        frame = (row.get("frame_index") or "").strip()
        if frame and not frame.isdigit():
            raise RejectionFileError(f"{name}, line {line}: frame_index {frame!r} is not a non-negative integer")
        if not (row.get("reason") or "").strip():
            raise RejectionFileError(f"{name}, line {line}: a rejection needs a reason")
        out.append(
            Verdict(
                drive_id=row["drive_id"].strip(),
                frame_index=int(frame) if frame else None,
                reason=row["reason"].strip(),
                reviewer=(row.get("reviewer") or "").strip(),
                at=(row.get("at") or "").strip(),
                source=f"{name}:{line}",
            )
        )
    return out


def build_manifest(
    market: str,
    splits: Mapping[str, str],
    frame_tags: Mapping[str, pa.Table],
    synced: Mapping[str, tuple[str, str]],
    camera_paths: Mapping[str, str | None],
    verdicts: Iterable[Verdict],
) -> pa.Table:
    """Every frame of every placed drive with its split, tags and exclusion, sorted by (drive, frame).

    Rejections exclude (a whole-drive one wins over a frame's); accepted frames stay in."""
    by_drive: dict[str, dict[int | None, Verdict]] = {}
    for r in verdicts:
        if r.verdict == REJECT:
            by_drive.setdefault(r.drive_id, {})[r.frame_index] = r
    tables = []
    for drive in sorted(splits):
        tags = frame_tags[drive]
        n = tags.num_rows
        frames = tags.column("frame_index").to_pylist()
        rejected = by_drive.get(drive, {})
        hits = [rejected.get(None) or rejected.get(f) for f in frames]
        synced_path, synced_sha = synced[drive]
        tables.append(
            pa.table(
                {
                    "market": pa.array([market] * n, pa.string()),
                    "drive_id": pa.array([drive] * n, pa.string()),
                    "frame_index": tags.column("frame_index"),
                    "timestamp_ns": tags.column("timestamp_ns"),
                    "split": pa.array([splits[drive]] * n, pa.string()),
                    "synced_path": pa.array([synced_path] * n, pa.string()),
                    "synced_sha256": pa.array([synced_sha] * n, pa.string()),
                    "camera_path": pa.array([camera_paths.get(drive)] * n, pa.string()),
                    **{tag: tags.column(tag) for tag in ODD_TAGS},
                    "excluded": pa.array([h is not None for h in hits], pa.bool_()),
                    "exclusion_reason": pa.array([h.reason if h else None for h in hits], pa.string()),
                    "excluded_by": pa.array([h.reviewer if h else None for h in hits], pa.string()),
                    "excluded_at": pa.array([h.at if h else None for h in hits], pa.string()),
                    "exclusion_source": pa.array([h.source if h else None for h in hits], pa.string()),
                },
                schema=SPLIT_MANIFEST_SCHEMA,
            )
        )
    table = pa.concat_tables(tables) if tables else SPLIT_MANIFEST_SCHEMA.empty_table()
    return table.sort_by([("drive_id", "ascending"), ("frame_index", "ascending")])


def manifest_bytes(table: pa.Table) -> bytes:
    """The manifest as Parquet bytes that depend only on its content (no timestamps or writer state)."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", row_group_size=1 << 16, write_statistics=True)
    return sink.getvalue()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def previous_splits(manifest: pa.Table | None) -> dict[str, str]:
    """drive -> split of an earlier manifest of the same split version (the stability contract)."""
    if manifest is None or manifest.num_rows == 0:
        return {}
    pairs = manifest.select(["drive_id", "split"]).group_by(["drive_id", "split"]).aggregate([])
    out: dict[str, str] = {}
    for drive, split in zip(pairs.column("drive_id").to_pylist(), pairs.column("split").to_pylist(), strict=True):
        out.setdefault(drive, split)  # a drive in two splits is a violation the leakage check reports
    return out


def frame_drive_splits(manifest: pa.Table) -> dict[str, set[str]]:
    pairs = manifest.select(["drive_id", "split"]).group_by(["drive_id", "split"]).aggregate([])
    out: dict[str, set[str]] = {}
    for drive, split in zip(pairs.column("drive_id").to_pylist(), pairs.column("split").to_pylist(), strict=True):
        out.setdefault(drive, set()).add(split)
    return out


def frames_per_split(manifest: pa.Table) -> dict[str, int]:
    kept = manifest.filter(pc.invert(manifest.column("excluded")))
    counts = kept.group_by("split").aggregate([("frame_index", "count")])
    return dict(zip(counts.column("split").to_pylist(), counts.column("frame_index_count").to_pylist(), strict=True))
