"""Visual QA of a split version: a sample of frames per split and ODD value, as a contact sheet (one JPEG), a
static review page (HTML + the frames), and a FiftyOne image-classification export.

The sample is deterministic (frames ranked by a hash of version, drive and frame), so the same manifest gives
the same page. Frames come from the decoded camera tables (``camera_path`` of the manifest).
"""

from __future__ import annotations

import hashlib
import html
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import simplejpeg

from ad_common.lake_layout import ODD_TAGS, SPLITS

THUMB_WIDTH = 160


@dataclass(frozen=True)
class SampledFrame:
    split: str
    tag: str
    value: str
    drive_id: str
    frame_index: int
    camera_path: str
    tags: dict[str, str]

    @property
    def name(self) -> str:
        return f"{self.drive_id}_{self.frame_index:06d}.jpg"


def sample_frames(manifest: pa.Table, version: str, per_value: int = 3) -> list[SampledFrame]:
    """Up to ``per_value`` kept frames for every (split, tag, value), spread over drives, reproducibly."""
    kept = manifest.filter(pc.and_(pc.invert(manifest.column("excluded")), pc.is_valid(manifest.column("camera_path"))))
    rows = kept.select(["split", "drive_id", "frame_index", "camera_path", *ODD_TAGS]).to_pylist()
    rank = {
        (r["drive_id"], r["frame_index"]): hashlib.sha256(
            f"{version}/{r['drive_id']}/{r['frame_index']}".encode()
        ).digest()
        for r in rows
    }
    out: list[SampledFrame] = []
    for split in SPLITS:
        for tag in ODD_TAGS:
            candidates = [r for r in rows if r["split"] == split]
            for value in sorted({r[tag] for r in candidates}):
                pool = sorted(
                    (r for r in candidates if r[tag] == value), key=lambda r: rank[(r["drive_id"], r["frame_index"])]
                )
                picked, drives = [], set()
                for r in pool:  # one frame per drive first, then fill
                    if r["drive_id"] not in drives:
                        picked.append(r)
                        drives.add(r["drive_id"])
                    if len(picked) == per_value:
                        break
                picked += [r for r in pool if r not in picked][: per_value - len(picked)]
                out += [
                    SampledFrame(
                        split,
                        tag,
                        value,
                        r["drive_id"],
                        r["frame_index"],
                        r["camera_path"],
                        {t: r[t] for t in ODD_TAGS},
                    )
                    for r in picked
                ]
    return out


def thumbnail(jpeg: bytes, width: int = THUMB_WIDTH) -> np.ndarray:
    """RGB thumbnail about ``width`` wide (JPEG DCT scaling, then striding: no resampling library needed)."""
    header = simplejpeg.decode_jpeg_header(jpeg)
    h, w = header[0], header[1]
    img = simplejpeg.decode_jpeg(jpeg, colorspace="RGB", min_width=width, min_height=max(1, h * width // w))
    step = max(1, img.shape[1] // width)
    return np.ascontiguousarray(img[::step, ::step])


def contact_sheet(thumbs: list[np.ndarray], columns: int = 6, pad: int = 2) -> bytes:
    """One JPEG with the thumbnails in a grid (same-size cells, black padding)."""
    if not thumbs:
        return b""
    ch = max(t.shape[0] for t in thumbs)
    cw = max(t.shape[1] for t in thumbs)
    rows = (len(thumbs) + columns - 1) // columns
    sheet = np.zeros((rows * (ch + pad) + pad, columns * (cw + pad) + pad, 3), dtype=np.uint8)
    for i, t in enumerate(thumbs):
        y, x = pad + (i // columns) * (ch + pad), pad + (i % columns) * (cw + pad)
        sheet[y : y + t.shape[0], x : x + t.shape[1]] = t
    return simplejpeg.encode_jpeg(sheet, quality=80, colorspace="RGB")


def write_review(
    out: Path,
    market: str,
    version: str,
    manifest_sha256: str,
    frames: list[SampledFrame],
    read_jpeg: Callable[[str, int], bytes],
    summary: dict[str, dict[str, int]],
) -> dict[str, object]:
    """Write ``index.html``, ``frames/*.jpg``, ``contact_sheet.jpg`` and ``fiftyone/<split>/`` under ``out``."""
    (out / "frames").mkdir(parents=True, exist_ok=True)
    thumbs: dict[str, np.ndarray] = {}
    for f in frames:
        if f.name not in thumbs:
            jpeg = read_jpeg(f.camera_path, f.frame_index)
            (out / "frames" / f.name).write_bytes(jpeg)
            thumbs[f.name] = thumbnail(jpeg)
    sheet = contact_sheet([thumbs[f.name] for f in frames if f.split == "train" or f.tag == "weather"])
    (out / "contact_sheet.jpg").write_bytes(sheet)
    _write_fiftyone(out / "fiftyone", frames)
    (out / "index.html").write_text(_page(market, version, manifest_sha256, frames, summary))
    return {"frames": len(thumbs), "contact_sheet_bytes": len(sheet)}


def _write_fiftyone(root: Path, frames: list[SampledFrame]) -> None:
    """FiftyOne's ``FiftyOneImageClassificationDataset`` layout per split: ``data/`` + ``labels.json``.

    The label is the frame's full ODD (``road_type/time_of_day/weather/manoeuvre``); ``samples.json`` beside it
    keeps the drive, frame and each tag for import as sample fields.
    """
    for split in SPLITS:
        mine = {f.name: f for f in frames if f.split == split}
        if not mine:
            continue
        data = root / split / "data"
        data.mkdir(parents=True, exist_ok=True)
        for name in mine:
            (data / name).write_bytes((root.parent / "frames" / name).read_bytes())
        labels = {Path(n).stem: "/".join(f.tags[t] for t in ODD_TAGS) for n, f in sorted(mine.items())}
        (root / split / "labels.json").write_text(json.dumps({"classes": None, "labels": labels}, indent=1))
        samples = [
            {"filepath": f"data/{n}", "drive_id": f.drive_id, "frame_index": f.frame_index, "split": split, **f.tags}
            for n, f in sorted(mine.items())
        ]
        (root / split / "samples.json").write_text(json.dumps(samples, indent=1))


def _page(market: str, version: str, sha: str, frames: list[SampledFrame], summary: dict[str, dict[str, int]]) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{e(market.upper())} split {e(version)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em;background:#fafafa}figure{display:inline-block;margin:4px;"
        "font-size:11px;text-align:center}img{width:160px;display:block;border:1px solid #ccc}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}h3{margin-bottom:2px}</style>",
        "</head><body>",
        f"<h1>{e(market.upper())} curated split {e(version)}</h1>",
        f"<p>manifest sha256 <code>{e(sha)}</code></p>",
        "<table><tr><th>split</th><th>drives</th><th>frames</th><th>excluded frames</th></tr>",
        *(
            f"<tr><td>{e(s)}</td><td>{v.get('drives', 0)}</td><td>{v.get('frames', 0)}</td>"
            f"<td>{v.get('excluded_frames', 0)}</td></tr>"
            for s, v in summary.items()
        ),
        "</table>",
        "<p>To reject a frame or a drive, add a line <code>drive_id,frame_index,reason,reviewer,at</code> to a CSV "
        f"file in <code>review/{e(market)}/rejections/</code> of the lake (empty frame_index: the whole drive); "
        "the next split version excludes it.</p>",
    ]
    for split in SPLITS:
        parts.append(f"<h2 id='{split}'>{split}</h2>")
        for tag in ODD_TAGS:
            for value in sorted({f.value for f in frames if f.split == split and f.tag == tag}):
                parts.append(f"<h3>{e(tag)} = {e(value)}</h3><div>")
                for f in (f for f in frames if f.split == split and f.tag == tag and f.value == value):
                    parts.append(
                        f"<figure><img src='frames/{e(f.name)}' alt='{e(f.drive_id)} frame {f.frame_index}'>"
                        f"<figcaption>{e(f.drive_id)}<br>frame {f.frame_index}</figcaption></figure>"
                    )
                parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)
