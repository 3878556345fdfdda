"""Windowed, bounded-memory sync of one drive's decoded streams onto the front camera's frames.

Memory design (docs/sync.md): the reference timestamps are read in batches and cut into time windows of
``window_ns``. Each stream is a forward-only cursor over its Parquet file (``iter_batches``; row groups wholly
before the first frame are skipped using the ``timestamp_ns`` statistics). For a window ``[t_first, t_last]``
a stream hands over exactly the rows from its last sample ``<= t_first`` up to the end of the duplicate run
of its first sample ``> t_last``: every frame's neighbours lie in that slice and duplicates resolve the same
way, so a windowed run is bit-identical to a whole-drive run. Rows before the slice are then discarded (the
next window starts later), so what is held is one window plus one read batch per stream, whatever the drive
length.
Output rows are buffered to ``output_row_group_rows`` and written as one Parquet row group at a time.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc  # imported here, not lazily inside the first window's take()
import pyarrow.parquet as pq

from ad_common.atomic import atomic_file
from ad_common.memory import release_memory
from ad_core.sync.config import TIMESTAMP_COLUMN, GridReference, ReferenceSpec, StreamSpec, SyncConfig
from ad_core.sync.core import interpolate, match_samples
from ad_core.sync.report import StreamSyncStats, SyncReport

_log = logging.getLogger(__name__)
_EMPTY_TS = np.empty(0, dtype=np.int64)
READ_BATCH_BYTES = 16 * 2**20
MIN_BATCH_ROWS = 1024


class _Logger(Protocol):
    def info(self, msg: str) -> Any: ...


def _ts_numpy(arr: pa.Array, offset_ns: int, what: str) -> np.ndarray:
    if arr.null_count:
        raise ValueError(f"{what}: null {TIMESTAMP_COLUMN}")
    if not pa.types.is_int64(arr.type):
        arr = arr.cast(pa.int64())  # also accepts timestamp[ns]
    ts = arr.to_numpy(zero_copy_only=False)
    return ts - np.int64(offset_ns) if offset_ns else ts


def _check_order(ts: np.ndarray, last: int | None, what: str) -> None:
    if ts.size and ((last is not None and ts[0] < last) or (ts.size > 1 and bool(np.any(ts[1:] < ts[:-1])))):
        raise ValueError(f"{what}: {TIMESTAMP_COLUMN} is not sorted ascending")


def _table_timestamps(spec: ReferenceSpec, batch_rows: int) -> Iterator[np.ndarray]:
    pf = pq.ParquetFile(spec.path, pre_buffer=False)
    if TIMESTAMP_COLUMN not in pf.schema_arrow.names:
        raise ValueError(f"reference {spec.path}: no {TIMESTAMP_COLUMN} column")
    for batch in pf.iter_batches(batch_size=batch_rows, columns=[TIMESTAMP_COLUMN]):
        yield _ts_numpy(batch.column(0), spec.clock_offset_ns, f"reference {spec.path}")


def _grid_timestamps(grid: GridReference, batch_rows: int) -> Iterator[np.ndarray]:
    step = np.int64(grid.period_ns)
    for first in range(0, grid.frames, batch_rows):
        count = min(batch_rows, grid.frames - first)
        yield np.int64(grid.first_ns) + step * np.arange(first, first + count, dtype=np.int64)


class _ReferenceReader:
    """Reads the reference timestamps in batches and yields ``(first_frame_index, ts)`` per time window."""

    def __init__(self, spec: ReferenceSpec | GridReference, batch_rows: int) -> None:
        if isinstance(spec, GridReference):
            self._what = f"reference grid {spec.name}"
            self._batches = _grid_timestamps(spec, batch_rows)
        else:
            self._what = f"reference {spec.path}"
            self._batches = _table_timestamps(spec, batch_rows)
        self._ts = _EMPTY_TS
        self._base = 0  # frame index of self._ts[0]
        self._last: int | None = None
        self._eof = False

    def _read(self) -> None:
        ts = next(self._batches, None)
        if ts is None:
            self._eof = True
            return
        _check_order(ts, self._last, self._what)
        if ts.size:
            self._last = int(ts[-1])
            self._ts = np.concatenate([self._ts, ts]) if self._ts.size else ts

    def windows(self, window_ns: int) -> Iterator[tuple[int, np.ndarray]]:
        end: int | None = None
        while True:
            while not self._ts.size and not self._eof:
                self._read()
            if not self._ts.size:
                return
            if end is None or self._ts[0] >= end:
                end = int(self._ts[0]) + window_ns  # windows are anchored on frames: long gaps are skipped
            while not self._eof and self._ts[-1] < end:
                self._read()
            j = int(np.searchsorted(self._ts, end, side="left"))
            yield self._base, self._ts[:j]
            self._ts = self._ts[j:]
            self._base += j
            end += window_ns


class _StreamCursor:
    """Forward-only view of one stream's rows, handing out exactly the slice each window needs."""

    def __init__(self, spec: StreamSpec, batch_rows: int, first_ref_ts: int) -> None:
        self.spec = spec
        pf = pq.ParquetFile(spec.path, pre_buffer=False)
        schema = pf.schema_arrow
        missing = [c for c in (TIMESTAMP_COLUMN, *spec.columns) if c not in schema.names]
        if missing:
            raise ValueError(f"stream {spec.name!r} ({spec.path}): missing columns {missing}")
        self.linear = spec.method == "linear"
        for c in spec.columns:
            t = schema.field(c).type
            if self.linear and not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
                raise ValueError(f"stream {spec.name!r}: linear needs numeric columns, {c!r} is {t}")
        self.out_types = [pa.float64() if self.linear else schema.field(c).type for c in spec.columns]
        read_cols = [TIMESTAMP_COLUMN, *(c for c in spec.columns if c != TIMESTAMP_COLUMN)]

        start_rg, self._base = self._first_row_group(pf, first_ref_ts)
        # a wide stream (hundreds of 1 kHz channels) reads fewer rows at a time: the batch stays ~16 MiB
        width_rows = max(MIN_BATCH_ROWS, READ_BATCH_BYTES // (8 * (1 + len(spec.columns))))
        self._batches = pf.iter_batches(
            batch_size=min(batch_rows, width_rows), columns=read_cols, row_groups=range(start_rg, pf.num_row_groups)
        )
        self._ts = _EMPTY_TS
        self._cols: list[Any] = [
            np.empty(0, np.float64) if self.linear else pa.array([], type=t) for t in self.out_types
        ]
        self._pending: list[tuple[np.ndarray, list[Any]]] = []  # batches read, not yet merged into the buffer
        self._last: int | None = None  # the last timestamp read
        self._eof = False
        self.rows_read = 0

    def _first_row_group(self, pf: pq.ParquetFile, t0: int) -> tuple[int, int]:
        """Last row group whose first timestamp is <= t0 (it holds the sample before the first frame)."""
        md = pf.metadata
        if md.num_row_groups == 0:
            return 0, 0
        rg0 = md.row_group(0)
        idx = next((i for i in range(rg0.num_columns) if rg0.column(i).path_in_schema == TIMESTAMP_COLUMN), None)
        start, rows_before, rows = 0, 0, 0
        for g in range(md.num_row_groups):
            st = md.row_group(g).column(idx).statistics if idx is not None else None
            if st is None or not st.has_min_max or not isinstance(st.min, int):
                break  # without statistics start no later than here: reading extra rows is always safe
            if st.min - self.spec.clock_offset_ns > t0:
                break
            start, rows_before = g, rows
            rows += md.row_group(g).num_rows
        return start, rows_before

    def _read(self) -> None:
        batch = next(self._batches, None)
        if batch is None:
            self._eof = True
            return
        what = f"stream {self.spec.name!r} ({self.spec.path})"
        ts = _ts_numpy(batch.column(TIMESTAMP_COLUMN), self.spec.clock_offset_ns, what)
        _check_order(ts, self._last, what)
        if not ts.size:
            return
        self._last = int(ts[-1])
        self.rows_read += ts.size
        cols = []
        for c in self.spec.columns:
            new = batch.column(c)
            if self.linear:
                # Nulls become NaN, so interpolation across a null yields NaN rather than a made-up value. Float
                # columns keep their width: interpolate() widens only the samples it uses.
                wide = new if pa.types.is_floating(new.type) else new.cast(pa.float64())
                cols.append(wide.to_numpy(zero_copy_only=False))
            else:
                cols.append(new)
        self._pending.append((ts, cols))

    def _merge(self) -> None:
        """Append the batches read since the last merge to the buffer, in one copy."""
        if not self._pending:
            return
        parts = [(self._ts, self._cols)] if self._ts.size else []
        parts += self._pending
        self._pending = []
        if len(parts) == 1:
            self._ts, self._cols = parts[0]
            return
        self._ts = np.concatenate([ts for ts, _cols in parts])
        join = np.concatenate if self.linear else pa.concat_arrays
        self._cols = [join([cols[k] for _ts, cols in parts]) for k in range(len(self.spec.columns))]

    def _trim(self, t_first: int) -> None:
        """Drop rows before the last sample <= t_first: no later window can use them (windows move forward)."""
        start = int(np.searchsorted(self._ts, t_first, side="right")) - 1
        if start > 0:
            self._ts = self._ts[start:]
            self._cols = [c[start:] for c in self._cols]
            self._base += start

    def window(self, t_first: int, t_last: int) -> tuple[np.ndarray, list[Any], int]:
        """Rows needed by frames in ``[t_first, t_last]``: ``(ts, columns, global row index of ts[0])``."""
        self._trim(t_first)
        while not self._eof and (self._last is None or self._last <= t_last):
            self._read()
            if self._last is not None and self._last <= t_first:
                # a stream that starts long before the drive never piles up in the buffer
                self._merge()
                self._trim(t_first)
        self._merge()
        self._trim(t_first)
        j = int(np.searchsorted(self._ts, t_last, side="right"))  # first sample after the window
        if j < self._ts.size:
            t_next = self._ts[j]
            while not self._eof and self._last == t_next:  # complete its duplicate run (last row wins)
                self._read()
            self._merge()
            end = int(np.searchsorted(self._ts, t_next, side="right"))
        else:
            end = self._ts.size
        return self._ts[:end], [c[:end] for c in self._cols], self._base


def _output_schema(cursors: list[_StreamCursor]) -> pa.Schema:
    fields = [
        pa.field("timestamp_ns", pa.int64(), nullable=False),
        pa.field("frame_index", pa.int64(), False),
    ]
    for cur in cursors:
        s = cur.spec
        fields += [pa.field(f"{s.name}.{c}", t) for c, t in zip(s.columns, cur.out_types, strict=True)]
        if s.row_index:
            fields.append(pa.field(f"{s.name}.row_index", pa.int64()))
        fields += [
            pa.field(f"{s.name}.sync_error_ns", pa.int64()),
            pa.field(f"{s.name}.in_tolerance", pa.bool_()),
        ]
    names = [f.name for f in fields]
    if len(set(names)) != len(names):
        raise ValueError(f"output column names collide: {names}")
    return pa.schema(fields)


def _sync_window(
    ref_ts: np.ndarray, frame0: int, cursors: list[_StreamCursor], stats: list[StreamSyncStats], drop: bool
) -> tuple[list[pa.Array], int]:
    n = ref_ts.size
    arrays: list[pa.Array] = [pa.array(ref_ts), pa.array(np.arange(frame0, frame0 + n, dtype=np.int64))]
    keep = np.ones(n, dtype=bool) if drop else None
    t_first, t_last = int(ref_ts[0]), int(ref_ts[-1])
    for cur, st in zip(cursors, stats, strict=True):
        spec = cur.spec
        ts, cols, row0 = cur.window(t_first, t_last)
        m = match_samples(ref_ts, ts, spec.method, spec.causal, check_sorted=False)  # checked on read
        within = m.within_tolerance(spec.tolerance_ns)
        st.add(m.sync_error_ns, m.has_sample, within)
        all_have = bool(m.has_sample.all())
        null_mask = None if all_have else ~m.has_sample
        if cur.linear:
            arrays += [pa.array(interpolate(m, c), mask=null_mask) for c in cols]
        else:
            idx = pa.array(m.lo, mask=null_mask)  # null index -> null value
            arrays += [pc.take(c, idx) for c in cols]
        if spec.row_index:
            arrays.append(pa.array(m.lo + row0, mask=null_mask))
        arrays += [pa.array(m.sync_error_ns, mask=null_mask), pa.array(within)]
        if keep is not None:
            keep &= within
    if keep is not None and not keep.all():
        sel = pa.array(keep)
        arrays = [a.filter(sel) for a in arrays]
        return arrays, int(np.count_nonzero(keep))
    return arrays, n


def _table(schema: pa.Schema, windows: list[list[pa.Array]]) -> pa.Table:
    cols = [pa.chunked_array([w[i] for w in windows], type=f.type) for i, f in enumerate(schema)]
    return pa.Table.from_arrays(cols, schema=schema)


class _BackgroundWriter:
    """Encodes row groups on a second thread (Parquet encoding releases the GIL) while windows are synced.

    The queue holds one table, so at most three row groups are alive: being encoded, queued, accumulating.
    """

    def __init__(self, writer: pq.ParquetWriter) -> None:
        self._writer = writer
        self._queue: queue.Queue[pa.Table | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sync-parquet-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (table := self._queue.get()) is not None:
            if self._error is None:  # after a failure keep draining so put() never blocks forever
                try:
                    self._writer.write_table(table, row_group_size=table.num_rows)
                except BaseException as exc:
                    self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, table: pa.Table) -> None:
        self._raise()
        self._queue.put(table)

    def finish(self) -> None:
        """Wait for every queued row group to be written; re-raise a writer failure."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._writer.close()


def sync_drive(config: SyncConfig, out_path: Path, *, log: _Logger | None = None) -> SyncReport:
    """Sync every stream of ``config`` onto the reference frames and write the frames table to ``out_path``.

    The Parquet file is written row group by row group into a temporary sibling and renamed into place at the
    end, so readers never see a partial table.
    """
    log = log or _log
    t_start = time.perf_counter()
    out_path = Path(out_path)
    report = SyncReport(out_path=out_path)
    ref = _ReferenceReader(config.ref, config.read_batch_rows)
    windows = ref.windows(config.window_ns)
    first = next(windows, None)
    first_ts = int(first[1][0]) if first is not None else 0
    cursors = [_StreamCursor(s, config.read_batch_rows, first_ts) for s in config.streams]
    stats = [StreamSyncStats(s.name, s.method, s.causal, s.tolerance_ns) for s in config.streams]
    schema = _output_schema(cursors)
    # Dictionaries pay off for discrete values (gear, states, strings) only; they slow float columns (field
    # notes) and are wasted on 64-bit ids/timestamps, which overflow the dictionary page and fall back anyway.
    dict_cols = [
        f"{cur.spec.name}.{c}"
        for cur in cursors
        if not cur.linear
        for c, t in zip(cur.spec.columns, cur.out_types, strict=True)
        if not (pa.types.is_floating(t) or pa.types.is_temporal(t) or (pa.types.is_integer(t) and t.bit_width == 64))
    ]

    with atomic_file(out_path) as tmp:
        writer = _BackgroundWriter(
            pq.ParquetWriter(tmp, schema, compression=config.compression, use_dictionary=dict_cols or False)
        )
        try:
            pending: list[list[pa.Array]] = []
            pending_rows = 0
            win = first
            while win is not None:
                frame0, ref_ts = win
                if report.first_timestamp_ns is None:
                    report.first_timestamp_ns = int(ref_ts[0])
                report.last_timestamp_ns = int(ref_ts[-1])
                arrays, kept = _sync_window(ref_ts, frame0, cursors, stats, config.drop_out_of_tolerance)
                report.frames += ref_ts.size
                report.windows += 1
                if kept:
                    pending.append(arrays)
                    pending_rows += kept
                    report.frames_written += kept
                if pending_rows >= config.output_row_group_rows:
                    writer.put(_table(schema, pending))
                    pending, pending_rows = [], 0
                win = next(windows, None)
            if pending_rows:
                writer.put(_table(schema, pending))
            writer.finish()
        finally:
            writer.close()
            release_memory()

    report.dropped = report.frames - report.frames_written
    for cur, st in zip(cursors, stats, strict=True):
        st.rows_read = cur.rows_read
        st.finish()
        report.streams[st.name] = st
    report.seconds = time.perf_counter() - t_start
    # Pre-formatted: Dagster's context.log and logging.Logger both accept a plain message. One message, not one
    # per stream: each is an event-log write (~10 ms on the embedded SQLite instance), and drives have hundreds.
    per_stream = "".join(
        f"\n  {st.name}: {st.within_tolerance_ratio:.4f} within {st.tolerance_ns} ns, "
        f"{st.no_sample} without sample, max |err| {st.max_abs_sync_error_ns} ns, p99 {st.p99_abs_sync_error_ns} ns"
        for st in report.streams.values()
    )
    log.info(
        f"synced {report.frames} frames ({report.frames_written} written, {report.dropped} dropped) from "
        f"{len(cursors)} streams in {report.seconds:.2f} s -> {out_path}{per_stream}"
    )
    return report
