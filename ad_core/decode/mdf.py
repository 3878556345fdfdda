"""MDF (3.x / 4.x) channel groups -> Parquet, fragment by fragment.

asammdf's high-level ``select`` / ``to_dataframe`` / ``export`` hold whole files in private memory. Here each
channel group's record data is read in 4 MiB fragments (asammdf's internal fragment iterator, which handles
DZ compression, data lists, unsorted and unfinalised files), and every fragment is turned into one Arrow
record batch:

* plain byte-aligned numeric channels: a strided numpy view into the fragment + asammdf's vectorised
  conversion (checked once per channel against ``MDF4.get`` on the first fragment),
* everything else (bit fields, arrays, strings, VLSD, invalidation bits, text conversions):
  ``MDF4.get(group, index, data=fragment)``.

Raw CAN bus-logging groups (``CAN_DataFrame``) are decoded with the DBCs (see ``can.py``). Uses private
asammdf methods (``_load_data``, ``_prepare_record``): asammdf is pinned (8.8.28) in pyproject.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .can import CanDecoder
from .errors import describe_mdf_error
from .parquet_out import SinkManager, StreamSink, snake
from .report import DecodeError, StreamReport

FRAGMENT_BYTES = 4 * 2**20
# asammdf (with pandas, sympy, canmatrix) takes ~1 s to import: it is imported on first use, in the MDF thread,
# so an MCAP decoding alongside does not wait for it
v4c: Any = None
_LINEAR_CONVERSIONS: set[int] = set()


def _asammdf() -> Any:
    """Import asammdf on first use; binds the module-level ``v4c`` constants. Returns the ``MDF`` class."""
    global v4c, _LINEAR_CONVERSIONS
    from asammdf import MDF
    from asammdf.blocks import v4_constants

    if v4c is None:
        _LINEAR_CONVERSIONS = {v4_constants.CONVERSION_TYPE_NON, v4_constants.CONVERSION_TYPE_LIN}
        v4c = v4_constants
    return MDF


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """asammdf has stray debug prints in its read path: keep them off our JSON stdout."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _start_ns(mdf: Any) -> int:
    hdr = mdf.header
    abs_time = getattr(hdr, "abs_time", None)
    if isinstance(abs_time, int) and abs_time > 0:
        return int(abs_time)
    st = mdf.start_time
    if st.tzinfo is None:
        from datetime import UTC

        st = st.replace(tzinfo=UTC)
    return int(st.timestamp()) * 1_000_000_000 + st.microsecond * 1000


def _to_ns(start_ns: int, t: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Relative master seconds -> absolute epoch ns; the mask (or None) keeps only representable times."""
    ns = t * 1e9
    ok = np.isfinite(ns) & (np.abs(ns) < 9.0e18 - abs(start_ns))
    if ok.all():
        return start_ns + np.round(ns).astype(np.int64), None
    out = np.zeros(len(t), dtype=np.int64)
    out[ok] = start_ns + np.round(ns[ok]).astype(np.int64)
    return out, ok


def _group_name(group: Any, index: int) -> str:
    cg = group.channel_group
    for cand in (
        getattr(cg, "acq_name", "") or "",
        getattr(getattr(cg, "acq_source", None), "name", "") or "",
        getattr(cg, "comment", "") or "",
    ):
        cand = str(cand).strip()
        if cand and not cand.startswith("<"):
            return snake(cand)[:80]
    return f"group{index}"


def _to_arrow(samples: np.ndarray, invalid: np.ndarray | None, text: bool) -> pa.Array | None:
    """numpy samples of one channel fragment -> Arrow column; None when the channel is not tabular."""
    mask = None if invalid is None else np.asarray(invalid, dtype=bool)
    if mask is not None and not mask.any():
        mask = None
    dt = samples.dtype
    if dt.names:  # composite (structure) channel: its members are separate channels
        return None
    if samples.ndim > 1:
        inner = _to_arrow(np.ascontiguousarray(samples).reshape(-1), None, False)
        if inner is None:
            return None
        width = int(np.prod(samples.shape[1:]))
        arr = pa.FixedSizeListArray.from_arrays(inner, width)
        if mask is not None:
            arr = pa.FixedSizeListArray.from_arrays(inner, width, mask=pa.array(mask))
        return arr
    if dt.kind in "uifb":
        return pa.array(samples, mask=mask)
    if dt.kind == "S" or dt.kind == "V":
        vals = [bytes(x) for x in samples.tolist()] if dt.kind == "V" else samples.tolist()
        if text or dt.kind == "S":
            try:
                return pa.array([v.rstrip(b"\x00").decode("utf-8") for v in vals], mask=mask)
            except UnicodeDecodeError:
                return pa.array([v.rstrip(b"\x00").decode("latin-1") for v in vals], mask=mask)
        return pa.array(vals, type=pa.binary(), mask=mask)
    if dt.kind == "U":
        return pa.array(samples.tolist(), type=pa.string(), mask=mask)
    if dt.kind == "O":
        vals = samples.tolist()
        if all(isinstance(v, bytes | bytearray) for v in vals):
            try:
                return pa.array([bytes(v).rstrip(b"\x00").decode("utf-8") for v in vals], mask=mask)
            except UnicodeDecodeError:
                return pa.array([bytes(v) for v in vals], type=pa.binary(), mask=mask)
        try:
            return pa.array(vals, mask=mask)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return pa.array([str(v) for v in vals], mask=mask)
    if dt.kind in "mM":
        return pa.array(samples.astype("datetime64[ns]").astype(np.int64), mask=mask)
    return None


class _Channel:
    __slots__ = ("column", "conversion", "dtype", "fast", "index", "offset", "unit")

    def __init__(self, index: int, column: str, unit: str) -> None:
        self.index = index
        self.column = column
        self.unit = unit
        self.fast = False
        self.dtype: np.dtype[Any] | None = None
        self.offset = 0
        self.conversion: Any = None


def _plan_group(inner: Any, gi: int, group: Any) -> tuple[list[_Channel], int]:
    master_index = inner.masters_db.get(gi)
    is_v4 = str(getattr(inner, "version", "4")).startswith("4")
    record = inner._prepare_record(group) if hasattr(inner, "_prepare_record") else None
    cg = group.channel_group
    rec_size = cg.samples_byte_nr + (getattr(cg, "invalidation_bytes_nr", 0) if is_v4 else 0)
    used: set[str] = {"timestamp_ns"}
    plan = []
    for ci, ch in enumerate(group.channels):
        if ci == master_index:
            continue
        name = ch.name or f"channel{ci}"
        col, n = name, 2
        while col in used:
            col, n = f"{name}_{n}", n + 1
        used.add(col)
        conv = ch.conversion
        unit = (conv.unit if conv is not None and getattr(conv, "unit", "") else "") or (ch.unit or "")
        c = _Channel(ci, col, unit)
        if (
            is_v4
            and record is not None
            and ci < len(record)
            and record[ci] is not None
            and getattr(ch, "standard_C_size", False)
            and ch.channel_type == v4c.CHANNEL_TYPE_VALUE
            and not (ch.flags & v4c.FLAG_CN_INVALIDATION_PRESENT)
            and not group.channel_dependencies[ci]
            and (conv is None or conv.conversion_type in _LINEAR_CONVERSIONS)
            and not group.uses_ld
        ):
            dtype, size, offset, bit_offset = record[ci]
            if dtype.kind in "uif" and bit_offset == 0 and offset + size <= rec_size:
                c.fast, c.dtype, c.offset, c.conversion = True, dtype, offset, conv
        plan.append(c)
    return plan, rec_size


_NATIVE = ("=", "|", "<" if sys.byteorder == "little" else ">")


def _side_by_side(plan: list[_Channel]) -> list[list[_Channel]]:
    """The plain channels in runs that sit side by side in the record with one native dtype."""
    runs: list[list[_Channel]] = []
    for c in sorted((c for c in plan if c.fast), key=lambda c: c.offset):
        assert c.dtype is not None
        last = runs[-1][-1] if runs else None
        if (
            last is not None
            and c.dtype == last.dtype
            and c.dtype.byteorder in _NATIVE
            and c.offset == last.offset + c.dtype.itemsize
        ):
            runs[-1].append(c)
        else:
            runs.append([c])
    return runs


def _raw_columns(runs: list[list[_Channel]], data: bytes, n: int, rec_size: int) -> dict[int, np.ndarray]:
    """The plain channels' raw values of one fragment, by channel index: each run is one strided 2-D view
    copied out transposed at once (a wide 1 kHz group: ~10x faster than one strided copy per channel)."""
    out = {}
    for run in runs:
        dtype = run[0].dtype
        assert dtype is not None
        view = np.ndarray((n, len(run)), dtype, buffer=data, offset=run[0].offset, strides=(rec_size, dtype.itemsize))
        block = np.ascontiguousarray(view.T)
        for j, c in enumerate(run):
            out[c.index] = block[j]
    return out


def _fast_values(c: _Channel, raw: np.ndarray) -> np.ndarray:
    vals = raw if raw.dtype.byteorder in _NATIVE else raw.astype(raw.dtype.newbyteorder("="))
    if c.conversion is not None and c.conversion.conversion_type == v4c.CONVERSION_TYPE_LIN:
        vals = c.conversion.convert(vals)
    return vals


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        return bool(np.allclose(a.astype(np.float64), b.astype(np.float64), equal_nan=True, rtol=0, atol=0))
    return bool(np.array_equal(a, b))


def _is_virtual_group(group: Any) -> bool:
    """A channel group asammdf created in memory rather than read from the file.

    asammdf's bus-logging processing (``process_bus_logging``, on by default) decodes raw CAN/LIN frames with a
    DBC/ARXML attached to the file and *appends* one group per message (acquisition name ``from CAN1 message
    ID=0xA0``, no acquisition source). Such groups have no block in the file: their channel-group and data-group
    addresses are 0 (every block read from a file has a non-zero address -- offset 0 is the ID block). They
    duplicate our ``can__<message>`` tables, so they are never exported, whatever their name.
    """
    cg_addr = getattr(group.channel_group, "address", None)
    dg_addr = getattr(getattr(group, "data_group", None), "address", None)
    return cg_addr == 0 or dg_addr == 0


def _is_can_group(group: Any) -> bool:
    cg = group.channel_group
    names = {ch.name for ch in group.channels}
    is_bus = bool(getattr(cg, "flags", 0) & v4c.FLAG_CG_BUS_EVENT)
    return is_bus and "CAN_DataFrame.ID" in names and "CAN_DataFrame.DataBytes" in names


def decode_mdf(
    path: Path,
    manager: SinkManager,
    can: CanDecoder | None,
    file_metadata: dict[str, str],
    log: Callable[[str], None],
) -> tuple[list[StreamSink], list[StreamReport], list[str]]:
    """Decode one MDF file. Returns (sinks to close, reports for skipped groups, error strings)."""
    sinks: list[StreamSink] = []
    skipped: list[StreamReport] = []
    errors: list[str] = []
    MDF = _asammdf()
    try:
        with _quiet_stdout():
            # process_bus_logging=False: asammdf would otherwise decode raw CAN with a DBC attached to the file
            # at open time and append virtual "from CAN1 message ID=0x..." groups (duplicates of our can__ tables)
            mdf = MDF(path, process_bus_logging=False)
    except Exception as exc:  # asammdf raises MdfException, struct.error, ValueError, ...
        raise DecodeError(f"{path.name}: not readable as MDF: {describe_mdf_error(exc)}", file=str(path)) from exc
    try:
        mdf.configure(read_fragment_size=FRAGMENT_BYTES)
        inner = mdf._mdf
        try:
            start_ns = _start_ns(mdf)
        except Exception:
            start_ns = 0
            errors.append(f"{path.name}: no valid start time in the header; timestamps are relative")
        for gi, group in enumerate(inner.groups):
            cg = group.channel_group
            if not cg.cycles_nr and not getattr(group, "data_blocks", None):
                continue
            if _is_virtual_group(group):
                continue
            base = _group_name(group, gi)
            is_can = _is_can_group(group)
            try:
                if is_can and can:
                    _decode_can_group(inner, gi, group, start_ns, path.name, can)
                else:
                    sink = manager.sink(f"mdf__{base}", "can_raw" if is_can else "signals", path.name, file_metadata)
                    sinks.append(sink)
                    _decode_signal_group(inner, gi, group, start_ns, sink, log)
            except DecodeError:
                raise
            except Exception as exc:
                msg = f"{path.name}: group {gi} ({base}): {describe_mdf_error(exc)}"
                errors.append(msg)
                if not is_can or not can:
                    s = sinks[-1]
                    s.report.status = "salvaged" if s.report.rows or s.pending_rows else "skipped"
                    s.report.error = msg
    finally:
        with contextlib.suppress(Exception):
            mdf.close()
    return sinks, skipped, errors


def _decode_signal_group(inner: Any, gi: int, group: Any, start_ns: int, sink: StreamSink, log: Callable) -> None:
    plan, rec_size = _plan_group(inner, gi, group)
    runs = _side_by_side(plan)
    sink.units.update({c.column: c.unit for c in plan if c.unit})
    checked = False
    skip_cols: set[str] = set()
    texts = {c.index for c in plan if _is_text(group.channels[c.index])}
    dropped = 0
    backward = 0  # samples earlier than their predecessor in the order recorded (before the sinks sort)
    last_ns: int | None = None
    failed_channels: dict[str, str] = {}
    with _quiet_stdout():
        for fragment in inner._load_data(group, optimize_read=False):
            t = inner.get_master(gi, data=fragment, one_piece=True)
            t = np.asarray(t.timestamps if hasattr(t, "timestamps") else t, dtype=np.float64)
            n = len(t)
            if n == 0:
                continue
            ts, keep = _to_ns(start_ns, t)
            recorded = ts if keep is None else ts[keep]
            if len(recorded):
                backward += int(np.count_nonzero(recorded[1:] < recorded[:-1]))
                if last_ns is not None and recorded[0] < last_ns:
                    backward += 1
                last_ns = int(recorded[-1])
            cols: dict[str, pa.Array] = {"timestamp_ns": pa.array(ts)}
            data = fragment.data if hasattr(fragment, "data") else fragment[0]
            fast_ok = isinstance(data, bytes | bytearray | memoryview) and len(data) >= n * rec_size and rec_size > 0
            raw = _raw_columns(runs, data, n, rec_size) if fast_ok else {}
            for c in plan:
                if c.column in skip_cols:
                    continue
                if c.fast and fast_ok:
                    vals = _fast_values(c, raw[c.index])
                    if not checked:
                        ref = inner.get(group=gi, index=c.index, data=fragment, samples_only=True, raw=False)[0]
                        if not _same(vals, np.asarray(ref)):
                            c.fast = False
                            vals = np.asarray(ref)
                    # plain numbers (most of a wide group's hundreds of channels): straight to Arrow
                    arr = pa.array(vals) if c.fast and vals.ndim == 1 else _to_arrow(vals, None, False)
                else:
                    try:
                        sig = inner.get(
                            group=gi, index=c.index, data=fragment, raw=False, ignore_invalidation_bits=False
                        )
                    except Exception as exc:  # one unreadable channel (e.g. a malformed CA array) loses only itself
                        failed_channels[c.column] = f"{type(exc).__name__}: {exc}"
                        skip_cols.add(c.column)
                        continue
                    samples = np.asarray(sig.samples)
                    if len(samples) != n:
                        skip_cols.add(c.column)
                        continue
                    arr = _to_arrow(samples, sig.invalidation_bits, c.index in texts)
                if arr is None:
                    skip_cols.add(c.column)
                    continue
                cols[c.column] = arr
            checked = True
            for col in skip_cols:
                cols.pop(col, None)
            batch = pa.RecordBatch.from_pydict(cols)
            if keep is not None:
                dropped += int(n - keep.sum())
                batch = batch.filter(pa.array(keep))
            sink.append(batch)
    notes = []
    sink.report.out_of_order_samples = backward
    if backward:
        notes.append(
            f"{backward} samples out of recorded order (the master time runs backwards there: a damaged or "
            "reset clock); the table is sorted by time"
        )
    if dropped:
        notes.append(f"{dropped} samples with a non-finite or out-of-range master time were dropped")
    if failed_channels:
        listed = "; ".join(f"{name}: {why}" for name, why in sorted(failed_channels.items())[:5])
        notes.append(f"{len(failed_channels)} channel(s) could not be read and are left out ({listed})")
    for note in notes:
        sink.report.error = f"{sink.report.error}; {note}" if sink.report.error else note
    log(f"{sink.name}: {sink.report.rows + sink.pending_rows} rows")


def _is_text(ch: Any) -> bool:
    conv = ch.conversion
    if conv is not None and conv.conversion_type in (
        v4c.CONVERSION_TYPE_TABX,
        v4c.CONVERSION_TYPE_RTABX,
        v4c.CONVERSION_TYPE_TTAB,
        v4c.CONVERSION_TYPE_TRANS,
    ):
        return True
    return ch.data_type in (
        v4c.DATA_TYPE_STRING_LATIN_1,
        v4c.DATA_TYPE_STRING_UTF_8,
        v4c.DATA_TYPE_STRING_UTF_16_LE,
        v4c.DATA_TYPE_STRING_UTF_16_BE,
    )


def _decode_can_group(inner: Any, gi: int, group: Any, start_ns: int, source: str, can: CanDecoder) -> None:
    names = {ch.name: i for i, ch in enumerate(group.channels)}
    with _quiet_stdout():
        for fragment in inner._load_data(group, optimize_read=False):
            t = inner.get_master(gi, data=fragment, one_piece=True)
            t = np.asarray(t.timestamps if hasattr(t, "timestamps") else t, dtype=np.float64)
            if not len(t):
                continue

            def get(name: str, fragment: Any = fragment) -> np.ndarray:
                return np.asarray(inner.get(group=gi, index=names[name], data=fragment, samples_only=True)[0])

            ids = get("CAN_DataFrame.ID").astype(np.uint32)
            if "CAN_DataFrame.IDE" in names:
                ide = get("CAN_DataFrame.IDE").astype(np.uint8)
            else:
                ide = ((ids & 0x80000000) >> 31).astype(np.uint8)
            ids &= 0x1FFFFFFF
            bus = (
                get("CAN_DataFrame.BusChannel").astype(np.uint8)
                if "CAN_DataFrame.BusChannel" in names
                else np.zeros(len(ids), np.uint8)
            )
            payload = get("CAN_DataFrame.DataBytes")
            if payload.dtype.kind == "O":  # VLSD payloads: pad to a 2-D array
                width = max((len(p) for p in payload), default=0)
                out = np.zeros((len(payload), width), dtype=np.uint8)
                for k, p in enumerate(payload):
                    out[k, : len(p)] = np.frombuffer(bytes(p), dtype=np.uint8)
                payload = out
            ts, keep = _to_ns(start_ns, t)
            if keep is not None:
                ts, bus, ids, ide, payload = ts[keep], bus[keep], ids[keep], ide[keep], payload[keep]
            can.feed(source, ts, bus, ids, ide, payload)
