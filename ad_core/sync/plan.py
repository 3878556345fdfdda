"""Which decoded streams a drive's synced frames carry, and how each is matched to the camera clock.

Works on any decoded drive: the front camera (or another image stream, or for lidar-only logs the first point
cloud) is the reference, point clouds
are attached by nearest sweep (row index, no payload), float signals are interpolated linearly, integer
and boolean states take the previous value. Known fleet streams get tuned tolerances; anything else gets
a tolerance of a few of its own sample periods.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ad_core.sync.config import StreamSpec, SyncConfig

MS = 1_000_000
REFERENCE_STREAM = "mcap__camera_front_compressed"
# Sensors every training sample needs: a frame without them is not a sample.
REQUIRED_STREAMS: dict[str, str] = {
    "camera": REFERENCE_STREAM,
    "lidar": "mcap__lidar_top_points",
    "imu": "mcap__imu_data",
    "gnss": "mcap__gnss_fix",
    "vehicle_speed": "can__esp_vehicle_speed",
}
TOLERANCE_NS: dict[str, int] = {
    "mcap__lidar_top_points": 60 * MS,  # 10 Hz sweeps: the nearest is at most 50 ms away
    "mcap__imu_data": 20 * MS,
    "mcap__gnss_fix": 200 * MS,
}
DEFAULT_TOLERANCE_PERIODS = 3
MIN_TOLERANCE_NS = 20 * MS
CAUSAL_TOLERANCE_PERIODS = 1.5
SKIP_COLUMNS = {"timestamp_ns", "header_stamp_ns", "publish_time_ns", "frame_index", "bus", "can_id"}


@dataclass(frozen=True)
class SyncPlan:
    config: SyncConfig
    present: dict[str, bool]  # required sensor -> present in this drive


def _stream_columns(schema: pa.Schema) -> tuple[list[str], list[str]]:
    """(continuous float columns, discrete integer/bool columns) worth carrying into the frames."""
    floats, discrete = [], []
    for f in schema:
        if f.name in SKIP_COLUMNS or f.name.endswith((".sec", ".nsec", ".nanosec", "Counter")):
            continue
        if pa.types.is_floating(f.type):
            floats.append(f.name)
        elif pa.types.is_integer(f.type) or pa.types.is_boolean(f.type):
            discrete.append(f.name)
    return floats, discrete


def _median_period_ns(parquet: pq.ParquetFile) -> int | None:
    if parquet.metadata.num_rows < 2:
        return None
    head = parquet.read_row_group(0, columns=["timestamp_ns"]).column(0).to_numpy()[:2000]
    steps = np.diff(head)
    steps = steps[steps > 0]
    return int(np.median(steps)) if len(steps) else None


def _is_payload_table(schema: pa.Schema) -> bool:
    """Camera frames and point clouds, as the decode contract tags them (file metadata ``kind``)."""
    return (schema.metadata or {}).get(b"kind") in (b"image", b"pointcloud")


def _short_name(stream: str) -> str:
    # Sync output columns are "<name>.<column>": names must not contain dots.
    return stream.split("__", 1)[-1].replace(".", "_")


def build_sync_plan(decoded_dir: Path, *, mdf_clock_offset_ns: int = 0, causal: bool = False) -> SyncPlan:
    """The SyncConfig for one decoded drive; ``mdf_clock_offset_ns`` is removed from MDF and CAN streams."""
    tables = {p.stem: p for p in sorted(decoded_dir.glob("*.parquet"))}
    payload = {name for name, path in tables.items() if _is_payload_table(pq.read_schema(path))}
    # The front camera; else any camera; else (a lidar-only log) the first point-cloud stream.
    cameras = sorted(n for n in payload if pq.read_schema(tables[n]).metadata.get(b"kind") == b"image")
    candidates = [REFERENCE_STREAM] if REFERENCE_STREAM in tables else cameras or sorted(payload)
    present = {sensor: stream in tables for sensor, stream in REQUIRED_STREAMS.items()}
    if not candidates:
        raise ValueError(f"{decoded_dir}: no camera or point-cloud stream to use as the reference clock")
    reference = candidates[0]
    streams: list[StreamSpec] = []
    for name, path in tables.items():
        if name == reference:
            continue
        parquet = pq.ParquetFile(path)
        period = _median_period_ns(parquet)
        if period is None:
            continue
        tolerance = TOLERANCE_NS.get(name, max(MIN_TOLERANCE_NS, DEFAULT_TOLERANCE_PERIODS * period))
        if causal:  # holding the last sample is up to one period old by design, plus logger jitter
            tolerance = max(tolerance, int(CAUSAL_TOLERANCE_PERIODS * period))
        common: dict[str, Any] = {"tolerance_ns": tolerance, "causal": causal, "clock_offset_ns": 0}
        if name.startswith(("mdf__", "can__")):
            common["clock_offset_ns"] = mdf_clock_offset_ns
        if name in payload:  # lidar sweeps, other cameras: reference the row, never copy the payload
            streams.append(StreamSpec(_short_name(name), path, [], "nearest", row_index=True, **common))
            continue
        floats, discrete = _stream_columns(parquet.schema_arrow)
        if floats:
            streams.append(StreamSpec(_short_name(name), path, floats, "linear", **common))
        if discrete:
            streams.append(StreamSpec(f"{_short_name(name)}_state", path, discrete, "previous", **common))
    return SyncPlan(SyncConfig(reference=tables[reference], streams=streams), present)


def mdf_clock_offset(manifest: Mapping[str, Any] | None) -> int:
    """The MDF logger's clock offset from a drive manifest (0 when the drive has none).

    MCAP ``log_time`` is stamped by the logger on the reference clock; MDF groups and the CAN frames in them
    share the MDF logger's clock, whose offset the manifest records per sensor.
    """
    sensors = (manifest or {}).get("sensors", {})
    offsets = {int(s.get("clock_offset_ns", 0)) for s in sensors.values() if str(s.get("file", "")).endswith(".mf4")}
    return offsets.pop() if len(offsets) == 1 else 0
