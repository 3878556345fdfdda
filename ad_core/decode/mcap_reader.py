"""MCAP (one or several split parts of one recording) -> one Parquet table per topic.

Files are read front to back by ``mcap_chunks.ChunkReader``: a helper thread reads each record, decompresses
chunks (zstd / lz4 release the GIL) and checks each chunk's CRC, so decompression overlaps with the Python work
here; bounded memory (a few chunks), works on unindexed files, and a truncated or corrupt file is salvaged up to
its last complete, CRC-valid chunk. Ordering by ``log_time`` is done per topic by the sinks (each row group
sorted; topics whose groups overlap are re-sorted out of core at close).

Decoding: ros2 (cdr) and protobuf via the mcap-ros2-support / mcap-protobuf-support decoder factories, json
via ``json.loads``; ros2 types those cannot decode (empty schema text, service-event ``.srv`` texts, ...) via
the rosbags typestore (``ros2_types``). A channel whose encoding no decoder handles becomes a skipped stream
with the reason. Fast paths (same output as the generic path): fixed-layout cdr topics are sliced column-wise
(layouts computed from the type definition, ``ros2_types.computed_layout``, sliced by ``cdr_fast``);
protobuf messages are flattened with a plan compiled once per message type; protobuf image / point-cloud
messages are split at the wire level -- the big ``bytes`` payload and the ``Timestamp`` are cut out, the small
rest is parsed and flattened once and reused while it does not change.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from google.protobuf.timestamp_pb2 import Timestamp
from mcap.records import Channel, Schema
from mcap_protobuf.decoder import DecoderFactory as ProtobufDecoderFactory
from mcap_ros2.decoder import DecoderFactory as Ros2DecoderFactory

from .cdr_fast import decode_batch
from .errors import describe_mcap_error
from .mcap_chunks import (
    OP_CHANNEL,
    OP_MESSAGE,
    OP_SCHEMA,
    ChunkReader,
    McapReadError,
    parse_block,
    parse_channel,
    parse_schema,
)
from .parquet_out import SinkManager, StreamSink, snake
from .report import CorruptChunk, DecodeError, StreamReport
from .ros2_types import Unsupported, computed_layout, rosbags_decoder

IMAGE_SCHEMAS = ("CompressedImage", "RawImage", "Image", "CompressedVideo")
POINTCLOUD_SCHEMAS = ("PointCloud", "PointCloud2", "LaserScan")
FLUSH_ROWS = 4096
INT64_MAX = 2**63 - 1  # timestamps are int64 ns: a larger log_time / publish_time cannot be stored
FRAME_FLUSH_ROWS = 64  # frame topics: rows per Arrow batch (the sink still writes 16-frame row groups)
FRAME_FLUSH_BYTES = 16 * 2**20
_TS_NAMES = ("google.protobuf.Timestamp", "google.protobuf.Duration")
VIEW_INLINE_BYTES = 12  # binary_view values up to 12 bytes live inside the view itself
VIEW_PIN_SLACK = 16 * 2**20  # chunk bytes a batch of frames may keep alive beyond its own payloads


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


# compiled protobuf flattening: the same columns as _flatten_proto, without per-message descriptor walks
_P_SCALAR, _P_TIME, _P_MSG, _P_REP_MSG, _P_REP, _P_ENUM = range(6)


def _proto_plan(desc: Any, prefix: str = "", depth: int = 0) -> list[tuple[int, str, Any, Any]]:
    if depth > 24:
        raise RecursionError(f"protobuf message {desc.full_name} nests too deep to flatten")
    plan: list[tuple[int, str, Any, Any]] = []
    for fd in desc.fields:
        name = prefix + fd.name
        is_repeated = getattr(fd, "is_repeated", None)
        repeated = is_repeated if isinstance(is_repeated, bool) else fd.label == fd.LABEL_REPEATED
        if fd.message_type is not None and not repeated:
            if fd.message_type.full_name in _TS_NAMES:
                plan.append((_P_TIME, fd.name, name + ".sec", name + ".nsec"))
            else:
                plan.append((_P_MSG, fd.name, _proto_plan(fd.message_type, name + ".", depth + 1), None))
        elif repeated:
            plan.append((_P_REP_MSG if fd.message_type is not None else _P_REP, fd.name, name, None))
        elif fd.enum_type is not None:
            plan.append((_P_ENUM, fd.name, name, None))
        else:
            plan.append((_P_SCALAR, fd.name, name, None))
    return plan


def _run_plan(msg: Any, plan: list[tuple[int, str, Any, Any]], out: dict[str, Any]) -> None:
    for kind, attr, name, extra in plan:
        value = getattr(msg, attr)
        if kind == _P_SCALAR:
            out[name] = value
        elif kind == _P_TIME:
            out[name] = value.seconds
            out[extra] = value.nanos
        elif kind == _P_MSG:
            _run_plan(value, name, out)
        elif kind == _P_REP_MSG:
            out[name] = json.dumps([_proto_to_obj(v) for v in value], separators=(",", ":"))
        elif kind == _P_REP:
            out[name] = list(value)
        else:
            out[name] = int(value)


def _proto_flattener(msg_cls: Any) -> Callable[[Any], dict[str, Any]]:
    try:
        plan = _proto_plan(msg_cls.DESCRIPTOR)
    except RecursionError:

        def slow(m: Any) -> dict[str, Any]:
            d: dict[str, Any] = {}
            _flatten_proto(m, "", d)
            return d

        return slow

    def flatten(m: Any) -> dict[str, Any]:
        d: dict[str, Any] = {}
        _run_plan(m, plan, d)
        return d

    return flatten


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


class _FrameSplitter:
    """Protobuf frame messages (foxglove CompressedImage / PointCloud / ...) without parsing the payload.

    The top-level wire fields are scanned; singular ``bytes`` fields and ``Timestamp`` fields are cut out, the rest
    (frame_id, format, pose, fields, ...) is parsed and flattened once and reused while its bytes do not change.
    The result equals the flattening of the whole parsed message (checked on the first message of each topic).
    Any wire-level surprise (repeated occurrence of a cut field, group wire types) falls back to a full parse.
    """

    def __init__(self, msg_cls: Any, flatten: Callable[[Any], dict[str, Any]]) -> None:
        self.cls = msg_cls
        self.flatten = flatten
        self.cut: dict[int, tuple[str, bool]] = {}  # field number -> (column, is timestamp)
        for fd in msg_cls.DESCRIPTOR.fields:
            is_repeated = getattr(fd, "is_repeated", None)
            repeated = is_repeated if isinstance(is_repeated, bool) else fd.label == fd.LABEL_REPEATED
            if repeated:
                continue
            if fd.type == fd.TYPE_BYTES:
                self.cut[fd.number] = (fd.name, False)
            elif fd.message_type is not None and fd.message_type.full_name == "google.protobuf.Timestamp":
                self.cut[fd.number] = (fd.name, True)
        self.memo_key: bytes | None = None
        self.memo_row: dict[str, Any] = {}

    def row(self, buf: bytes, start: int, end: int) -> dict[str, Any]:
        cut = self.cut
        found: dict[int, tuple[int, int]] = {}
        rest: list[tuple[int, int]] = []
        pos = start
        try:
            while pos < end:
                field_start = pos
                key, pos = _varint(buf, pos)
                num, wt = key >> 3, key & 7
                if wt == 2:
                    n, pos = _varint(buf, pos)
                    value_start, pos = pos, pos + n
                    if num in cut:
                        if num in found:
                            raise ValueError("repeated occurrence of a singular field")
                        found[num] = (value_start, pos)
                        continue
                elif wt == 0:
                    _, pos = _varint(buf, pos)
                elif wt == 1:
                    pos += 8
                elif wt == 5:
                    pos += 4
                else:
                    raise ValueError(f"wire type {wt}")
                if num in cut:
                    raise ValueError("unexpected wire type for a cut field")
                rest.append((field_start, pos))
            if pos != end:
                raise ValueError("field overruns the message")
        except (ValueError, IndexError):
            return self.flatten(self.cls.FromString(buf[start:end]))
        key = b"".join([buf[a:b] for a, b in rest])
        if key != self.memo_key:
            self.memo_row = self.flatten(self.cls.FromString(key))
            self.memo_key = key
        row = dict(self.memo_row)
        for num, (a, b) in found.items():
            name, is_ts = cut[num]
            if is_ts:
                ts = Timestamp.FromString(buf[a:b])
                row[name + ".sec"] = ts.seconds
                row[name + ".nsec"] = ts.nanos
            else:  # a view into the decompressed chunk: copied once, when the Arrow column is built
                row[name] = memoryview(buf)[a:b]
        return row


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


def _count_failure(t: _Topic, exc: Exception) -> None:
    """A message that does not decode is counted (and the first cause kept) instead of failing the stream."""
    t.failures += 1
    if t.first_failure is None:
        t.first_failure = f"{type(exc).__name__}: {exc}"


def _append_row(t: _Topic, row: dict[str, Any], log_time: int, publish_time: int) -> None:
    stamp = _header_stamp(row)
    row["timestamp_ns"] = log_time
    row["publish_time_ns"] = publish_time
    if stamp is not None:
        row["header_stamp_ns"] = stamp
    t.rows.append(row)


# ------------------------------------------------------------------ message batches
@dataclass(slots=True)
class _Messages:
    """Messages of one channel in one block, as arrays: payload [start, end) in the block buffer, log and publish
    time (int64 ns)."""

    start: np.ndarray
    end: np.ndarray
    log_time: np.ndarray
    publish_time: np.ndarray

    def __len__(self) -> int:
        return len(self.start)

    def rows(self) -> Any:
        """(start, end, log_time, publish_time) per message, as Python ints."""
        return zip(
            self.start.tolist(), self.end.tolist(), self.log_time.tolist(), self.publish_time.tolist(), strict=True
        )

    def take(self, index: Any) -> _Messages:
        return _Messages(self.start[index], self.end[index], self.log_time[index], self.publish_time[index])


_NO_MESSAGES = _Messages(*(np.zeros(0, dtype=np.int64) for _ in range(4)))
_BYTE_RANGE = np.arange(8)


def _gather(u8: np.ndarray, offsets: np.ndarray, dtype: str) -> np.ndarray:
    """The little-endian ``dtype`` value at each byte offset of ``u8`` (one fancy-indexing gather)."""
    width = np.dtype(dtype).itemsize
    return u8[offsets[:, None] + _BYTE_RANGE[:width]].view(dtype).reshape(-1)


@dataclass
class _CdrPending:
    """A topic's cdr messages waiting for their batch: payloads copied out of their chunks side by side (no chunk
    kept alive), with per message its bounds in that copy and its times."""

    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    count: int = 0

    def add(self, buf: bytes, msgs: _Messages) -> None:
        lengths = msgs.end - msgs.start
        bounds = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=bounds[1:])
        index = np.repeat(msgs.start - bounds[:-1], lengths) + np.arange(bounds[-1])
        self.parts.append((np.frombuffer(buf, dtype=np.uint8)[index], bounds, msgs.log_time, msgs.publish_time))
        self.count += len(msgs)

    def joined(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(payload bytes, bounds (n + 1), log times, publish times) of every pending message, in order."""
        if len(self.parts) == 1:
            return self.parts[0]
        base = np.cumsum([0] + [len(data) for data, *_ in self.parts])  # where each part's bytes start
        return (
            np.concatenate([data for data, *_ in self.parts]),
            np.concatenate([b[:-1] + o for (_, b, _, _), o in zip(self.parts, base[:-1], strict=True)] + [base[-1:]]),
            np.concatenate([lt for _, _, lt, _ in self.parts]),
            np.concatenate([pt for *_, pt in self.parts]),
        )


# ------------------------------------------------------------------ per topic
@dataclass
class _Topic:
    topic: str
    schema_name: str
    schema_text: str  # ros2msg definition (cdr topics: their computed layout)
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
    raw: _CdrPending = field(default_factory=_CdrPending)  # cdr batch path
    layout: Any = None
    layout_failed: bool = False
    rows_bytes: int = 0  # frame topics: payload bytes buffered in ``rows``
    proto_ready: bool = False  # protobuf: compiled flattener / frame splitter set up from the first message
    splitter: _FrameSplitter | None = None
    types: dict[str, pa.DataType] = field(default_factory=dict)  # Arrow types of the first table
    # messages dropped because log_time / publish_time does not fit int64 ns (>= 2^63): count, first place
    bad_times: int = 0
    first_bad_time: str | None = None


class McapDecoder:
    def __init__(
        self,
        manager: SinkManager,
        decoder_version: str,
        log: Callable[[str], None],
        *,
        fail_on_corrupt_chunk: bool = False,
    ) -> None:
        self.manager = manager
        self.fail_on_corrupt_chunk = fail_on_corrupt_chunk
        self.decoder_version = decoder_version
        self.log = log
        self.factories = [Ros2DecoderFactory(), ProtobufDecoderFactory()]
        self.topics: dict[str, _Topic] = {}
        self.salvage_notes: dict[str, str] = {}  # file -> note
        self.sha256: dict[str, str] = {}  # file name -> digest, for files read completely (hashed while reading)

    # ---------------------------------------------------------------- channels
    def _make_topic(self, channel: Any, schema: Any) -> _Topic:
        schema_name = schema.name if schema is not None else ""
        text = schema.data.decode(errors="replace") if schema is not None and schema.encoding == "ros2msg" else ""
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
            ros2 = enc == "cdr" and schema is not None and schema.encoding == "ros2msg"
            if ros2 and not text.strip():  # an empty text decodes to an empty message: standard types first
                with contextlib.suppress(Unsupported):
                    decode, ros_flatten = rosbags_decoder(schema_name, text)
                    return _Topic(channel.topic, schema_name, text, enc, kind, decode, ros_flatten, None)
            for f in self.factories:
                try:
                    with contextlib.redirect_stdout(sys.stderr):  # mcap_ros2 prints parse errors to stdout
                        decode = f.decoder_for(enc, schema)
                except Exception as exc:  # e.g. ros2 service-event schemas with '---' separators
                    reason = f"decoder for encoding {enc!r} schema {schema_name!r} failed: {type(exc).__name__}: {exc}"
                    decode = None
                if decode is not None:
                    reason = None
                    break
            if decode is None and ros2:
                try:
                    decode, ros_flatten = rosbags_decoder(schema_name, text)
                    return _Topic(channel.topic, schema_name, text, enc, kind, decode, ros_flatten, None)
                except Unsupported as exc:
                    reason = f"{reason + '; ' if reason else ''}rosbags typestore: {exc}"
            if decode is None and reason is None:
                senc = schema.encoding if schema is not None else None
                reason = (
                    f"no decoder for message encoding {enc!r} with schema encoding {senc!r} (schema {schema_name!r})"
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

        return _Topic(channel.topic, schema_name, text, enc, kind, decode, flatten, reason)

    # ---------------------------------------------------------------- reading
    def read_file(self, path: Path, file_metadata: dict[str, str], *, hash_file: bool = True) -> tuple[int, str | None]:
        """Decode one MCAP file. Returns (messages read, salvage note or None). Raises DecodeError (CorruptChunk
        for a damaged chunk when ``fail_on_corrupt_chunk``).

        ``hash_file``: hash it while reading (False when its sha256 is known already)."""
        by_channel: dict[int, _Topic] = {}
        schemas: dict[int, Schema] = {}
        channels: dict[int, Channel] = {}
        count = 0
        size = path.stat().st_size
        reader = ChunkReader(path, sha256=hash_file)
        try:
            for block in reader:
                count += self._block(block.data, block.offset, path.name, file_metadata, schemas, channels, by_channel)
            if reader.sha256:
                self.sha256[path.name] = reader.sha256
        except Exception as exc:
            if isinstance(exc, DecodeError):
                raise
            if isinstance(exc, McapReadError):
                pos = exc.offset if exc.offset >= 0 else size
                cause = exc.cause
                if exc.chunk is not None and self.fail_on_corrupt_chunk:
                    raise CorruptChunk(
                        str(path), f"MCAP damaged: chunk {exc.chunk} (the record at byte {pos} of {size}): {cause}"
                    ) from exc
            else:
                pos = size
                cause = describe_mcap_error(exc)
            if count == 0:
                raise DecodeError(
                    f"{path.name}: not readable as MCAP: {cause} (at byte {pos} of {size})", file=str(path)
                ) from exc
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
        finally:
            reader.close()
        return count, None

    def _block(
        self,
        buf: bytes,
        offset: int,
        source: str,
        file_metadata: dict[str, str],
        schemas: dict[int, Schema],
        channels: dict[int, Channel],
        by_channel: dict[int, _Topic],
    ) -> int:
        """Split one block into records; messages are grouped per channel and handed over per topic in order.

        Only the walk from record to record is per-record Python; the message headers (channel, times) are
        gathered for the whole block at once."""
        starts: list[int] = []  # content start of every message record
        for op, start, pos in parse_block(buf, offset):
            if op == OP_MESSAGE:
                if pos - start < 22:
                    raise McapReadError(offset, "malformed message record")
                starts.append(start)
            elif op == OP_SCHEMA:
                try:
                    sid, name, enc, data = parse_schema(buf, start, pos)
                except (ValueError, struct.error, UnicodeDecodeError) as exc:
                    raise McapReadError(offset, f"malformed schema record: {exc}") from exc
                schemas[sid] = Schema(id=sid, name=name, encoding=enc, data=data)
            elif op == OP_CHANNEL:
                try:
                    cid, sid, topic, enc, meta = parse_channel(buf, start, pos)
                except (ValueError, struct.error, UnicodeDecodeError) as exc:
                    raise McapReadError(offset, f"malformed channel record: {exc}") from exc
                channels[cid] = Channel(id=cid, schema_id=sid, topic=topic, message_encoding=enc, metadata=meta)
        pending: dict[int, _Messages] = {}
        bad_times: dict[int, list[int]] = {}  # channel -> [count, record start, log_time, publish_time]
        if starts:
            u8 = np.frombuffer(buf, dtype=np.uint8)
            record = np.array(starts, dtype=np.int64)
            end = record + _gather(u8, record - 8, "<u8").astype(np.int64)
            channel_ids = _gather(u8, record, "<u2")
            log_time = _gather(u8, record + 6, "<u8")
            publish_time = _gather(u8, record + 14, "<u8")
            bad = (log_time > INT64_MAX) | (publish_time > INT64_MAX)
            if bad.any():  # not representable as int64 ns: counted per channel, the first one kept for the report
                for i in np.flatnonzero(bad).tolist():
                    counted = bad_times.setdefault(
                        int(channel_ids[i]), [0, starts[i], int(log_time[i]), int(publish_time[i])]
                    )
                    counted[0] += 1
                good = ~bad
                record, end, channel_ids = record[good], end[good], channel_ids[good]
                log_time, publish_time = log_time[good], publish_time[good]
            msgs = _Messages(record + 22, end, log_time.astype(np.int64), publish_time.astype(np.int64))
            ids, first = np.unique(channel_ids, return_index=True)
            if len(ids) == 1:
                pending[int(ids[0])] = msgs
            else:
                for cid in ids[np.argsort(first)].tolist():
                    pending[cid] = msgs.take(np.flatnonzero(channel_ids == cid))
        count = 0
        for cid in bad_times.keys() - pending.keys():
            pending[cid] = _NO_MESSAGES
        for cid, msgs in pending.items():
            t = by_channel.get(cid)
            if t is None:
                channel = channels.get(cid)
                if channel is None:
                    raise McapReadError(offset, f"message on channel id {cid} without a channel record")
                t = self.topics.get(channel.topic)
                if t is None:
                    schema = schemas.get(channel.schema_id) if channel.schema_id else None
                    t = self._make_topic(channel, schema)
                    self.topics[channel.topic] = t
                by_channel[cid] = t
                if source not in t.files:
                    t.files.append(source)
            bad = bad_times.get(cid)
            if bad is not None:
                t.bad_times += bad[0]
                t.messages_seen += bad[0]
                if t.first_bad_time is None:
                    t.first_bad_time = (
                        f"{source}: topic {t.topic!r}: first at byte {bad[1]} of the block at byte {offset} "
                        f"(log_time {bad[2]}, publish_time {bad[3]})"
                    )
            if not msgs:
                continue
            count += len(msgs)
            t.messages_seen += len(msgs)
            if t.decode is not None:
                self._add_many(t, buf, msgs, file_metadata, source)
        return count

    def _add_many(self, t: _Topic, buf: bytes, msgs: _Messages, file_metadata: dict[str, str], source: str) -> None:
        if t.encoding == "cdr" and not t.layout_failed:
            self._ensure_sink(t, file_metadata, source)
            done = 0
            while done < len(msgs):  # batches of exactly FLUSH_ROWS messages, whatever the blocks
                take = min(len(msgs) - done, FLUSH_ROWS - t.raw.count)
                t.raw.add(buf, msgs.take(slice(done, done + take)))
                done += take
                if t.raw.count >= FLUSH_ROWS:
                    self._push(t)
                    if t.layout_failed:  # the rest goes through the generic path
                        self._add_many(t, buf, msgs.take(slice(done, None)), file_metadata, source)
                        return
            return
        if t.encoding == "protobuf" and not t.proto_ready:
            self._setup_proto(t, buf[int(msgs.start[0]) : int(msgs.end[0])])
        frames = t.kind in ("image", "pointcloud")
        limit = FRAME_FLUSH_ROWS if frames else FLUSH_ROWS
        splitter = t.splitter
        decode, flatten = t.decode, t.flatten
        assert decode is not None and flatten is not None
        for a, b, log_time, publish_time in msgs.rows():
            try:
                row = splitter.row(buf, a, b) if splitter is not None else flatten(decode(buf[a:b]))
            except Exception as exc:
                _count_failure(t, exc)
                continue
            _append_row(t, row, log_time, publish_time)
            if frames:
                t.rows_bytes += b - a
            self._ensure_sink(t, file_metadata, source)
            if len(t.rows) >= limit or t.rows_bytes >= FRAME_FLUSH_BYTES:
                self._push(t)

    def _setup_proto(self, t: _Topic, first: bytes) -> None:
        """Compile the flattener from the first message's class; frame topics also get the wire-level splitter."""
        t.proto_ready = True
        assert t.decode is not None
        try:
            msg = t.decode(first)
        except Exception:
            return  # keep the generic path; the failure is counted when the message is decoded again
        cls = type(msg)
        if not hasattr(cls, "DESCRIPTOR") or not hasattr(cls, "FromString"):
            return
        fast = _proto_flattener(cls)
        generic = t.flatten
        assert generic is not None
        try:
            ok = fast(msg) == generic(msg)
        except Exception:
            ok = False
        if not ok:
            return
        t.flatten = fast
        if t.kind in ("image", "pointcloud"):
            splitter = _FrameSplitter(cls, fast)
            try:
                same = _rows_equal(splitter.row(first, 0, len(first)), generic(msg))
            except Exception:
                same = False
            if same:
                t.splitter = splitter

    def _ensure_sink(self, t: _Topic, file_metadata: dict[str, str], source: str) -> None:
        if t.sink is None:
            t.sink = self.manager.sink(
                f"mcap__{snake(t.topic)}",
                t.kind,
                source,
                {**file_metadata, "mcap_topic": t.topic, "schema_name": t.schema_name, "message_encoding": t.encoding},
            )

    def _push(self, t: _Topic) -> None:
        if t.raw.count:
            self._push_cdr(t)
        if not t.rows or t.sink is None:
            return
        rows, t.rows, t.rows_bytes = t.rows, [], 0
        table = _rows_to_table(rows, t.types)
        t.sink.append(table)

    def _push_cdr(self, t: _Topic) -> None:
        data, bounds, log_time, publish_time = t.raw.joined()
        t.raw = _CdrPending()
        assert t.decode is not None and t.flatten is not None and t.sink is not None

        def payload(i: int) -> bytes:
            return data[bounds[i] : bounds[i + 1]].tobytes()

        fits = np.zeros(len(bounds) - 1, dtype=bool)
        if t.layout is None and not t.layout_failed and t.kind == "signals":
            t.layout = computed_layout(t.schema_name, t.schema_text, payload(0))
            t.layout_failed = t.layout is None
        if t.layout is not None:
            cols, fits = decode_batch(t.layout, data, bounds)
            idx = np.flatnonzero(fits)
            if len(idx) and not self._check(t, cols, payload(idx[0])):
                t.layout, t.layout_failed, fits = None, True, np.zeros(len(bounds) - 1, dtype=bool)
            elif len(idx):
                arrays = {
                    "timestamp_ns": pa.array(log_time[idx]),
                    **cols,
                    "publish_time_ns": pa.array(publish_time[idx]),
                }
                for sec, nsec in (("header.stamp.sec", "header.stamp.nanosec"),):
                    if sec in cols and nsec in cols:
                        hs = cols[sec].to_numpy().astype(np.int64) * 1_000_000_000 + cols[nsec].to_numpy().astype(
                            np.int64
                        )
                        arrays["header_stamp_ns"] = pa.array(hs)
                t.sink.append(pa.table(arrays))
        for i in np.flatnonzero(~fits).tolist():
            self._add_decoded(t, payload(i), int(log_time[i]), int(publish_time[i]))

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
            _count_failure(t, exc)
            return
        _append_row(t, row, log_time, publish_time)

    # ---------------------------------------------------------------- close
    def close(self, file_hashes: dict[str, str]) -> list[StreamReport]:
        reports = []
        for t in self.topics.values():
            self._push(t)
            time_note = (
                f"{t.bad_times} messages with a log_time or publish_time >= 2^63 ns (not representable as int64) "
                f"were dropped; {t.first_bad_time}"
                if t.bad_times
                else None
            )
            if t.sink is None:
                if t.messages_seen == 0:
                    continue
                reason = time_note or t.skip_reason or f"every message failed to decode: {t.first_failure}"
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
            r = t.sink.close_from_sources(t.files, file_hashes)
            if t.failures:
                note = f"{t.failures} messages failed to decode (first: {t.first_failure})"
                r.error = f"{r.error}; {note}" if r.error else note
                r.status = "salvaged"
            if time_note:
                r.error = f"{r.error}; {time_note}" if r.error else time_note
                r.status = "salvaged"
            reports.append(r)
        return reports


def _rows_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if list(a) != list(b):
        return False
    for k, v in a.items():
        w = b[k]
        v = bytes(v) if isinstance(v, memoryview) else v
        w = bytes(w) if isinstance(w, memoryview) else w
        if isinstance(v, float) and isinstance(w, float) and v != v and w != w:
            continue
        if type(v) is not type(w) or v != w:
            return False
    return True


def _binary_array(vals: list[Any]) -> pa.Array | None:
    """bytes / memoryview values (or None) -> ``binary_view`` array, without copying frame payloads where it pays.

    Frame payloads arrive as memoryviews into their decompressed chunk (immutable ``bytes``); referencing them
    in place keeps those chunks alive until the row group is written. That is done when the chunks add at most
    ``VIEW_PIN_SLACK`` bytes beyond the payloads themselves (frames that dominate their chunks); otherwise (a
    sparse topic in big chunks) they are copied into one compact buffer, as are all other values. Returns None
    where that buffer would overflow the int32 offsets (the caller then copies value by value)."""
    n = len(vals)
    views = np.zeros((n, 4), dtype=np.int32)  # Arrow's view layout: length, 4-byte prefix, buffer index, offset
    raw = views.view(np.uint8)
    valid = np.ones(n, dtype=bool)
    in_chunk: list[int] = []
    copied: list[int] = []
    chunks: dict[int, bytes] = {}
    in_chunk_bytes = 0
    for i, v in enumerate(vals):
        if v is None:
            valid[i] = False
            continue
        size = len(v)
        views[i, 0] = size
        if size <= VIEW_INLINE_BYTES:
            raw[i, 4 : 4 + size] = np.frombuffer(v, dtype=np.uint8)
            continue
        raw[i, 4:8] = np.frombuffer(v[:4], dtype=np.uint8)
        chunk = v.obj if isinstance(v, memoryview) else None
        if isinstance(chunk, bytes) and len(chunk) < 2**31:
            in_chunk.append(i)
            chunks[id(chunk)] = chunk
            in_chunk_bytes += size
        else:
            copied.append(i)
    if sum(len(c) for c in chunks.values()) - in_chunk_bytes > VIEW_PIN_SLACK:
        copied += in_chunk
        in_chunk, chunks = [], {}
    index = {key: (k, _address(c)) for k, (key, c) in enumerate(chunks.items())}
    buffers = [pa.py_buffer(c) for c in chunks.values()]
    for i in in_chunk:
        k, chunk_address = index[id(vals[i].obj)]
        views[i, 2] = k
        views[i, 3] = _address(vals[i]) - chunk_address
    if copied:
        sizes = views[copied, 0].astype(np.int64)
        if sizes.sum() >= 2**31:
            return None
        views[copied, 2] = len(buffers)
        views[copied, 3] = np.cumsum(sizes) - sizes
        buffers.append(pa.py_buffer(b"".join([vals[i] for i in copied])))
    nulls = n - int(valid.sum())
    validity = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    return pa.Array.from_buffers(pa.binary_view(), n, [validity, pa.py_buffer(views), *buffers], null_count=nulls)


def _address(buf: bytes | memoryview) -> int:
    return np.frombuffer(buf, dtype=np.uint8).ctypes.data


def _column(vals: list[Any], known: pa.DataType | None) -> pa.Array:
    first = next((v for v in vals if v is not None), None)
    if (
        isinstance(first, bytes | memoryview)
        and (known is None or pa.types.is_binary_view(known))
        and all(v is None or isinstance(v, bytes | memoryview) for v in vals)
    ):
        arr = _binary_array(vals)
        if arr is not None:
            return arr
        return pa.array([bytes(v) if isinstance(v, memoryview) else v for v in vals], type=pa.binary_view())
    if known is not None:
        try:
            return pa.array(vals, type=known)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
            pass
    try:
        if isinstance(first, bytes | memoryview) and all(v is None or isinstance(v, bytes | memoryview) for v in vals):
            arr = pa.array(vals, type=pa.binary_view())
        else:
            arr = pa.array(vals)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        if all(v is None or (type(v) is int and v >= 0) for v in vals):  # uint64 values >= 2^63
            arr = pa.array(vals, type=pa.uint64())
        else:
            # mixed values (a sequence of messages is JSON text, an empty one []): text stays as it is
            arr = pa.array(
                [
                    None if v is None else v if isinstance(v, str) else json.dumps(v, default=_json_fallback)
                    for v in vals
                ]
            )
    if pa.types.is_integer(arr.type) and any(isinstance(v, float) for v in vals):
        arr = arr.cast(pa.float64())
    if pa.types.is_list(arr.type) and pa.types.is_integer(arr.type.value_type):
        arr = arr.cast(pa.list_(pa.float64()))
    return arr


def _rows_to_table(rows: Sequence[dict[str, Any]], types: dict[str, pa.DataType] | None = None) -> pa.Table:
    """Row dicts -> table. ``types`` (per topic) remembers the inferred Arrow types, so later batches of the same
    topic are built with explicit types (no inference); a batch that does not fit them is inferred again."""
    known = types if types is not None else {}
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
            ktype = known.get(k)
            arr = _column(vals, ktype)
            if ktype is None and not pa.types.is_null(arr.type) and not pa.types.is_integer(arr.type):
                known[k] = arr.type  # ints stay inferred: a later batch may hold floats (-> float64)
        cols[k] = arr
    # timestamp first, then the rest in first-seen order
    order = ["timestamp_ns"] + [k for k in cols if k != "timestamp_ns"]
    return pa.table({k: cols[k] for k in order})
