"""Signal drift between a market's reference drives and newly synced drives (pure functions, no Dagster).

Each synced drive is reduced to a one-row summary: fixed-bin histograms of speed, signed yaw rate and image
brightness plus its ODD tags (``summarize_drive``). ``compare`` matches like with like (same ODD bucket),
reduces every drive to one robust value per signal and measures how far the new drives' typical value sits
from the reference's, on a log scale (docs/drift.md explains the choice and the thresholds).
"""

from __future__ import annotations

import hashlib
import math
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import simplejpeg

from ad_common.lake_layout import DRIVE_SIGNAL_SUMMARIES, ODD_TAGS

SPEED_COLUMN = "esp_vehicle_speed.VehicleSpeed"  # km/h, CAN ESP_VehicleSpeed synced to the camera clock
YAW_COLUMN = "esp_yaw_rate.YawRate"  # deg/s, positive = left
MOVING_KMH = 5.0  # standstill (lights, start, end) says nothing about how a market drives
BRIGHTNESS_FRAMES = 60  # JPEGs decoded per drive, evenly spaced: bounded cost whatever the drive length


def _median(hist: np.ndarray, edges: np.ndarray) -> float:
    """Median of a histogram, linearly interpolated inside its bin (NaN when empty)."""
    total = hist.sum()
    if total <= 0:
        return math.nan
    cdf = np.cumsum(hist) / total
    i = int(np.searchsorted(cdf, 0.5))
    below = cdf[i - 1] if i else 0.0
    frac = (0.5 - below) / max(cdf[i] - below, 1e-12)
    return float(edges[i] + frac * (edges[i + 1] - edges[i]))


def _abs_p90(hist: np.ndarray, edges: np.ndarray) -> float:
    """90th percentile of |x| from a histogram over symmetric signed bins (bin upper edge; NaN when empty)."""
    half = len(hist) // 2
    folded = hist[half:] + hist[:half][::-1]
    total = folded.sum()
    if total <= 0:
        return math.nan
    i = int(np.searchsorted(np.cumsum(folded) / total, 0.9))
    return float(edges[half + i + 1])


@dataclass(frozen=True)
class DriftSignal:
    """One monitored signal: its histogram, the per-drive value compared, the ODD it is conditioned on."""

    name: str
    column: str  # histogram column of the summary table
    unit: str
    edges: np.ndarray
    drive_value: Callable[[np.ndarray, np.ndarray], float]  # (histogram, edges) -> one number per drive
    value_label: str
    condition: tuple[str, ...]  # ODD tags a bucket is made of
    threshold: float  # |log(new / reference)| above this is drift
    floor: float  # added before the log so near-zero values (a straight road's yaw) stay finite


SIGNALS: tuple[DriftSignal, ...] = (
    DriftSignal(
        "speed",
        "speed_kmh_hist",
        "km/h",
        np.arange(0.0, 202.0, 2.0),
        _median,
        "median moving speed",
        ("road_type",),
        threshold=0.3,
        floor=0.0,
    ),
    DriftSignal(
        "yaw_rate",
        "yaw_rate_dps_hist",
        "deg/s",
        np.arange(-40.0, 40.25, 0.25),
        _abs_p90,
        "p90 |yaw rate|",
        ("road_type",),
        threshold=1.5,
        floor=0.5,
    ),
    DriftSignal(
        "brightness",
        "brightness_hist",
        "luma",
        np.arange(0.0, 256.5, 0.5),
        _median,
        "median frame luma",
        ("time_of_day", "weather"),
        threshold=0.08,
        floor=1.0,
    ),
)
SIGNAL_BY_NAME = {s.name: s for s in SIGNALS}
MIN_REFERENCE_DRIVES = 2  # per bucket: one reference drive is no reference
MIN_COVERAGE = 0.5  # share of new drives that must fall in a compared bucket for a verdict

SUMMARY_SCHEMA = DRIVE_SIGNAL_SUMMARIES.schema  # the catalog record this module writes, one row per drive


def _hist(values: np.ndarray, edges: np.ndarray) -> list[int]:
    # Out-of-range values land in the end bins: a unit error must show up, not vanish.
    clipped = np.clip(values[np.isfinite(values)], edges[0], np.nextafter(edges[-1], edges[0]))
    return np.histogram(clipped, edges)[0].astype(np.int32).tolist()


def frame_brightness(camera_parquet: Path, max_frames: int = BRIGHTNESS_FRAMES) -> np.ndarray:
    """Mean luma (JPEG Y channel, 0-255) of up to ``max_frames`` evenly spaced frames of a decoded camera table."""
    pf = pq.ParquetFile(camera_parquet, pre_buffer=False)
    n = pf.metadata.num_rows
    if n == 0:
        return np.zeros(0)
    wanted = np.unique(np.linspace(0, n - 1, min(n, max_frames)).round().astype(np.int64))
    starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
    luma: list[float] = []
    for g in np.unique(np.searchsorted(starts, wanted, side="right") - 1):
        rows = wanted[(wanted >= starts[g]) & (wanted < starts[g + 1])] - starts[g]
        data = pf.read_row_group(int(g), columns=["data"]).column("data")
        luma += [y for r in rows if (y := _jpeg_luma(data[int(r)].as_py())) is not None]
    return np.asarray(luma)


def _jpeg_luma(frame: bytes) -> float | None:
    """Mean luma of a JPEG frame; None for frames that are not decodable JPEG (raw pixels, PNG, damaged)."""
    try:
        # Grayscale decoding returns the Y plane the JPEG already stores: no colour conversion needed.
        return float(simplejpeg.decode_jpeg(frame, colorspace="GRAY").mean())
    except ValueError:
        return None


def summarize_arrays(
    manifest: Mapping[str, Any], speed_kmh: np.ndarray, yaw_rate_dps: np.ndarray, luma: np.ndarray
) -> pa.Table:
    """The one-row summary of a drive from its per-frame speed/yaw rate and per-sampled-frame luma."""
    moving = np.nan_to_num(speed_kmh, nan=0.0) >= MOVING_KMH
    hists = {
        "speed_kmh_hist": _hist(speed_kmh[moving], SIGNAL_BY_NAME["speed"].edges),
        "yaw_rate_dps_hist": _hist(yaw_rate_dps[moving], SIGNAL_BY_NAME["yaw_rate"].edges),
        "brightness_hist": _hist(luma, SIGNAL_BY_NAME["brightness"].edges),
    }
    odd = manifest.get("odd", {})
    row: dict[str, Any] = {
        "drive_id": manifest["drive_id"],
        "market": manifest.get("market", ""),
        "start_time_ns": int(manifest.get("start_time_ns", 0)),
        **{tag: str(odd.get(tag, "unknown")) for tag in ODD_TAGS},
        "frames": len(speed_kmh),
        "brightness_frames": len(luma),
        **hists,
    }
    # Content fingerprint: re-syncing identical data is not a new drive for the drift check.
    digest = hashlib.sha256(repr(sorted(row.items())).encode()).hexdigest()
    return pa.Table.from_pylist([{**row, "fingerprint": digest}], schema=SUMMARY_SCHEMA)


def summarize_drive(frames_parquet: Path, camera_parquet: Path, manifest: Mapping[str, Any]) -> pa.Table:
    """Per-drive summary from the synced frames, the decoded front-camera table and the drive manifest."""
    names = pq.read_schema(frames_parquet).names
    columns = [c for c in (SPEED_COLUMN, YAW_COLUMN) if c in names]
    frames = pq.read_table(frames_parquet, columns=columns)

    def column(name: str) -> np.ndarray:
        if name not in frames.column_names:
            return np.full(frames.num_rows, np.nan)
        return frames.column(name).to_numpy(zero_copy_only=False).astype(np.float64)

    luma = frame_brightness(camera_parquet) if camera_parquet.is_file() else np.zeros(0)  # a drive without camera
    return summarize_arrays(manifest, column(SPEED_COLUMN), column(YAW_COLUMN), luma)


@dataclass
class BucketDrift:
    bucket: str
    reference_drives: int
    new_drives: int
    reference_value: float
    new_value: float
    log_shift: float


@dataclass
class SignalDrift:
    signal: str
    value_label: str
    unit: str
    condition: tuple[str, ...]
    threshold: float
    log_shift: float | None  # new-drive-weighted mean over compared buckets; None: nothing comparable
    coverage: float  # share of new drives in a compared bucket
    buckets: list[BucketDrift]
    skipped: dict[str, str]  # bucket -> why it was not compared
    reference_hist: np.ndarray  # pooled over compared buckets, each drive weighted equally (for the chart)
    new_hist: np.ndarray

    @property
    def drifted(self) -> bool:
        return self.log_shift is not None and self.coverage >= MIN_COVERAGE and abs(self.log_shift) > self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "statistic": None if self.log_shift is None else round(self.log_shift, 4),
            "shift_pct": None if self.log_shift is None else round(100 * math.expm1(self.log_shift), 1),
            "threshold": self.threshold,
            "coverage": round(self.coverage, 3),
            "drifted": self.drifted,
            "conditioned_on": list(self.condition),
            "buckets": [dict(vars(b)) for b in self.buckets],
            "skipped_buckets": self.skipped,
        }


@dataclass
class DriftResult:
    reference_drives: list[str]
    new_drives: list[str]
    signals: dict[str, SignalDrift] = field(default_factory=dict)

    @property
    def drifted(self) -> bool:
        return any(s.drifted for s in self.signals.values())

    @property
    def drifted_signals(self) -> list[str]:
        return [name for name, s in self.signals.items() if s.drifted]


def _bucket_key(row: Mapping[str, Any], condition: Sequence[str]) -> str:
    return "/".join(str(row[tag]) for tag in condition)


def _normalised(hist: Sequence[int]) -> np.ndarray:
    h = np.asarray(hist, dtype=np.float64)
    return h / h.sum() if h.sum() > 0 else h


def _compare_signal(signal: DriftSignal, reference: list[dict[str, Any]], new: list[dict[str, Any]]) -> SignalDrift:
    def valued(rows: list[dict[str, Any]]) -> dict[str, list[tuple[float, np.ndarray]]]:
        out: dict[str, list[tuple[float, np.ndarray]]] = {}
        for row in rows:
            hist = np.asarray(row[signal.column], dtype=np.float64)
            value = signal.drive_value(hist, signal.edges)
            if math.isfinite(value):  # a drive that never moved has no speed/yaw value
                out.setdefault(_bucket_key(row, signal.condition), []).append((value, _normalised(hist)))
        return out

    ref, cur = valued(reference), valued(new)
    buckets: list[BucketDrift] = []
    skipped: dict[str, str] = {}
    ref_hist, new_hist = np.zeros(len(signal.edges) - 1), np.zeros(len(signal.edges) - 1)
    for key in sorted(cur):
        if len(ref.get(key, [])) < MIN_REFERENCE_DRIVES:
            skipped[key] = f"{len(ref.get(key, []))} reference drive(s), need {MIN_REFERENCE_DRIVES}"
            continue
        # Median over drives: a drive is one draw of road, traffic and light, so drives (not frames) are the samples.
        r = float(np.median([v for v, _ in ref[key]]))
        c = float(np.median([v for v, _ in cur[key]]))
        shift = math.log((c + signal.floor) / (r + signal.floor)) if r + signal.floor > 0 else math.inf
        buckets.append(BucketDrift(key, len(ref[key]), len(cur[key]), round(r, 3), round(c, 3), round(shift, 4)))
        ref_hist += np.mean([h for _, h in ref[key]], axis=0) * len(cur[key])
        new_hist += np.sum([h for _, h in cur[key]], axis=0)
    weights = np.array([b.new_drives for b in buckets], dtype=np.float64)
    total_new = sum(len(v) for v in cur.values())
    return SignalDrift(
        signal=signal.name,
        value_label=signal.value_label,
        unit=signal.unit,
        condition=signal.condition,
        threshold=signal.threshold,
        log_shift=float(np.average([b.log_shift for b in buckets], weights=weights)) if buckets else None,
        coverage=float(weights.sum() / total_new) if total_new else 0.0,
        buckets=buckets,
        skipped=skipped,
        reference_hist=ref_hist / max(ref_hist.sum(), 1e-12),
        new_hist=new_hist / max(new_hist.sum(), 1e-12),
    )


def compare(reference: pa.Table, new: pa.Table, signals: Sequence[DriftSignal] = SIGNALS) -> DriftResult:
    """Compare the summaries of new drives with the reference summaries, signal by signal, ODD bucket by bucket."""
    ref_rows, new_rows = reference.to_pylist(), new.to_pylist()
    result = DriftResult([r["drive_id"] for r in ref_rows], [r["drive_id"] for r in new_rows])
    for signal in signals:
        result.signals[signal.name] = _compare_signal(signal, ref_rows, new_rows)
    return result


def _rebin(series: Sequence[np.ndarray], edges: np.ndarray, bins: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Coarser bins for display, cropped to the range where any series has data (same bins for all)."""
    nz = np.flatnonzero(np.sum(series, axis=0) > 0)
    lo, hi = (int(nz[0]), int(nz[-1]) + 1) if len(nz) else (0, len(edges) - 1)
    step = max(1, math.ceil((hi - lo) / bins))
    n = math.ceil((hi - lo) / step)
    out = [np.pad(h[lo:hi], (0, n * step - (hi - lo))).reshape(n, step).sum(axis=1) for h in series]
    return out, np.minimum(edges[lo] + (edges[1] - edges[0]) * step * np.arange(n + 1), edges[-1])


def drift_chart_md(result: DriftResult, bins: int = 12) -> str:
    """Markdown: per signal, the verdict, the per-bucket numbers and a reference-vs-new histogram bar chart."""
    parts = [f"Reference: {len(result.reference_drives)} drives · new: {len(result.new_drives)} drives", ""]
    for s in result.signals.values():
        verdict = "**DRIFT**" if s.drifted else "ok"
        shift = "n/a" if s.log_shift is None else f"{100 * math.expm1(s.log_shift):+.1f} %"
        parts += [
            f"### {s.signal} — {verdict}: {s.value_label} {shift} (limit ±{100 * math.expm1(s.threshold):.0f} %, "
            f"by {'/'.join(s.condition)}, coverage {100 * s.coverage:.0f} %)",
            "",
            f"| bucket | ref drives | new drives | ref {s.unit} | new {s.unit} | shift |",
            "|---|---|---|---|---|---|",
            *(
                f"| {b.bucket} | {b.reference_drives} | {b.new_drives} | {b.reference_value:.1f} | "
                f"{b.new_value:.1f} | {100 * math.expm1(b.log_shift):+.1f} % |"
                for b in s.buckets
            ),
            *(f"| {k} | skipped: {why} | | | | |" for k, why in s.skipped.items()),
            "",
        ]
        if s.buckets:
            (ref, new), edges = _rebin([s.reference_hist, s.new_hist], SIGNAL_BY_NAME[s.signal].edges, bins)
            parts += [f"| {s.unit} | reference | new |", "|---|---|---|"]
            parts += [
                f"| {edges[i]:.4g} to {edges[i + 1]:.4g} | `{'█' * round(20 * ref[i]):<20}` {100 * ref[i]:.0f} % "
                f"| `{'█' * round(20 * new[i]):<20}` {100 * new[i]:.0f} % |"
                for i in range(len(ref))
            ]
            parts.append("")
    return "\n".join(parts)


REFERENCE_RGB, NEW_RGB, OVERLAP_RGB = (70, 110, 200), (240, 140, 40), (120, 70, 120)


def drift_chart_png(result: DriftResult, width: int = 480, panel_height: int = 110, bins: int = 48) -> bytes:
    """A PNG with one panel per signal: reference (blue) and new (orange) histograms overlaid, overlap purple.

    Panels are framed red when that signal drifted. Labels are in the markdown chart (no font renderer here).
    """
    panels = []
    for s in result.signals.values():
        img = np.full((panel_height, width, 3), 255, dtype=np.uint8)
        (ref, new), _ = _rebin([s.reference_hist, s.new_hist], SIGNAL_BY_NAME[s.signal].edges, bins)
        top = max(float(ref.max(initial=0)), float(new.max(initial=0)), 1e-12)
        bar_w = max(1, (width - 8) // max(len(ref), 1))
        rows = np.arange(panel_height)[:, None]
        for i, (r, n) in enumerate(zip(ref, new, strict=True)):
            x0 = 4 + i * bar_w
            r_top, n_top = (panel_height - 4 - round((panel_height - 8) * v / top) for v in (r, n))
            col = img[:, x0 : x0 + bar_w - 1]
            in_ref, in_new = (rows >= r_top) & (rows < panel_height - 4), (rows >= n_top) & (rows < panel_height - 4)
            col[(in_ref & ~in_new)[:, 0]] = REFERENCE_RGB
            col[(in_new & ~in_ref)[:, 0]] = NEW_RGB
            col[(in_ref & in_new)[:, 0]] = OVERLAP_RGB
        frame = (220, 30, 30) if s.drifted else (160, 160, 160)
        img[[0, 1, -2, -1], :], img[:, [0, 1, -2, -1]] = frame, frame
        panels.append(img)
    return encode_png(np.concatenate(panels, axis=0) if panels else np.full((1, 1, 3), 255, dtype=np.uint8))


def encode_png(rgb: np.ndarray) -> bytes:
    """Minimal PNG encoder (8-bit RGB, no filtering) with zlib and struct: no imaging library needed."""
    height, width, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
