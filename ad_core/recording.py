"""A synced drive as one MCAP file with Foxglove schemas, for frame-by-frame review in Foxglove / Lichtblick.

Every message is logged at its frame's time on the sync reference timeline (``log_time`` = the synced
``timestamp_ns``), so camera, lidar, signals and sync error scrub together:

* ``/camera/<stream>`` ``foxglove.CompressedImage``: the JPEG of each frame (the reference camera, or a camera
  matched by row index), bytes copied, not re-encoded;
* ``/lidar/<stream>`` ``foxglove.PointCloud``: each sweep once, at the first frame it is matched to (its own
  ``timestamp`` stays the sweep's);
* ``/gnss/<stream>`` ``foxglove.LocationFix`` where a stream has latitude and longitude (map panel);
* ``/signals/<stream>`` JSON (with a JSON schema): the stream's synced values at the frame (IMU, GNSS,
  vehicle, ...);
* ``/sync/error``: per frame, each stream's sync error in ms and the streams out of tolerance.

One streaming pass: synced frames in batches, payload tables forward-only one row group at a time, MCAP
chunks of 4 MiB, so memory is bounded whatever the drive length.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from foxglove_schemas_protobuf.CompressedImage_pb2 import CompressedImage
from foxglove_schemas_protobuf.LocationFix_pb2 import LocationFix
from foxglove_schemas_protobuf.PackedElementField_pb2 import PackedElementField
from foxglove_schemas_protobuf.PointCloud_pb2 import PointCloud
from google.protobuf.timestamp_pb2 import Timestamp
from mcap.writer import CompressionType, Writer
from mcap_protobuf.schema import register_schema

BATCH_ROWS = 1024
CHUNK_BYTES = 4 * 1024 * 1024
_SYNC_SUFFIXES = (".sync_error_ns", ".in_tolerance", ".row_index")


@dataclass(frozen=True)
class PayloadTable:
    """A decoded image or point-cloud table whose rows the synced frames reference."""

    stream: str  # the synced column prefix (``lidar_top_points``) or the reference's name
    path: Path
    kind: str  # image | pointcloud
    row_column: str | None  # synced column holding the row; None: the row is the frame_index (reference)


@dataclass
class RecordingReport:
    frames: int = 0
    messages: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    duration_s: float = 0.0

    @property
    def mib_per_minute(self) -> float:
        return self.bytes / 2**20 / (self.duration_s / 60) if self.duration_s > 0 else 0.0


def _timestamp(ns: int) -> Timestamp:
    return Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


class _RowReader:
    """Rows of a payload table in non-decreasing order, one row group in memory at a time."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self._file = pq.ParquetFile(path, pre_buffer=False)
        self._columns = [c for c in columns if c in self._file.schema_arrow.names]
        self._group = -1
        self._start = 0
        self._rows: list[dict[str, Any]] = []
        self._starts = []
        start = 0
        for g in range(self._file.metadata.num_row_groups):
            self._starts.append(start)
            start += self._file.metadata.row_group(g).num_rows
        self.rows = start

    def get(self, row: int) -> dict[str, Any]:
        if not 0 <= row < self.rows:
            raise IndexError(f"{self._file.metadata} has no row {row}")
        while self._group < 0 or row >= self._start + len(self._rows):
            self._group += 1
            self._start = self._starts[self._group]
            self._rows = self._file.read_row_group(self._group, columns=self._columns).to_pylist()
        if row < self._start:
            raise ValueError(f"row {row} requested after row {self._start}: payload rows must not go backwards")
        return self._rows[row - self._start]


def _pointcloud(row: dict[str, Any], frame_id: str) -> bytes:
    fields = [PackedElementField(name=f["name"], offset=f["offset"], type=f["type"]) for f in json.loads(row["fields"])]
    return PointCloud(
        timestamp=_timestamp(int(row["timestamp_ns"])),
        frame_id=row.get("frame_id") or frame_id,
        point_stride=int(row["point_stride"]),
        fields=fields,
        data=bytes(row["data"]),
    ).SerializeToString()


def _signal_groups(columns: list[str]) -> dict[str, list[str]]:
    """stream -> its value columns (``imu_data.angular_velocity.x`` -> imu_data), sync bookkeeping left out."""
    groups: dict[str, list[str]] = {}
    streams = {c.removesuffix(".in_tolerance") for c in columns if c.endswith(".in_tolerance")}
    for c in columns:
        if c.endswith(_SYNC_SUFFIXES) or "." not in c:
            continue
        stream = next((s for s in streams if c.startswith(f"{s}.")), None)
        if stream is not None:
            groups.setdefault(stream, []).append(c)
    return groups


def _json_schema(columns: list[str], prefix: str) -> bytes:
    props = {c.removeprefix(f"{prefix}."): {"type": ["number", "boolean", "string", "null"]} for c in columns}
    return json.dumps({"type": "object", "properties": props}).encode()


def _clean(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _json_int(v: int | None) -> str:
    return "null" if v is None else int.__repr__(v)


def _json_bool(v: bool | None) -> str:
    return "null" if v is None else "true" if v else "false"


def _json_str(v: str | None) -> str:
    return "null" if v is None else encode_basestring_ascii(v)


def _json_any(v: Any) -> str:
    return json.dumps(_clean(v))


def _json_values(column: pa.Array) -> list[str]:
    """What ``json.dumps(_clean(v))`` writes for each value of ``column``, without the encoder set-up json.dumps
    pays per call (~13 us): floats as their repr (non-finite and null as null), the rest by type."""
    if column.type in (pa.float32(), pa.float64()):
        values = column.to_numpy(zero_copy_only=False)  # nulls become NaN: null either way
        out = list(map(float.__repr__, values.tolist()))
        for i in np.flatnonzero(~np.isfinite(values)).tolist():
            out[i] = "null"
        return out
    encode = _json_encoder(column.type)
    return [encode(v) for v in column.to_pylist()]


def _json_encoder(t: pa.DataType) -> Callable[[Any], str]:
    if pa.types.is_integer(t):
        return _json_int
    if pa.types.is_boolean(t):
        return _json_bool
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _json_str
    return _json_any


def _json_objects(batch: pa.RecordBatch, columns: list[str], prefix: str) -> list[bytes]:
    """Per row, ``json.dumps({column without prefix: _clean(value)}).encode()`` over ``columns``: the same bytes,
    built column by column (one repr per value) and joined with a template."""
    keys = [encode_basestring_ascii(c.removeprefix(prefix)).replace("%", "%%") for c in columns]
    template = "{" + ", ".join(f"{k}: %s" for k in keys) + "}"
    values = [_json_values(batch.column(c)) for c in columns]
    if not values:
        return [b"{}"] * batch.num_rows
    return [(template % row).encode() for row in zip(*values, strict=True)]


def write_recording(
    out: BinaryIO, synced_path: Path, payloads: list[PayloadTable], profile: str = ""
) -> RecordingReport:
    """Write the MCAP of one synced drive to ``out``; returns frames, messages per topic, bytes and duration."""
    synced = pq.ParquetFile(synced_path, pre_buffer=False)
    columns = synced.schema_arrow.names
    groups = _signal_groups(columns)
    streams = sorted({c.removesuffix(".in_tolerance") for c in columns if c.endswith(".in_tolerance")})
    gnss = {s: cs for s, cs in groups.items() if f"{s}.latitude" in cs and f"{s}.longitude" in cs}
    writer = Writer(out, chunk_size=CHUNK_BYTES, compression=CompressionType.ZSTD)
    writer.start(profile="", library="ad-platform recording")
    if profile:
        writer.add_metadata("drive", {"sensor_profile": profile})
    image_schema = register_schema(writer, CompressedImage)
    cloud_schema = register_schema(writer, PointCloud)
    fix_schema = register_schema(writer, LocationFix)
    channels: dict[str, int] = {}

    def channel(topic: str, schema_id: int, encoding: str) -> int:
        if topic not in channels:
            channels[topic] = writer.register_channel(topic=topic, message_encoding=encoding, schema_id=schema_id)
        return channels[topic]

    topics: dict[str, tuple[str, int]] = {}  # payload stream -> (topic, channel)
    readers: dict[str, _RowReader] = {}
    for p in payloads:
        topic = f"/camera/{p.stream}" if p.kind == "image" else f"/lidar/{p.stream}"
        topics[p.stream] = (topic, channel(topic, image_schema if p.kind == "image" else cloud_schema, "protobuf"))
        cols = (
            ["data", "format", "frame_id"]
            if p.kind == "image"
            else ["timestamp_ns", "frame_id", "point_stride", "fields", "data"]
        )
        readers[p.stream] = _RowReader(p.path, cols)
    for s, cs in groups.items():
        schema = writer.register_schema(f"ad_platform.signals.{s}", "jsonschema", _json_schema(cs, s))
        channel(f"/signals/{s}", schema, "json")
    for s in gnss:
        channel(f"/gnss/{s}", fix_schema, "protobuf")
    sync_schema = writer.register_schema("ad_platform.SyncError", "jsonschema", _json_schema(streams, ""))
    channel("/sync/error", sync_schema, "json")

    report = RecordingReport()
    counts: dict[str, int] = {}
    last_row: dict[str, int] = {}
    first_ns = last_ns = None

    def log(topic: str, t_ns: int, data: bytes, sequence: int) -> None:
        writer.add_message(channels[topic], log_time=t_ns, data=data, publish_time=t_ns, sequence=sequence)
        counts[topic] = counts.get(topic, 0) + 1

    per_row = {"timestamp_ns", "frame_index", *(p.row_column for p in payloads if p.row_column)}
    per_row |= {f"{s}.{c}" for s in gnss for c in ("latitude", "longitude", "altitude")}
    per_row |= {f"{s}.{c}" for s in streams for c in ("sync_error_ns", "in_tolerance")}
    row_columns = [c for c in columns if c in per_row]
    for batch in synced.iter_batches(batch_size=BATCH_ROWS):
        signals = {s: _json_objects(batch, cs, f"{s}.") for s, cs in groups.items()}
        for i, r in enumerate(batch.select(row_columns).to_pylist()):
            t, frame = int(r["timestamp_ns"]), int(r["frame_index"])
            first_ns = t if first_ns is None else first_ns
            last_ns = t
            for p in payloads:
                topic, _ = topics[p.stream]
                row = frame if p.row_column is None else r.get(p.row_column)
                if row is None or (p.kind == "pointcloud" and last_row.get(p.stream) == row):
                    continue
                last_row[p.stream] = int(row)
                payload = readers[p.stream].get(int(row))
                if p.kind == "image":
                    data = CompressedImage(
                        timestamp=_timestamp(t),
                        frame_id=payload.get("frame_id") or p.stream,
                        data=bytes(payload["data"]),
                        format=payload.get("format") or "jpeg",
                    ).SerializeToString()
                else:
                    data = _pointcloud(payload, p.stream)
                log(topic, t, data, frame)
            for s, objects in signals.items():
                log(f"/signals/{s}", t, objects[i], frame)
            for s in gnss:
                lat, lon = r[f"{s}.latitude"], r[f"{s}.longitude"]
                if lat is None or lon is None:
                    continue
                fix = LocationFix(
                    timestamp=_timestamp(t),
                    frame_id=s,
                    latitude=lat,
                    longitude=lon,
                    altitude=r.get(f"{s}.altitude") or 0.0,
                )
                log(f"/gnss/{s}", t, fix.SerializeToString(), frame)
            errors: dict[str, Any] = {
                s: (None if r.get(f"{s}.sync_error_ns") is None else r[f"{s}.sync_error_ns"] / 1e6) for s in streams
            }
            errors["out_of_tolerance"] = [s for s in streams if not r.get(f"{s}.in_tolerance")]
            log("/sync/error", t, json.dumps(errors).encode(), frame)
            report.frames += 1
    writer.finish()
    report.messages = dict(sorted(counts.items()))
    report.duration_s = ((last_ns - first_ns) / 1e9) if first_ns is not None and last_ns is not None else 0.0
    return report


def payload_tables(
    decoded_dir: Path, synced_columns: list[str], reference: str | None, kinds: Mapping[str, str]
) -> list[PayloadTable]:
    """The payload tables a synced drive references: the reference if it is an image table, and every stream
    matched by row index (``<stream>.row_index``) whose decoded table (``<stream>`` or ``<source>__<stream>``)
    is an image or point-cloud table. ``kinds``: decoded table stem -> its ``kind`` metadata."""
    out = []
    if reference and kinds.get(reference) == "image":
        out.append(PayloadTable(reference.split("__", 1)[-1], decoded_dir / f"{reference}.parquet", "image", None))
    for c in synced_columns:
        if not c.endswith(".row_index"):
            continue
        stream = c.removesuffix(".row_index")
        stem = next((s for s in sorted(kinds) if s == stream or s.endswith(f"__{stream}")), None)
        if stem is not None and stem != reference and kinds[stem] in ("image", "pointcloud"):
            out.append(PayloadTable(stream, decoded_dir / f"{stem}.parquet", kinds[stem], c))
    return out
