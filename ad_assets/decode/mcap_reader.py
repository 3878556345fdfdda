"""MCAP (one or several split parts of one recording) -> one Parquet table per topic.

Files are read front to back with mcap's ``NonSeekingReader(validate_crcs=True).iter_messages(
log_time_order=False)``: bounded memory (the seekable reader's unordered mode and the non-seeking reader's
sorted mode hold the whole file), works on unindexed files, validates chunk CRCs and lets a truncated file be
salvaged up to its last complete record. Ordering by ``log_time`` is done per topic by the sinks (each row
group sorted; topics whose groups overlap are re-sorted out of core at close).

Decoding: ros2 (cdr) and protobuf via the mcap-ros2-support / mcap-protobuf-support decoder factories, json
via ``json.loads``. A channel whose encoding no decoder handles becomes a skipped stream with the reason.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from mcap.exceptions import McapError
from mcap.reader import NonSeekingReader
from mcap_protobuf.decoder import DecoderFactory as ProtobufDecoderFactory
from mcap_ros2.decoder import DecoderFactory as Ros2DecoderFactory

from .cdr_fast import decode_batch, learn_layout
from .parquet_out import SinkManager, StreamSink, snake
from .report import DecodeError, StreamReport

IMAGE_SCHEMAS = ("CompressedImage", "RawImage", "Image", "CompressedVideo")
POINTCLOUD_SCHEMAS = ("PointCloud", "PointCloud2", "LaserScan")
FLUSH_ROWS = 4096
BINARY_COMPRESS_NONE = {"image"}


def classify(schema_name: str) -> str:
    leaf = schema_name.replace("::", "/").replace(".", "/").split("/")[-1]
    if leaf in IMAGE_SCHEMAS:
        return "image"
    if leaf in POINTCLOUD_SCHEMAS:
        return "pointcloud"
    if leaf == "Log":
        return "log"
    return "signals"


# ------------------------------------------------------------------ flattening
def _flatten_proto(msg: Any, prefix: str, out: dict[str, Any]) -> None:
    for fd in msg.DESCRIPTOR.fields:
        name = prefix + fd.name
        value = getattr(msg, fd.name)
        is_repeated = getattr(fd, "is_repeated", None)
        repeated = is_repeated if isinstance(is_repeated, bool) else fd.label == fd.LABEL_REPEATED
        if fd.message_type is not None and not repeated:
            if fd.message_type.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
                out[name + ".sec"] = value.seconds
                out[name + ".nsec"] = value.nanos
            else:
                _flatten_proto(value, name + ".", out)
        elif repeated:
            if fd.message_type is not None:
                out[name] = json.dumps([_proto_to_obj(v) for v in value], separators=(",", ":"))
            else:
                out[name] = list(value)
        elif fd.enum_type is not None:
            out[name] = int(value)
        else:
            out[name] = value


def _proto_to_obj(msg: Any) -> Any:
    d: dict[str, Any] = {}
    _flatten_proto(msg, "", d)
    return {k: (base64.b64encode(v).decode() if isinstance(v, bytes) else v) for k, v in d.items()}


def _flatten_obj(obj: Any, prefix: str, out: dict[str, Any]) -> None:
    """ros2 dynamic messages (``__slots__``) and json dicts."""
    if isinstance(obj, dict):
        items = obj.items()
    else:
        slots = getattr(obj, "__slots__", None)
        if slots is None:
            out[prefix.rstrip(".") or "value"] = obj
            return
        items = ((s, getattr(obj, s)) for s in slots)
    for k, v in items:
        name = prefix + str(k)
        if isinstance(v, dict) or (hasattr(v, "__slots__") and not isinstance(v, str | bytes | list)):
            _flatten_obj(v, name + ".", out)
        elif isinstance(v, list | tuple):
            if all(isinstance(x, bool | int | float) for x in v):
                out[name] = [float(x) for x in v]
            elif all(isinstance(x, str) for x in v):
                out[name] = list(v)
            else:
                out[name] = json.dumps(v, default=_json_fallback, separators=(",", ":"))
        elif isinstance(v, bytearray | memoryview):
            out[name] = bytes(v)
        else:
            out[name] = v


def _json_fallback(o: Any) -> Any:
    if hasattr(o, "__slots__"):
        return {s: getattr(o, s) for s in o.__slots__}
    if isinstance(o, bytes | bytearray):
        return base64.b64encode(bytes(o)).decode()
    return str(o)


def _header_stamp(row: dict[str, Any]) -> int | None:
    for sec, nsec in (
        ("header.stamp.sec", "header.stamp.nanosec"),
        ("timestamp.sec", "timestamp.nsec"),
        ("timestamp.sec", "timestamp.nanosec"),
        ("header.stamp.secs", "header.stamp.nsecs"),
    ):
        s = row.get(sec)
        if isinstance(s, int | float) and not isinstance(s, bool):
            ns = row.get(nsec, 0)
            ns = ns if isinstance(ns, int | float) and not isinstance(ns, bool) else 0
            if math.isfinite(s) and math.isfinite(ns):
                return int(s) * 1_000_000_000 + int(ns)
    return None


# ------------------------------------------------------------------ per topic
@dataclass
class _Topic:
    topic: str
    schema_name: str
    encoding: str
    kind: str
    decode: Callable[[bytes], Any] | None
    flatten: Callable[[Any], dict[str, Any]] | None
    skip_reason: str | None
    sink: StreamSink | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    failures: int = 0
    first_failure: str | None = None
    files: list[str] = field(default_factory=list)
    messages_seen: int = 0
    raw: list[tuple[bytes, int, int]] = field(default_factory=list)  # cdr batch path
    layout: Any = None
    layout_failed: bool = False


class McapDecoder:
    def __init__(self, manager: SinkManager, decoder_version: str, log: Callable[[str], None]) -> None:
        self.manager = manager
        self.decoder_version = decoder_version
        self.log = log
        self.factories = [Ros2DecoderFactory(), ProtobufDecoderFactory()]
        self.topics: dict[str, _Topic] = {}
        self.salvage_notes: dict[str, str] = {}  # file -> note

    # ---------------------------------------------------------------- channels
    def _make_topic(self, channel: Any, schema: Any) -> _Topic:
        schema_name = schema.name if schema is not None else ""
        enc = channel.message_encoding
        kind = classify(schema_name)
        decode = None
        flatten: Callable[[Any], dict[str, Any]] | None = None
        reason = None
        is_json_image = False
        if enc == "json":
            decode = json.loads
            is_json_image = kind == "image"

            def flatten(m: Any, _img: bool = is_json_image) -> dict[str, Any]:
                d: dict[str, Any] = {}
                _flatten_obj(m if isinstance(m, dict) else {"value": m}, "", d)
                if _img and isinstance(d.get("data"), str):  # foxglove json images carry base64 payloads
                    with contextlib.suppress(ValueError):
                        d["data"] = base64.b64decode(d["data"])
                return d
        else:
            for f in self.factories:
                try:
                    decode = f.decoder_for(enc, schema)
                except Exception as exc:  # e.g. ros2 service-event schemas with '---' separators
                    reason = f"decoder for encoding {enc!r} schema {schema_name!r} failed: {type(exc).__name__}: {exc}"
                    decode = None
                if decode is not None:
                    reason = None
                    break
            if decode is None and reason is None:
                senc = schema.encoding if schema is not None else None
                reason = (
                    f"no decoder for message encoding {enc!r} with schema encoding {senc!r} "
                    f"(schema {schema_name!r})"
                )
            if enc == "protobuf":

                def flatten(m: Any) -> dict[str, Any]:
                    d: dict[str, Any] = {}
                    _flatten_proto(m, "", d)
                    return d
            else:

                def flatten(m: Any) -> dict[str, Any]:
                    d: dict[str, Any] = {}
                    _flatten_obj(m, "", d)
                    return d

        return _Topic(channel.topic, schema_name, enc, kind, decode, flatten, reason)

    # ---------------------------------------------------------------- reading
    def read_file(self, path: Path, file_metadata: dict[str, str]) -> tuple[int, str | None]:
        """Decode one MCAP file. Returns (messages read, salvage note or None). Raises DecodeError."""
        by_channel: dict[int, _Topic] = {}
        count = 0
        size = path.stat().st_size
        with open(path, "rb", buffering=1 << 20) as fh:
            try:
                reader = NonSeekingReader(fh, validate_crcs=True, record_size_limit=1 << 31)
                for schema, channel, message in reader.iter_messages(log_time_order=False):
                    t = by_channel.get(channel.id)
                    if t is None:
                        t = self.topics.get(channel.topic)
                        if t is None:
                            t = self._make_topic(channel, schema)
                            self.topics[channel.topic] = t
                        by_channel[channel.id] = t
                        if path.name not in t.files:
                            t.files.append(path.name)
                    count += 1
                    t.messages_seen += 1
                    if t.decode is None:
                        continue
                    self._add(t, message, file_metadata, path.name)
            except Exception as exc:
                if isinstance(exc, DecodeError):
                    raise
                pos = fh.tell()
                cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if count == 0:
                    raise DecodeError(f"{path.name}: not readable as MCAP: {cause}", file=str(path)) from exc
                note = (
                    f"{path.name}: read stopped at byte {pos} of {size} ({cause}); "
                    f"salvaged {count} messages before that point"
                )
                self.salvage_notes[path.name] = note
                for t in {id(v): v for v in by_channel.values()}.values():
                    if t.sink is not None:
                        t.sink.report.status = "salvaged"
                        t.sink.report.error = note
                return count, note
            except BaseException:
                raise
        if not isinstance(count, int):  # pragma: no cover
            raise McapError("unreachable")
        return count, None

    def _add(self, t: _Topic, message: Any, file_metadata: dict[str, str], source: str) -> None:
        if t.encoding == "cdr" and not t.layout_failed:
            t.raw.append((bytes(message.data), message.log_time, message.publish_time))
            self._ensure_sink(t, file_metadata, source)
            if len(t.raw) >= FLUSH_ROWS:
                self._push(t)
            return
        try:
            decoded = t.decode(bytes(message.data))  # type: ignore[misc]
            row = t.flatten(decoded)  # type: ignore[misc]
        except Exception as exc:
            t.failures += 1
            if t.first_failure is None:
                t.first_failure = f"{type(exc).__name__}: {exc}"
            return
        stamp = _header_stamp(row)
        row["timestamp_ns"] = message.log_time
        row["publish_time_ns"] = message.publish_time
        if stamp is not None:
            row["header_stamp_ns"] = stamp
        t.rows.append(row)
        self._ensure_sink(t, file_metadata, source)
        limit = 16 if t.kind in ("image", "pointcloud") else FLUSH_ROWS
        if len(t.rows) >= limit:
            self._push(t)

    def _ensure_sink(self, t: _Topic, file_metadata: dict[str, str], source: str) -> None:
        if t.sink is None:
            t.sink = self.manager.sink(
                f"mcap__{snake(t.topic)}",
                t.kind,
                source,
                {**file_metadata, "mcap_topic": t.topic, "schema_name": t.schema_name, "message_encoding": t.encoding},
            )

    def _push(self, t: _Topic) -> None:
        if t.raw:
            self._push_cdr(t)
        if not t.rows or t.sink is None:
            return
        rows, t.rows = t.rows, []
        table = _rows_to_table(rows, t.kind)
        t.sink.append(table)

    def _push_cdr(self, t: _Topic) -> None:
        raw, t.raw = t.raw, []
        assert t.decode is not None and t.flatten is not None and t.sink is not None
        fits = np.zeros(len(raw), dtype=bool)
        if t.layout is None and not t.layout_failed and t.kind == "signals":
            try:
                t.layout = learn_layout(raw[0][0], t.decode, t.flatten)
            except Exception:
                t.layout = None
            t.layout_failed = t.layout is None
        if t.layout is not None:
            cols, fits = decode_batch(t.layout, [r[0] for r in raw])
            idx = np.flatnonzero(fits)
            if len(idx) and not self._check(t, cols, raw[idx[0]][0]):
                t.layout, t.layout_failed, fits = None, True, np.zeros(len(raw), dtype=bool)
            elif len(idx):
                lt = np.fromiter((raw[i][1] for i in idx), dtype=np.int64, count=len(idx))
                pt = np.fromiter((raw[i][2] for i in idx), dtype=np.int64, count=len(idx))
                arrays = {"timestamp_ns": pa.array(lt), **cols, "publish_time_ns": pa.array(pt)}
                for sec, nsec in (("header.stamp.sec", "header.stamp.nanosec"),):
                    if sec in cols and nsec in cols:
                        hs = cols[sec].to_numpy().astype(np.int64) * 1_000_000_000 + cols[nsec].to_numpy().astype(
                            np.int64
                        )
                        arrays["header_stamp_ns"] = pa.array(hs)
                t.sink.append(pa.table(arrays))
        for i in np.flatnonzero(~fits):
            payload, log_time, publish_time = raw[i]
            self._add_decoded(t, payload, log_time, publish_time)

    def _check(self, t: _Topic, cols: dict[str, pa.Array], payload: bytes) -> bool:
        row = t.flatten(t.decode(payload))  # type: ignore[misc]
        if set(row) != set(cols):
            return False
        for k, v in row.items():
            got = cols[k][0].as_py()
            if isinstance(v, float) and isinstance(got, float) and (v != v and got != got):
                continue
            if got != v:
                return False
        return True

    def _add_decoded(self, t: _Topic, payload: bytes, log_time: int, publish_time: int) -> None:
        try:
            row = t.flatten(t.decode(payload))  # type: ignore[misc]
        except Exception as exc:
            t.failures += 1
            if t.first_failure is None:
                t.first_failure = f"{type(exc).__name__}: {exc}"
            return
        stamp = _header_stamp(row)
        row["timestamp_ns"] = log_time
        row["publish_time_ns"] = publish_time
        if stamp is not None:
            row["header_stamp_ns"] = stamp
        t.rows.append(row)

    # ---------------------------------------------------------------- close
    def close(self, file_hashes: dict[str, str]) -> list[StreamReport]:
        reports = []
        for t in self.topics.values():
            self._push(t)
            if t.sink is None:
                if t.messages_seen == 0:
                    continue
                reason = t.skip_reason or f"every message failed to decode: {t.first_failure}"
                reports.append(
                    StreamReport(
                        name=f"mcap__{snake(t.topic)}",
                        source_file=",".join(t.files),
                        kind=t.kind,
                        status="skipped",
                        error=f"topic {t.topic!r}: {reason}",
                    )
                )
                continue
            extra = {
                "source_file": ",".join(t.files),
                "source_sha256": ",".join(file_hashes.get(f, "") for f in t.files),
            }
            r = t.sink.close(extra)
            r.source_file = ",".join(t.files)
            if t.failures:
                note = f"{t.failures} messages failed to decode (first: {t.first_failure})"
                r.error = f"{r.error}; {note}" if r.error else note
                r.status = "salvaged"
            reports.append(r)
        return reports


def _rows_to_table(rows: Sequence[dict[str, Any]], kind: str) -> pa.Table:
    names: dict[str, None] = {}
    for r in rows:
        for k in r:
            names.setdefault(k, None)
    cols = {}
    for k in names:
        vals = [r.get(k) for r in rows]
        if k in ("timestamp_ns", "publish_time_ns", "header_stamp_ns"):
            arr = pa.array(vals, type=pa.int64())
        else:
            first = next((v for v in vals if v is not None), None)
            try:
                if isinstance(first, bytes) and all(v is None or isinstance(v, bytes) for v in vals):
                    arr = pa.array(vals, type=pa.binary())
                else:
                    arr = pa.array(vals)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                arr = pa.array([None if v is None else json.dumps(v, default=_json_fallback) for v in vals])
            if pa.types.is_integer(arr.type) and any(isinstance(v, float) for v in vals):
                arr = arr.cast(pa.float64())
            if pa.types.is_list(arr.type) and pa.types.is_integer(arr.type.value_type):
                arr = arr.cast(pa.list_(pa.float64()))
        cols[k] = arr
    # timestamp first, then the rest in first-seen order
    order = ["timestamp_ns"] + [k for k in cols if k != "timestamp_ns"]
    fields = []
    arrays = []
    for k in order:
        a = cols[k]
        md = None
        if kind in BINARY_COMPRESS_NONE and pa.types.is_binary(a.type):
            md = {b"compress": b"none"}
        fields.append(pa.field(k, a.type, metadata=md))
        arrays.append(a)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def decode_mcaps(
    paths: Sequence[Path],
    manager: SinkManager,
    decoder_version: str,
    file_metadata_for: Callable[[Path], dict[str, str]],
    log: Callable[[str], None],
) -> tuple[McapDecoder, list[str]]:
    dec = McapDecoder(manager, decoder_version, log)
    errors: list[str] = []
    for p in paths:
        try:
            n, note = dec.read_file(p, file_metadata_for(p))
            if note:
                errors.append(note)
            log(f"{p.name}: {n} MCAP messages")
        except DecodeError as exc:
            errors.append(str(exc))
    return dec, errors
