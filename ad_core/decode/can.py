"""Raw CAN frames (ASAM bus-logging layout) -> physical DBC signals, vectorised per message id, per fragment.

The DBC is parsed by canmatrix (through asammdf's ``load_can_database``) and the bit extraction, scaling and
multiplexing are asammdf's vectorised ``bus_logging_utils.extract_mux`` -- the same code path as
``MDF.extract_bus_logging`` -- but fed fragment by fragment so memory stays bounded on long logs
(``extract_bus_logging`` builds the whole decoded file in memory).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .parquet_out import SinkManager, StreamSink, snake
from .report import DecodeError


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
    sink: StreamSink | None = None
    source_files: list[str] = field(default_factory=list)


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
        if o.sink is None:
            d = self.dbcs[di]
            o.sink = self.manager.sink(
                f"can__{snake(message.name)}",
                "can",
                source_name,
                {
                    "decoder_version": self.decoder_version,
                    "dbc_file": d.path.name,
                    "dbc_sha256": d.sha256,
                    "can_message": message.name,
                    "can_id": hex(message.arbitration_id.id),
                },
                units=o.units,
            )
        return o

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
            if not targets:
                self.unknown_ids.add((b, msg_id, is_ext))
                continue
            idx = order[bounds[k] : bounds[k + 1]]
            for di, message, is_j1939 in targets:
                self._decode(source_name, di, message, is_j1939, msg_id, is_ext, b, t_ns[idx], payload[idx])

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
                t,
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
        assert out.sink is not None
        for signals in extracted.values():
            first = next(iter(signals.values()), None)
            if first is None or len(first["samples"]) == 0:
                continue
            ts = np.asarray(first["t"], dtype=np.int64)
            n = len(ts)
            arrays: dict[str, pa.Array] = {
                "timestamp_ns": pa.array(ts),
                "bus": pa.array(np.full(n, b, dtype=np.uint8)),
                "can_id": pa.array(np.full(n, msg_id, dtype=np.uint32)),
            }
            by_name = {}
            for sig in signals.values():
                by_name[sig["name"]] = sig
            for name in out.signals:
                sig = by_name.get(name)
                if sig is None:
                    arrays[name] = pa.nulls(n, pa.float64())
                    continue
                vals = np.asarray(sig["samples"])
                if vals.dtype.kind not in "uifb":
                    try:
                        vals = vals.astype(np.float64)
                    except (TypeError, ValueError):
                        arrays[name] = pa.nulls(n, pa.float64())
                        continue
                mask = sig.get("invalidation_bits")
                mask = None if mask is None else np.asarray(mask, dtype=bool)
                arrays[name] = pa.array(vals.astype(np.float64, copy=False), mask=mask)
            out.sink.append(pa.RecordBatch.from_pydict(arrays))

    def close(self, file_hashes: dict[str, str]) -> list:
        reports = []
        for o in self._outs.values():
            if o.sink is None:
                continue
            reports.append(o.sink.close_from_sources(o.source_files, file_hashes))
        return reports
