"""Which decoded streams a drive's synced frames carry, and how each is matched to the reference clock.

The drive's sensor profile (``profiles.py``) says which stream plays which role, which roles are required and
what the clock is: a role's stream (the front camera, a lidar) or a fixed-rate grid on the vehicle clock for
signal-only drives. Point clouds and other cameras are attached by nearest frame (row index, no payload), float
signals are interpolated linearly, integer and boolean states take the previous value. A role may carry its
own tolerance; any other stream gets a few of its own sample periods. A drive that cannot be synced gets a
plan without a config and the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ad_core.sync.config import GridReference, StreamSpec, SyncConfig
from ad_core.sync.profiles import RoleMatch, SensorProfile, StreamInfo

MS = 1_000_000
DEFAULT_TOLERANCE_PERIODS = 3
MIN_TOLERANCE_NS = 20 * MS
CAUSAL_TOLERANCE_PERIODS = 1.5
MAX_GRID_SPAN_NS = 24 * 3600 * 10**9  # a longer span is a clock that jumps, not a drive
SKIP_COLUMNS = {"timestamp_ns", "header_stamp_ns", "publish_time_ns", "frame_index", "bus", "can_id"}


@dataclass(frozen=True)
class _Table:
    info: StreamInfo
    path: Path
    rows: int
    first_ns: int
    last_ns: int


@dataclass(frozen=True)
class SyncPlan:
    config: SyncConfig | None  # None: the drive cannot be synced, ``reason`` says why
    profile: SensorProfile
    roles: dict[str, RoleMatch | None]  # role -> the stream playing it (None: no stream does)
    reference: str  # what the frames are: "front_camera (mcap__camera_front_compressed)", "grid 10 Hz", ...
    reason: str | None = None
    checked: frozenset[str] = frozenset()  # sync stream names held to their tolerance by the check
    reference_stream: str = ""  # the decoded table the frames are built on ("" for a grid)

    @property
    def present(self) -> dict[str, bool]:
        """Required role -> present in this drive."""
        return {role: self.roles.get(role) is not None for role in self.profile.required}


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


def _is_payload_table(kind: str) -> bool:
    """Camera frames and point clouds, as the decode contract tags them (file metadata ``kind``)."""
    return kind in ("image", "pointcloud")


def _short_name(stream: str) -> str:
    # Sync output columns are "<name>.<column>": names must not contain dots.
    return stream.split("__", 1)[-1].replace(".", "_")


def _read_table(path: Path) -> _Table:
    parquet = pq.ParquetFile(path)
    meta = {k.decode(): v.decode() for k, v in (parquet.schema_arrow.metadata or {}).items()}
    info = StreamInfo(
        name=path.stem,
        kind=meta.get("kind", ""),
        topic=meta.get("mcap_topic") or meta.get("can_message", ""),
        schema=meta.get("schema_name", ""),
        columns=tuple(parquet.schema_arrow.names),
    )
    rows = parquet.metadata.num_rows
    if not rows:
        return _Table(info, path, 0, 0, 0)
    # Tables are sorted by time: the first row group starts the span and the last ends it (one column each)
    first = parquet.read_row_group(0, columns=["timestamp_ns"]).column(0)[0].as_py()
    last = parquet.read_row_group(parquet.num_row_groups - 1, columns=["timestamp_ns"]).column(0)[-1].as_py()
    return _Table(info, path, rows, int(first), int(last))


def _grid(hz: float, tables: Mapping[str, _Table], roles: Mapping[str, RoleMatch | None]) -> tuple[GridReference, str]:
    """A grid over the span the role streams share (every frame can have every role); over the busiest stream
    (the vehicle clock's heartbeat) when they share none or no role is found."""
    period = round(1e9 / hz)
    streams = sorted({m.stream for m in roles.values() if m is not None})
    shared = (max(tables[s].first_ns for s in streams), min(tables[s].last_ns for s in streams)) if streams else None
    if shared and shared[0] <= shared[1] and len(streams) > 1:
        return GridReference(*shared, period, name=f"grid_{hz:g}hz"), "+".join(streams)
    beat = max([tables[s] for s in streams] or tables.values(), key=lambda t: (t.rows, t.info.name))
    return GridReference(beat.first_ns, beat.last_ns, period, name=f"grid_{hz:g}hz"), beat.info.name


def _reference(
    profile: SensorProfile, tables: Mapping[str, _Table], roles: Mapping[str, RoleMatch | None]
) -> tuple[GridReference | Path | None, str, str]:
    """(reference, what it is, the stream it uses or "") or (None, why not, "")."""
    tried = []
    for choice in profile.reference:
        if isinstance(choice, float):
            grid, beat = _grid(choice, tables, roles)
            hours = (grid.end_ns - grid.start_ns) / 3.6e12
            if grid.end_ns - grid.start_ns > MAX_GRID_SPAN_NS:
                why = (
                    f"the {choice:g} Hz grid over {beat} would span {hours:.0f} h: that stream's clock jumps "
                    "(see the clock_sanity check of decoded_signals); fix its timestamps"
                )
                return None, why, ""
            return grid, f"grid {choice:g} Hz over {beat}", ""
        match = roles.get(choice)
        if match is not None:
            return tables[match.stream].path, f"{choice} ({match.stream})", match.stream
        tried.append(choice)
    return (
        None,
        (
            f"sensor profile {profile.label} has no reference clock for this drive: no stream plays "
            f"{' or '.join(tried)}; add the role's stream, or a grid_hz fallback to the profile's reference"
        ),
        "",
    )


def build_sync_plan(
    decoded_dir: Path, profile: SensorProfile, *, mdf_clock_offset_ns: int = 0, causal: bool = False
) -> SyncPlan:
    """The SyncConfig for one decoded drive; ``mdf_clock_offset_ns`` is removed from MDF and CAN streams."""
    found = [t for t in map(_read_table, sorted(decoded_dir.glob("*.parquet"))) if t.rows]
    # raw CAN frames (no DBC decodes them) are kept in the lake, but there is nothing in them to interpolate
    tables = {t.info.name: t for t in found if t.info.kind != "can_raw"}
    roles = profile.resolve([t.info for t in tables.values()])
    if not tables:
        why = "no decoded stream has any rows: there is nothing to sync"
        if found:
            why = (
                "only raw CAN frames were decoded (no DBC knows their ids): add the vehicle's DBC to the market's "
                "_dbc folder and re-decode the drive"
            )
        return SyncPlan(None, profile, roles, "", why)
    reference, what, ref_stream = _reference(profile, tables, roles)
    if reference is None:
        return SyncPlan(None, profile, roles, "", what)
    role_streams = {m.stream for m in roles.values() if m is not None}
    tolerances = {
        m.stream: profile.roles[role].tolerance_ns
        for role, m in roles.items()
        if m is not None and profile.roles[role].tolerance_ns is not None
    }
    streams: list[StreamSpec] = []
    checked: set[str] = set()
    for name, table in tables.items():
        if name == ref_stream:
            continue
        parquet = pq.ParquetFile(table.path)
        period = _median_period_ns(parquet)
        if period is None:
            continue
        tolerance = tolerances.get(name) or max(MIN_TOLERANCE_NS, DEFAULT_TOLERANCE_PERIODS * period)
        if causal:  # holding the last sample is up to one period old by design, plus logger jitter
            tolerance = max(tolerance, int(CAUSAL_TOLERANCE_PERIODS * period))
        common: dict[str, Any] = {"tolerance_ns": tolerance, "causal": causal, "clock_offset_ns": 0}
        if name.startswith(("mdf__", "can__")):
            common["clock_offset_ns"] = mdf_clock_offset_ns
        specs = []
        if _is_payload_table(table.info.kind):  # lidar sweeps, other cameras: reference the row, never the payload
            specs.append(StreamSpec(_short_name(name), table.path, [], "nearest", row_index=True, **common))
        else:
            floats, discrete = _stream_columns(parquet.schema_arrow)
            if floats:
                specs.append(StreamSpec(_short_name(name), table.path, floats, "linear", **common))
            if discrete:
                specs.append(StreamSpec(f"{_short_name(name)}_state", table.path, discrete, "previous", **common))
        streams += specs
        if profile.tolerance_check == "all" or name in role_streams:
            checked.update(s.name for s in specs)
    config = SyncConfig(reference=reference, streams=streams)
    return SyncPlan(config, profile, roles, what, None, frozenset(checked), ref_stream)


def mdf_clock_offset(manifest: Mapping[str, Any] | None) -> int:
    """The MDF logger's clock offset from a drive manifest (0 when the drive has none).

    MCAP ``log_time`` is stamped by the logger on the reference clock; MDF groups and the CAN frames in them
    share the MDF logger's clock, whose offset the manifest records per sensor.
    """
    sensors = (manifest or {}).get("sensors", {})
    offsets = {int(s.get("clock_offset_ns", 0)) for s in sensors.values() if str(s.get("file", "")).endswith(".mf4")}
    return offsets.pop() if len(offsets) == 1 else 0
