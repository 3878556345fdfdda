"""Per-drive sync statistics, accumulated window by window in constant memory."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

_SUB = 64  # buckets per octave: p99 is an upper bound within 1/64 (1.6 %) of the exact value


class AbsErrorHistogram:
    """Log-scale histogram of |sync error| (ns) for a constant-memory percentile: 64 buckets per power of two.

    Exact percentiles would need every frame's error in memory, which grows with drive length.
    """

    def __init__(self) -> None:
        self.counts = np.zeros(64 * _SUB + _SUB, dtype=np.int64)
        self.n = 0
        self.max = 0

    @staticmethod
    def _bucket(abs_err: np.ndarray) -> np.ndarray:
        m, e = np.frexp(abs_err.astype(np.float64))  # abs_err = m * 2**e, m in [0.5, 1)
        b = e.astype(np.int64) * _SUB + ((m - 0.5) * (2 * _SUB)).astype(np.int64)
        return np.where(abs_err == 0, 0, b)

    def add(self, abs_err: np.ndarray) -> None:
        if abs_err.size == 0:
            return
        self.counts += np.bincount(self._bucket(abs_err), minlength=self.counts.size)
        self.n += int(abs_err.size)
        self.max = max(self.max, int(abs_err.max()))

    def percentile(self, q: float) -> int | None:
        """Nearest-rank percentile, rounded up to its bucket's upper edge (never above the exact maximum)."""
        if self.n == 0:
            return None
        rank = max(1, math.ceil(q / 100.0 * self.n))
        b = int(np.searchsorted(np.cumsum(self.counts), rank))
        if b == 0:
            return 0
        e, k = divmod(b, _SUB)
        upper = math.floor((0.5 + (k + 1) / (2 * _SUB)) * 2.0**e)
        return min(upper, self.max)


@dataclass
class StreamSyncStats:
    name: str
    method: str
    causal: bool
    tolerance_ns: int
    rows_read: int = 0
    frames: int = 0
    no_sample: int = 0
    within_tolerance: int = 0
    max_abs_sync_error_ns: int | None = None
    p99_abs_sync_error_ns: int | None = None
    _hist: AbsErrorHistogram = field(default_factory=AbsErrorHistogram, repr=False, compare=False)

    @property
    def out_of_tolerance(self) -> int:
        """Frames with no sample or with |sync error| above tolerance."""
        return self.frames - self.within_tolerance

    @property
    def within_tolerance_ratio(self) -> float:
        return self.within_tolerance / self.frames if self.frames else 0.0

    def add(self, sync_error_ns: np.ndarray, has_sample: np.ndarray, within: np.ndarray) -> None:
        self.frames += int(sync_error_ns.size)
        n_has = int(np.count_nonzero(has_sample))
        self.no_sample += int(sync_error_ns.size) - n_has
        self.within_tolerance += int(np.count_nonzero(within))
        err = sync_error_ns if n_has == sync_error_ns.size else sync_error_ns[has_sample]
        self._hist.add(np.abs(err))

    def finish(self) -> None:
        if self._hist.n:
            self.max_abs_sync_error_ns = self._hist.max
            self.p99_abs_sync_error_ns = self._hist.percentile(99.0)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        d["out_of_tolerance"] = self.out_of_tolerance
        d["within_tolerance_ratio"] = self.within_tolerance_ratio
        return d


@dataclass
class SyncReport:
    """What ``sync_drive`` did: ``frames`` counts all reference frames, ``frames_written = frames - dropped``.

    Stream statistics cover all reference frames, dropped ones included (they say *why* frames were dropped).
    ``p99_abs_sync_error_ns`` is approximate (upper bound, within 1.6 %); the maximum is exact.
    """

    out_path: Path
    frames: int = 0
    frames_written: int = 0
    dropped: int = 0
    windows: int = 0
    seconds: float = 0.0
    first_timestamp_ns: int | None = None
    last_timestamp_ns: int | None = None
    streams: dict[str, StreamSyncStats] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, e.g. for Dagster output metadata."""
        return {
            "out_path": str(self.out_path),
            "frames": self.frames,
            "frames_written": self.frames_written,
            "dropped": self.dropped,
            "windows": self.windows,
            "seconds": self.seconds,
            "first_timestamp_ns": self.first_timestamp_ns,
            "last_timestamp_ns": self.last_timestamp_ns,
            "streams": {name: s.to_dict() for name, s in self.streams.items()},
        }
