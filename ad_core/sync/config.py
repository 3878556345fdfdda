"""Declarative description of one drive's sync: the reference clock and the streams mapped onto it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ad_core.sync.core import METHODS, Method

TIMESTAMP_COLUMN = "timestamp_ns"
#: Output columns that are not ``<stream>.<...>``.
FRAME_COLUMNS: tuple[str, ...] = ("timestamp_ns", "frame_index")


@dataclass(frozen=True)
class StreamSpec:
    """One decoded stream (Parquet with a sorted int64 ``timestamp_ns`` column) to sync onto the frames.

    ``clock_offset_ns`` is the logger-reported offset of the sensor clock: it is *subtracted* from the
    stream's timestamps before matching. ``row_index=True`` adds ``<name>.row_index`` (the used row of the
    stream's table; single-sample methods only), which is how a lidar sweep is referenced without copying
    its payload.
    """

    name: str
    path: Path
    columns: Sequence[str]
    method: Method
    tolerance_ns: int
    causal: bool = False
    clock_offset_ns: int = 0
    row_index: bool = False

    def __post_init__(self) -> None:
        if not self.name or "." in self.name:
            raise ValueError(f"stream name {self.name!r} must be non-empty and contain no '.'")
        if self.method not in METHODS:
            raise ValueError(f"stream {self.name!r}: unknown method {self.method!r}; expected one of {METHODS}")
        if self.tolerance_ns < 0:
            raise ValueError(f"stream {self.name!r}: tolerance_ns must be >= 0")
        if len(set(self.columns)) != len(self.columns):
            raise ValueError(f"stream {self.name!r}: duplicate columns {list(self.columns)}")
        if self.row_index and self.method == "linear" and not self.causal:
            raise ValueError(f"stream {self.name!r}: row_index needs a single-sample method, not linear")
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "columns", tuple(self.columns))

    @property
    def single_sample(self) -> bool:
        """True when each frame uses exactly one row (previous, nearest, or any causal stream)."""
        return self.method != "linear" or self.causal


@dataclass(frozen=True)
class ReferenceSpec:
    """The reference clock: one output row per row of this table (the front camera's frames)."""

    path: Path
    name: str = "camera_front"
    clock_offset_ns: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))


@dataclass(frozen=True)
class GridReference:
    """A fixed-rate reference clock: frames at every multiple of ``period_ns`` in ``[start_ns, end_ns]``.

    For drives without a camera or lidar (most CAN-only vehicle logs): the frames are a grid on the vehicle
    clock, generated batch by batch (never materialised as a whole), so memory stays bounded as with a table.
    """

    start_ns: int
    end_ns: int
    period_ns: int
    name: str = "grid"

    def __post_init__(self) -> None:
        if self.period_ns <= 0:
            raise ValueError(f"grid period must be positive, got {self.period_ns} ns")
        if self.end_ns < self.start_ns:
            raise ValueError(f"grid ends ({self.end_ns}) before it starts ({self.start_ns})")

    @property
    def first_ns(self) -> int:
        """The first grid point at or after ``start_ns`` (points are multiples of the period: reproducible)."""
        return -(-self.start_ns // self.period_ns) * self.period_ns

    @property
    def frames(self) -> int:
        return max(0, (self.end_ns - self.first_ns) // self.period_ns + 1)


@dataclass(frozen=True)
class SyncConfig:
    """How to sync one drive.

    ``window_ns`` bounds memory: the reference is processed in time windows of this length, each stream
    contributing only the rows that window needs (see docs/sync.md). ``read_batch_rows`` and
    ``output_row_group_rows`` are tuning knobs (the tests shrink them to exercise every carry-over edge).
    """

    reference: ReferenceSpec | StreamSpec | GridReference | Path
    streams: Sequence[StreamSpec]
    window_ns: int = 20_000_000_000  # a 336-channel 1 kHz stream: 20 s ~ 27 MiB of float32 per window
    drop_out_of_tolerance: bool = False
    read_batch_rows: int = 131_072
    output_row_group_rows: int = 131_072
    compression: str = "zstd"

    def __post_init__(self) -> None:
        ref = self.reference
        if isinstance(ref, StreamSpec):
            ref = ReferenceSpec(ref.path, ref.name, ref.clock_offset_ns)
        elif not isinstance(ref, ReferenceSpec | GridReference):
            ref = ReferenceSpec(Path(ref))
        object.__setattr__(self, "reference", ref)
        object.__setattr__(self, "streams", tuple(self.streams))
        if self.window_ns <= 0 or self.read_batch_rows <= 0 or self.output_row_group_rows <= 0:
            raise ValueError("window_ns, read_batch_rows and output_row_group_rows must be positive")
        names = [s.name for s in self.streams]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate stream names: {names}")

    @property
    def ref(self) -> ReferenceSpec | GridReference:
        assert isinstance(self.reference, ReferenceSpec | GridReference)  # normalised in __post_init__
        return self.reference
