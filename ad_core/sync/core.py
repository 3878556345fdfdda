"""Pure, vectorised matching of one sensor stream onto reference (camera frame) timestamps.

Everything here works on in-memory numpy arrays and is free of I/O; ``sync_drive`` feeds it one time window
at a time. The rules (see docs/sync.md):

* Duplicate stream timestamps: the *last* row of a run of equal timestamps wins (later rows are
  re-transmissions / corrections); the other rows of the run are never used.
* ``previous``: last sample with ``ts <= t``. Frames before the first sample have no sample.
* ``nearest``: the closer of the samples just before/after ``t``; a tie goes to the earlier sample.
* ``linear``: a sample at exactly ``t`` is used as is; otherwise the two neighbours ``lo < t < hi`` are
  interpolated. Outside the stream's span there is no second neighbour, so the edge sample is held (never
  extrapolated) and its distance reported as sync error, which the tolerance then judges.
* ``causal=True``: no sample with ``ts > t`` is ever used, so ``nearest`` and ``linear`` degrade to
  ``previous`` (sample-and-hold).

Sync error is ``t - ts_used`` (signed, ns). For an interpolated frame it is the offset to the *farther* of
the two neighbours (so a long gap between samples is flagged even when the frame sits next to one of them):
``t - ts_lo`` when that is the larger distance, else ``t - ts_hi`` (negative). A frame is within tolerance
when it has a sample and ``|sync_error| <= tolerance_ns``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

Method = Literal["linear", "previous", "nearest"]
METHODS: tuple[str, ...] = ("linear", "previous", "nearest")

#: ``sync_error_ns`` of a frame for which the stream has no usable sample (empty stream, or a
#: previous/causal match before the stream's first sample).
NO_SAMPLE_NS: int = int(np.iinfo(np.int64).min)


@dataclass(frozen=True, slots=True)
class SampleMatch:
    """Which stream rows each reference frame uses.

    ``lo``/``hi`` index the stream arrays as given (duplicates resolved to the last row of their run);
    ``hi == lo`` and ``weight == 0`` unless the frame is interpolated. Rows where ``has_sample`` is False
    carry ``lo == hi == 0`` and ``sync_error_ns == NO_SAMPLE_NS``; their indices must not be used.
    """

    lo: np.ndarray  # int64
    hi: np.ndarray  # int64
    weight: np.ndarray | None  # float64 in [0, 1) for linear, None otherwise
    sync_error_ns: np.ndarray  # int64
    has_sample: np.ndarray  # bool

    def within_tolerance(self, tolerance_ns: int) -> np.ndarray:
        # NO_SAMPLE_NS is excluded explicitly: abs(int64 min) overflows back to a negative number.
        return self.has_sample & (np.abs(self.sync_error_ns) <= tolerance_ns)


def _check_sorted(ts: np.ndarray, what: str) -> None:
    if ts.size > 1 and bool(np.any(ts[1:] < ts[:-1])):
        raise ValueError(f"{what} timestamps are not sorted ascending")


def match_samples(
    ref_ts: np.ndarray,
    stream_ts: np.ndarray,
    method: Method,
    causal: bool = False,
    *,
    check_sorted: bool = True,
) -> SampleMatch:
    """Match each reference timestamp to the stream row(s) it uses. Both inputs int64 ns, sorted ascending."""
    if method not in METHODS:
        raise ValueError(f"unknown sync method {method!r}; expected one of {METHODS}")
    ref_ts = np.asarray(ref_ts, dtype=np.int64)
    stream_ts = np.asarray(stream_ts, dtype=np.int64)
    if check_sorted:
        _check_sorted(stream_ts, "stream")
    n_ref, n = ref_ts.size, stream_ts.size
    if n == 0:
        zeros = np.zeros(n_ref, dtype=np.int64)
        return SampleMatch(zeros, zeros, None, np.full(n_ref, NO_SAMPLE_NS, np.int64), np.zeros(n_ref, dtype=bool))

    # Resolve duplicates to the last row of each run, working on the unique timestamps and mapping back.
    keep_pos: np.ndarray | None = None
    uts = stream_ts
    if n > 1:
        is_last = np.empty(n, dtype=bool)
        np.not_equal(stream_ts[1:], stream_ts[:-1], out=is_last[:-1])
        is_last[-1] = True
        if not is_last.all():
            keep_pos = np.flatnonzero(is_last)
            uts = stream_ts[keep_pos]
    nu = uts.size

    prev = np.searchsorted(uts, ref_ts, side="right") - 1  # last sample <= t, -1 if none
    weight: np.ndarray | None = None
    if method == "previous" or causal:
        has = prev >= 0
        lo = np.maximum(prev, 0)
        hi = lo
        err = ref_ts - uts[lo]
    elif method == "nearest":
        nxt = np.minimum(prev + 1, nu - 1)
        lo_c = np.maximum(prev, 0)
        d_prev = ref_ts - uts[lo_c]  # >= 0 unless the frame precedes the stream
        d_next = uts[nxt] - ref_ts  # >= 0 unless the frame follows the stream
        use_prev = (prev >= 0) & ((d_prev <= d_next) | (prev + 1 >= nu))
        lo = np.where(use_prev, lo_c, nxt)
        hi = lo
        has = np.ones(n_ref, dtype=bool)
        err = ref_ts - uts[lo]
    else:  # linear, non-causal
        lo = np.clip(prev, 0, nu - 1)
        hi = np.minimum(prev + 1, nu - 1)
        t_lo = uts[lo]
        exact_or_edge = (t_lo == ref_ts) | (prev < 0)
        hi = np.where(exact_or_edge, lo, hi)
        t_hi = uts[hi]
        d_lo = ref_ts - t_lo
        d_hi = t_hi - ref_ts
        span = t_hi - t_lo
        interp = span > 0
        # int64 -> float64 is exact below 2**53 ns (104 days), far above any sample gap.
        weight = np.zeros(n_ref, dtype=np.float64)
        np.divide(d_lo, span, out=weight, where=interp)
        # Edge hold (lo == hi): plain offset to the held sample; interpolated: offset to the farther one.
        err = np.where(interp & (d_hi > d_lo), -d_hi, d_lo)
        has = np.ones(n_ref, dtype=bool)

    # weight is None <=> one sample per frame (previous, nearest, causal): hi is lo.
    lo = lo.astype(np.int64, copy=False)
    if keep_pos is not None:
        lo = keep_pos[lo]
        if weight is not None:
            hi = keep_pos[hi]
    if not has.all():  # only previous/causal can lack a sample once the stream is non-empty
        err = np.where(has, err, NO_SAMPLE_NS)
        lo = np.where(has, lo, 0)
    if weight is None:
        hi = lo
    return SampleMatch(lo, hi.astype(np.int64, copy=False), weight, err.astype(np.int64, copy=False), has)


def interpolate(match: SampleMatch, values: np.ndarray) -> np.ndarray:
    """Apply a linear match to one numeric column (result float64; NaN where there is no sample)."""
    v = np.asarray(values)
    if v.size == 0:
        return np.full(match.lo.size, np.nan)
    # gathered, then widened: only the samples the frames use are converted (a 1 kHz float32 stream is
    # mostly read, not used); the same values as widening first
    v_lo = v[match.lo].astype(np.float64, copy=False)
    if match.weight is not None:
        # v_lo + (v_hi - v_lo) * w is exact at w == 0, so held/exact samples come back bit-identical.
        v_lo = v_lo + (v[match.hi].astype(np.float64, copy=False) - v_lo) * match.weight
    if not match.has_sample.all():
        v_lo[~match.has_sample] = np.nan
    return v_lo


def gather(match: SampleMatch, values: np.ndarray) -> np.ndarray:
    """Apply a previous/nearest match to one column of any dtype.

    Frames without a sample get NaN for floating columns and the dtype's zero otherwise: use
    ``sync_error_ns == NO_SAMPLE_NS`` (or the in-tolerance flag) as the mask.
    """
    v = np.asarray(values)
    if v.size == 0:
        return np.full(match.lo.size, np.nan) if v.dtype.kind == "f" else np.zeros(match.lo.size, v.dtype)
    out = v[match.lo]
    if not match.has_sample.all():
        out[~match.has_sample] = np.nan if out.dtype.kind in "fc" else np.zeros((), out.dtype)
    return out


def sync_arrays(
    ref_ts: np.ndarray,
    stream_ts: np.ndarray,
    values: Mapping[str, np.ndarray],
    method: Method,
    tolerance_ns: int,
    causal: bool = False,
    *,
    clock_offset_ns: int = 0,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Sync one stream onto the reference timestamps.

    Returns ``(columns, sync_error_ns, within_tolerance)``: ``columns`` has one array per entry of ``values``
    (float64 for ``linear``, the input dtype otherwise), ``sync_error_ns`` is int64 with ``NO_SAMPLE_NS``
    where the stream has no usable sample. ``clock_offset_ns`` is subtracted from ``stream_ts`` first.
    """
    if tolerance_ns < 0:
        raise ValueError("tolerance_ns must be >= 0")
    st = np.asarray(stream_ts, dtype=np.int64)
    if clock_offset_ns:
        st = st - np.int64(clock_offset_ns)
    for name, col in values.items():
        if len(col) != st.size:
            raise ValueError(f"column {name!r} has {len(col)} rows, timestamps have {st.size}")
    match = match_samples(ref_ts, st, method, causal)
    # Linear stays float64 even when causal (hold), so a column's dtype never depends on the causal switch.
    apply = interpolate if method == "linear" else gather
    cols = {name: apply(match, col) for name, col in values.items()}
    return cols, match.sync_error_ns, match.within_tolerance(tolerance_ns)
