"""Raw CAN frames (ASAM bus-logging layout) -> physical DBC signals, vectorised per message id, per fragment.

The DBC is parsed by canmatrix (through asammdf's ``load_can_database``) and the bit extraction, scaling and
multiplexing are asammdf's vectorised ``bus_logging_utils.extract_mux`` -- the same code path as
``MDF.extract_bus_logging`` -- but fed fragment by fragment so memory stays bounded on long logs
(``extract_bus_logging`` builds the whole decoded file in memory).

Nothing is lost without a word: frames whose id no DBC knows go to one raw-frames table (``can__unknown_frames``,
kind ``can_raw``); DBC messages longer than a classic CAN frame (UDS responses) are reassembled with ISO-TP
(``isotp.py``) before decoding; a message whose signals all came out null is reported with status ``all_null``.
A multiplexed message gives one table per multiplexor value (``can__<message>__<multiplexor>_<value>``, e.g.
one per OBD2 PID), holding only the frames that carry those signals: every table is a signal's own samples.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .isotp import IsoTpReassembler
from .parquet_out import SinkManager, StreamSink, snake
from .report import DecodeError, StreamReport

CLASSIC_CAN_BYTES = 8
UNKNOWN_FRAMES = "can__unknown_frames"


@dataclass
class _Dbc:
    path: Path
    sha256: str
    db: Any
    by_id: dict[tuple[int, bool], Any]
    j1939: dict[int, Any]  # pgn -> message


@dataclass
class _MessageOut:
    message: Any
    dbc: _Dbc
    signals: list[str]
    units: dict[str, str]
    sinks: dict[tuple[str | None, int], tuple[StreamSink, list[str]]] = field(default_factory=dict)  # by mux group
    source_files: list[str] = field(default_factory=list)
    decoded_values: dict[str, int] = field(default_factory=dict)  # signal -> non-null samples so far
    isotp: dict[int, IsoTpReassembler] = field(default_factory=dict)  # bus -> reassembler (ISO-TP messages)

    @property
    def prefix(self) -> bytes:
        """Bytes the DBC expects before the UDS service id of a reassembled message.

        DBCs for reassembled UDS place the service multiplexor at byte 0 (data only) or at byte 1, after the
        message length (CSS Electronics' convention, tp_uds.dbc); the multiplexor's start byte says which.
        """
        top = next(
            (s for s in self.message.signals if s.multiplex == "Multiplexor" and s.muxer_for_signal is None), None
        )
        return b"\x00" if top is not None and top.start_bit // 8 >= 1 else b""


def _signal_array(sig: dict[str, Any] | None, n: int) -> pa.Array:
    """One extracted signal as float64 with nulls for invalid samples (J1939 "not available")."""
    if sig is None:
        return pa.nulls(n, pa.float64())
    vals = np.asarray(sig["samples"])
    if vals.dtype.kind not in "uifb":
        try:
            vals = vals.astype(np.float64)
        except (TypeError, ValueError):
            return pa.nulls(n, pa.float64())
    mask = sig.get("invalidation_bits")
    return pa.array(vals.astype(np.float64, copy=False), mask=None if mask is None else np.asarray(mask, dtype=bool))


def _j1939_pgn(ids: np.ndarray) -> np.ndarray:
    tmp = ids >> 8
    ps = tmp & 0xFF
    pf = (ids >> 16) & 0xFF
    base = tmp & 0x3FF00
    return np.where(pf >= 240, base + ps, base)


class CanDecoder:
    """Holds the parsed DBCs and one output stream per decoded DBC message (across the drive's files)."""

    def __init__(self, dbc_files: Sequence[Path], manager: SinkManager, decoder_version: str) -> None:
        self.manager = manager
        self.decoder_version = decoder_version
        self.dbcs: list[_Dbc] = []
        if dbc_files:
            from asammdf.blocks.utils import load_can_database  # asammdf imports in ~1 s: only when needed
        for p in dbc_files:
            p = Path(p)
            try:
                raw = p.read_bytes()
                db = load_can_database(p)
            except Exception as exc:
                raise DecodeError(f"{p.name}: cannot load DBC: {type(exc).__name__}: {exc}", file=str(p)) from exc
            if db is None:
                raise DecodeError(f"{p.name}: cannot load DBC (canmatrix returned nothing)", file=str(p))
            if not any(True for _ in db):
                # canmatrix parses any text as a DBC; one without messages would decode every frame to nothing
                raise DecodeError(
                    f"{p.name}: not a usable DBC: it defines no messages (BO_ lines); is it the right file?",
                    file=str(p),
                )
            global_j1939 = str(db.attributes.get("ProtocolType", "")).lower() == "j1939" and all(
                m.arbitration_id.extended for m in db
            )
            by_id = {(m.arbitration_id.id, bool(m.arbitration_id.extended)): m for m in db}
            j1939 = {m.arbitration_id.pgn: m for m in db if m.is_j1939 or global_j1939}
            self.dbcs.append(_Dbc(p, hashlib.sha256(raw).hexdigest(), db, by_id, j1939))
        self._outs: dict[tuple[int, str], _MessageOut] = {}  # (dbc index, message name)
        self._resolved: dict[tuple[int, bool], list[tuple[int, Any, bool]]] = {}
        self.unknown_ids: set[tuple[int, int, bool]] = set()
        self._unknown: StreamSink | None = None
        self._unknown_sources: list[str] = []

    def __bool__(self) -> bool:
        return bool(self.dbcs)

    def _resolve(self, msg_id: int, ext: bool) -> list[tuple[int, Any, bool]]:
        key = (msg_id, ext)
        if key not in self._resolved:
            found = []
            for di, d in enumerate(self.dbcs):
                m = d.by_id.get(key)
                is_j1939 = False
                if m is None and ext and d.j1939:
                    m = d.j1939.get(int(_j1939_pgn(np.array([msg_id]))[0]))
                    is_j1939 = m is not None
                elif m is not None:
                    is_j1939 = bool(m.is_j1939)
                if m is not None:
                    found.append((di, m, is_j1939))
            self._resolved[key] = found
        return self._resolved[key]

    def _out(self, di: int, message: Any, source_name: str) -> _MessageOut:
        key = (di, message.name)
        o = self._outs.get(key)
        if o is None:
            sigs = [s.name for s in message.signals]
            units = {s.name: (s.unit or "") for s in message.signals}
            o = _MessageOut(message, self.dbcs[di], sigs, units)
            self._outs[key] = o
        if source_name not in o.source_files:
            o.source_files.append(source_name)
        return o

    def _group_sink(
        self, o: _MessageOut, muxer: str | None, value: int, source: str, names: Sequence[str]
    ) -> tuple[StreamSink, list[str]]:
        """The table of one multiplexor value of a message (the message's own table for its unmultiplexed part)."""
        key = (muxer, value)
        if key not in o.sinks:
            meta = {
                "decoder_version": self.decoder_version,
                "dbc_file": o.dbc.path.name,
                "dbc_sha256": o.dbc.sha256,
                "can_message": o.message.name,
                "can_id": hex(o.message.arbitration_id.id),
            }
            name = f"can__{snake(o.message.name)}"
            if muxer is not None:
                meta["can_multiplexor"] = f"{muxer}={value}"
                name = f"{name}__{snake(muxer)}_{value}"
            signals = [s for s in o.signals if s in names]
            units = {s: o.units[s] for s in signals}
            o.sinks[key] = (self.manager.sink(name, "can", source, meta, units=units), signals)
        return o.sinks[key]

    def feed(
        self,
        source_name: str,
        t_ns: np.ndarray,
        bus: np.ndarray,
        ids: np.ndarray,
        ide: np.ndarray,
        payload: np.ndarray,
    ) -> None:
        """Decode one fragment of frames. ``ids`` without the IDE bit; ``payload`` is (n, max_len) uint8."""
        if not len(ids):
            return
        keys = ids.astype(np.uint64) << np.uint64(8) | bus.astype(np.uint64)
        keys = keys << np.uint64(1) | ide.astype(np.uint64)
        uniq, inverse = np.unique(keys, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(uniq) + 1))
        for k, key in enumerate(uniq.tolist()):
            is_ext = bool(key & 1)
            b = (key >> 1) & 0xFF
            msg_id = key >> 9
            targets = self._resolve(msg_id, is_ext)
            idx = order[bounds[k] : bounds[k + 1]]
            if not targets:
                self.unknown_ids.add((b, msg_id, is_ext))
                self._keep_raw(source_name, t_ns[idx], b, msg_id, is_ext, payload[idx])
                continue
            for di, message, is_j1939 in targets:
                t, frames = t_ns[idx], payload[idx]
                if message.size > CLASSIC_CAN_BYTES >= frames.shape[1]:
                    t, frames = self._reassemble(source_name, di, message, b, t, frames)
                    if not len(t):
                        continue
                self._decode(source_name, di, message, is_j1939, msg_id, is_ext, b, t, frames)

    def _keep_raw(self, source: str, t: np.ndarray, b: int, msg_id: int, ext: bool, payload: np.ndarray) -> None:
        """Frames no DBC knows, as they were logged: one row per frame, the payload as bytes."""
        if self._unknown is None:
            meta = {"decoder_version": self.decoder_version, "dbc_file": ",".join(d.path.name for d in self.dbcs)}
            self._unknown = self.manager.sink(UNKNOWN_FRAMES, "can_raw", source, meta)
        if source not in self._unknown_sources:
            self._unknown_sources.append(source)
        n, width = payload.shape
        data = np.ascontiguousarray(payload, dtype=np.uint8)
        offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
        arrays = {
            "timestamp_ns": pa.array(t.astype(np.int64)),
            "bus": pa.array(np.full(n, b, dtype=np.uint8)),
            "can_id": pa.array(np.full(n, msg_id, dtype=np.uint32)),
            "extended": pa.array(np.full(n, ext, dtype=bool)),
            "data": pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)]),
        }
        self._unknown.append(pa.RecordBatch.from_pydict(arrays))

    def _reassemble(
        self, source: str, di: int, message: Any, b: int, t: np.ndarray, frames: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """ISO-TP frames of a long DBC message -> its reassembled payloads, padded to the message size."""
        out = self._out(di, message, source)
        times, messages = out.isotp.setdefault(b, IsoTpReassembler()).feed(t, frames)
        prefix = out.prefix
        payload = np.full((len(messages), message.size), 0xFF, dtype=np.uint8)  # as asammdf pads short payloads
        for i, m in enumerate(messages):
            data = (bytes([len(m) & 0xFF]) if prefix else b"") + m
            payload[i, : min(len(data), message.size)] = np.frombuffer(data[: message.size], dtype=np.uint8)
        return times, payload

    def _decode(
        self,
        source_name: str,
        di: int,
        message: Any,
        is_j1939: bool,
        msg_id: int,
        is_ext: bool,
        b: int,
        t: np.ndarray,
        payload: np.ndarray,
    ) -> None:
        from asammdf.blocks import bus_logging_utils

        out = self._out(di, message, source_name)
        try:
            extracted = bus_logging_utils.extract_mux(
                payload,
                message,
                msg_id,
                b,
                np.arange(len(t), dtype=np.float64),  # frame indices: each group's rows map back to its frames
                original_message_id=(msg_id & 0xFF) if is_j1939 else None,
                ignore_value2text_conversion=True,
                is_j1939=is_j1939,
                is_extended=is_ext,
                raw=False,
            )
        except Exception as exc:
            raise DecodeError(
                f"CAN message {message.name} (0x{msg_id:X}, bus {b}) with {out.dbc.path.name}: "
                f"{type(exc).__name__}: {exc}",
                stream=f"can__{snake(message.name)}",
            ) from exc
        for (*_, muxer, value, _max), signals in extracted.items():
            present = [sig for sig in signals.values() if len(sig["samples"])]
            if not present:
                continue
            sink, names = self._group_sink(out, muxer, value, source_name, list(signals))
            rows = np.asarray(present[0]["t"]).astype(np.int64)  # frame indices (see the call above)
            n = len(rows)
            arrays: dict[str, pa.Array] = {
                "timestamp_ns": pa.array(np.asarray(t, dtype=np.int64)[rows]),
                "bus": pa.array(np.full(n, b, dtype=np.uint8)),
                "can_id": pa.array(np.full(n, msg_id, dtype=np.uint32)),
            }
            for name in names:
                arrays[name] = _signal_array(signals.get(name), n)
                out.decoded_values[name] = out.decoded_values.get(name, 0) + n - arrays[name].null_count
            sink.append(pa.RecordBatch.from_pydict(arrays))

    def close(self, file_hashes: dict[str, str]) -> list[StreamReport]:
        reports = []
        for o in self._outs.values():
            for reassembler in o.isotp.values():
                reassembler.finish()
            notes = [f"ISO-TP: {'; '.join(x.stats.describe() for x in o.isotp.values())}"] if o.isotp else []
            never = [name for name in o.signals if not o.decoded_values.get(name)]
            if never and len(never) < len(o.signals):
                notes.append(f"signals null in every row: {', '.join(never)} (their multiplexor value never occurs)")
            for i, (sink, names) in enumerate(o.sinks.values()):
                r = sink.close_from_sources(o.source_files, file_hashes)
                if r.rows and all(name in never for name in names):
                    r.status = "all_null"
                    note = f"every signal is null in all {r.rows} rows (wrong DBC for these frames?)"
                    r.error = f"{r.error}; {note}" if r.error else note
                for note in notes if i == 0 else []:  # message-level notes on its first table
                    r.error = f"{r.error}; {note}" if r.error else note
                reports.append(r)
        if self._unknown is not None:
            r = self._unknown.close_from_sources(self._unknown_sources, file_hashes)
            ids = sorted(self.unknown_ids)
            shown = ", ".join(f"CAN{b} 0x{i:X}" for b, i, _e in ids[:20])
            more = f" (+{len(ids) - 20} more)" if len(ids) > 20 else ""
            r.status = "undecoded"
            r.error = f"{r.rows} frames of {len(ids)} CAN ids no DBC knows, kept raw: {shown}{more}"
            reports.append(r)
        return reports
