"""Streaming profiles of a decoded drive: the facts the data-quality expectations are checked against.

One pass over each stream, batch by batch, with state carried across batch boundaries (a gap or a flat
line can straddle two batches), so a 10-hour drive costs no more memory than a 10-minute one. The result
is one small table row per stream and per (stream, signal): Great Expectations validates those tables.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TIME = "timestamp_ns"
SENSOR_TIME = "header_stamp_ns"
BATCH_ROWS = 262_144
SAMPLE_SIZE = 5
NS = 1_000_000_000
DAY_NS = 86_400 * NS
# UTC epoch ns before 2000-01-01 is not a real log date: a clock counting from boot, or simulation time
EARLIEST_PLAUSIBLE_NS = 946_684_800 * NS
MAX_CLOCK_STEP_NS = DAY_NS  # a forward jump longer than this inside one stream is a clock change, not a gap

# (lower, upper) physical limits by column name; a value outside is physically impossible, not just rare.
_SPEED_KMH = (0.0, 300.0)
PHYSICAL_RANGES: dict[str, tuple[float, float]] = {
    **dict.fromkeys(
        ("VehicleSpeed", "VehSpeed", "WheelSpeed_FL", "WheelSpeed_FR", "WheelSpeed_RL", "WheelSpeed_RR"), _SPEED_KMH
    ),
    **dict.fromkeys(("YawRate", "YawRateRef"), (-180.0, 180.0)),  # deg/s
    **dict.fromkeys(("SteeringWheelAngle", "SteerWheelAngle"), (-900.0, 900.0)),  # deg
    **dict.fromkeys(("LateralAccel", "LongitudinalAccel", "LatAccel", "LongAccel"), (-20.0, 20.0)),  # m/s^2
    **dict.fromkeys(("linear_acceleration.x", "linear_acceleration.y", "linear_acceleration.z"), (-50.0, 50.0)),
    "angular_velocity.z": (-5.0, 5.0),  # rad/s
    "latitude": (-90.0, 90.0),
    "longitude": (-180.0, 180.0),
}
# Continuous signals that cannot hold one non-zero value for long while a car drives (0 = standing still).
FLATLINE_SIGNALS = frozenset({"VehicleSpeed", "VehSpeed", "WheelSpeed_FL", "WheelSpeed_RR"})


@dataclass
class StreamProfile:
    stream: str
    rows: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    max_gap_s: float = 0.0
    max_gap_at_ns: int | None = None
    sensor_clock_backward_steps: int = 0
    sensor_clock_max_backward_s: float = 0.0
    sensor_clock_backward_at_ns: list[int] = field(default_factory=list)
    # samples out of recorded order before the decoder sorted the table (file metadata ``out_of_order_samples``)
    out_of_order_samples: int = 0
    nominal_hz: float | None = None
    kind: str = ""  # the decode contract's stream kind (file metadata)
    # what is wrong with this stream's clock (clock_sanity check): relative, future, jumping, disagreeing
    clock_issue: str | None = None
    header_offset_ns: int | None = None  # first header stamp minus first log time (streams with header stamps)

    @property
    def rate_hz(self) -> float | None:
        if self.rows < 2 or self.first_ns is None or self.last_ns is None or self.last_ns == self.first_ns:
            return None
        return (self.rows - 1) / ((self.last_ns - self.first_ns) / NS)

    def row(self) -> dict[str, object]:
        data = asdict(self)
        data["rate_hz"] = self.rate_hz
        data["rate_ratio"] = None if not self.nominal_hz or self.rate_hz is None else self.rate_hz / self.nominal_hz
        return data


@dataclass
class SignalProfile:
    stream: str
    signal: str
    rows: int = 0
    nan_rows: int = 0
    longest_nan_run_s: float = 0.0
    longest_flat_run_s: float = 0.0
    flat_value: float | None = None
    flat_from_ns: int | None = None
    range_min: float | None = None
    range_max: float | None = None
    out_of_range_rows: int = 0
    out_of_range_sample: list[dict[str, float]] = field(default_factory=list)

    def row(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class _RunTracker:
    """Longest run, in time, of consecutive samples that share a key, carried across batches.

    Vectorised per batch (no per-sample Python): a run starts where a member sample does not join its
    predecessor and ends where the next sample does not join it; a run still open at the end of a batch
    continues into the next one.
    """

    open_start_ns: int | None = None
    open_key: float | None = None
    longest_s: float = 0.0
    longest_key: float | None = None
    longest_from_ns: int | None = None

    def update(self, t: np.ndarray, member: np.ndarray, key: np.ndarray) -> None:
        if len(t) == 0:
            return
        carried = self.open_start_ns is not None
        prev_member = np.concatenate([[carried], member[:-1]])
        prev_key = np.concatenate([[np.nan if self.open_key is None else self.open_key], key[:-1]])
        joins = member & prev_member & (key == prev_key)
        starts = np.flatnonzero(member & ~joins)
        ends = np.flatnonzero(member & ~np.append(joins[1:], False))
        start_ns = t[starts].astype(np.int64)
        start_keys = key[starts]
        if joins[0]:  # the first run continues the one carried from the previous batch
            start_ns = np.concatenate([[self.open_start_ns], start_ns])
            start_keys = np.concatenate([[self.open_key], start_keys])
        if len(ends):
            durations = (t[ends].astype(np.int64) - start_ns) / NS
            best = int(np.argmax(durations))
            if durations[best] > self.longest_s:
                self.longest_s = float(durations[best])
                self.longest_key, self.longest_from_ns = float(start_keys[best]), int(start_ns[best])
        if member[-1]:
            self.open_start_ns, self.open_key = int(start_ns[-1]), float(key[-1])
        else:
            self.open_start_ns, self.open_key = None, None


class _SignalProfiler:
    def __init__(self, stream: str, signal: str) -> None:
        self.profile = SignalProfile(stream, signal)
        low_high = PHYSICAL_RANGES.get(signal)
        if low_high:
            self.profile.range_min, self.profile.range_max = low_high
        self.flat = _RunTracker() if signal in FLATLINE_SIGNALS else None
        self.nan = _RunTracker()

    def update(self, t: np.ndarray, v: np.ndarray) -> None:
        """Samples of this signal (nulls -- a multiplexor value not selected, J1939 "not available" -- are
        absent samples, not values: the caller leaves them out; NaN values are counted)."""
        p = self.profile
        p.rows += len(v)
        isnan = np.isnan(v) if v.dtype.kind == "f" else np.zeros(len(v), dtype=bool)
        nans = int(np.count_nonzero(isnan))
        p.nan_rows += nans
        if nans or self.nan.open_start_ns is not None:  # else nothing to track (most batches of most signals)
            self.nan.update(t, isnan, np.zeros(len(v)))
            p.longest_nan_run_s = self.nan.longest_s
        if self.flat is None and p.range_min is None:
            return
        v = v.astype(np.float64, copy=False)
        if self.flat is not None:
            self.flat.update(t, ~isnan & (v != 0), v)  # standing still at 0 is legitimate
            p.longest_flat_run_s = self.flat.longest_s
            p.flat_value, p.flat_from_ns = self.flat.longest_key, self.flat.longest_from_ns
        if p.range_min is not None and p.range_max is not None:
            bad = ~isnan & ((v < p.range_min) | (v > p.range_max))
            count = int(bad.sum())
            if count:
                p.out_of_range_rows += count
                room = SAMPLE_SIZE - len(p.out_of_range_sample)
                for i in np.flatnonzero(bad)[:room]:
                    p.out_of_range_sample.append({"timestamp_ns": int(t[i]), "value": float(v[i])})


def _numeric_signals(schema: pa.Schema) -> list[str]:
    skip = {TIME, SENSOR_TIME, "publish_time_ns", "frame_index", "bus", "can_id"}
    return [
        f.name
        for f in schema
        if f.name not in skip
        and (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))
        and not f.name.endswith((".sec", ".nsec", ".nanosec", "Counter", "Valid"))
    ]


class StreamProfiler:
    """The profile of one stream table, fed its rows in order (any batch sizes), e.g. by the decoder as it writes
    the table, so that no one reads the table back; ``profile_stream`` feeds it a Parquet file."""

    def __init__(
        self,
        stream: str,
        schema: pa.Schema,
        *,
        kind: str = "",
        nominal_hz: float | None = None,
        signals: Iterable[str] | None = None,
    ) -> None:
        self.profile = StreamProfile(stream, nominal_hz=nominal_hz, kind=kind)
        wanted = [s for s in (signals if signals is not None else _numeric_signals(schema)) if s in schema.names]
        self.has_sensor_time = SENSOR_TIME in schema.names
        self.columns = [TIME, *([SENSOR_TIME] if self.has_sensor_time else []), *wanted]
        self.signals = {s: _SignalProfiler(stream, s) for s in wanted}
        self._last_t: int | None = None
        self._last_sensor: int | None = None

    def update(self, batch: pa.RecordBatch | pa.Table) -> None:
        """The next rows of the table (``timestamp_ns`` sorted across calls); other columns are not read."""
        profile = self.profile
        t = _numpy(batch.column(TIME), np.int64)
        if len(t) == 0:
            return
        profile.rows += len(t)
        profile.first_ns = int(t[0]) if profile.first_ns is None else profile.first_ns
        profile.last_ns = int(t[-1])
        steps = np.diff(t, prepend=t[0] if self._last_t is None else self._last_t)
        gap_index = int(np.argmax(steps))
        if steps[gap_index] / NS > profile.max_gap_s:
            profile.max_gap_s, profile.max_gap_at_ns = steps[gap_index] / NS, int(t[gap_index])
        self._last_t = int(t[-1])
        if self.has_sensor_time:
            s = _numpy(batch.column(SENSOR_TIME), np.int64)
            back = np.diff(s, prepend=s[0] if self._last_sensor is None else self._last_sensor)
            backwards = np.flatnonzero(back < 0)
            if len(backwards):
                profile.sensor_clock_backward_steps += len(backwards)
                profile.sensor_clock_max_backward_s = max(profile.sensor_clock_max_backward_s, -back.min() / NS)
                room = SAMPLE_SIZE - len(profile.sensor_clock_backward_at_ns)
                profile.sensor_clock_backward_at_ns += [int(t[i]) for i in backwards[:room]]
            self._last_sensor = int(s[-1])
            if profile.header_offset_ns is None:
                stamped = np.flatnonzero(s)  # a zero stamp is "not set", not a clock
                if len(stamped):
                    profile.header_offset_ns = int(s[stamped[0]]) - int(t[stamped[0]])
        for name, profiler in self.signals.items():
            column = batch.column(name)
            values = column.to_numpy(zero_copy_only=False)  # float64 only where a limit is compared
            if column.null_count:
                present = _numpy(column.is_valid(), bool)
                profiler.update(t[present], values[present])
            else:
                profiler.update(t, values)

    def finish(
        self, out_of_order_samples: int = 0, now_ns: int | None = None
    ) -> tuple[StreamProfile, list[SignalProfile]]:
        self.profile.out_of_order_samples = out_of_order_samples
        self.profile.clock_issue = _clock_issue(self.profile, time.time_ns() if now_ns is None else now_ns)
        return self.profile, [p.profile for p in self.signals.values()]


def _numpy(column: pa.Array | pa.ChunkedArray, dtype: type) -> np.ndarray:
    return column.to_numpy(zero_copy_only=False).astype(dtype, copy=False)


def profile_stream(
    path: Path, nominal_hz: float | None = None, signals: Iterable[str] | None = None
) -> tuple[StreamProfile, list[SignalProfile]]:
    """Profile one decoded stream table (``timestamp_ns`` sorted; optional sensor ``header_stamp_ns``)."""
    parquet = pq.ParquetFile(path)
    now_ns = time.time_ns()
    kv = parquet.metadata.metadata or {}
    profiler = StreamProfiler(
        path.stem, parquet.schema_arrow, kind=kv.get(b"kind", b"").decode(), nominal_hz=nominal_hz, signals=signals
    )
    for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=profiler.columns):
        profiler.update(batch)
    return profiler.finish(int(kv.get(b"out_of_order_samples", b"0") or 0), now_ns)


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ns / NS))


def _clock_issue(p: StreamProfile, now_ns: int) -> str | None:
    """Why this stream's timestamps cannot be absolute UTC times, or None."""
    if p.first_ns is None or p.last_ns is None:
        return None
    if p.first_ns < EARLIEST_PLAUSIBLE_NS:
        return (
            f"relative timestamps: starts {p.first_ns / NS:.3f} s after 1970-01-01 (time since boot or simulation "
            "time); re-stamp the log with the logger's absolute start time"
        )
    if p.last_ns > now_ns + DAY_NS:
        return f"implausible date: runs until {_when(p.last_ns)}, in the future; check the logger's clock"
    if p.max_gap_s * NS > MAX_CLOCK_STEP_NS:
        return (
            f"clock jump: {p.max_gap_s / 3600:.1f} h forward at {_when(p.max_gap_at_ns or 0)}; the logger's clock "
            "was reset or set mid-drive"
        )
    if p.header_offset_ns is not None and abs(p.header_offset_ns) > DAY_NS:
        return (
            f"header stamps and log times disagree by {abs(p.header_offset_ns) / DAY_NS:.0f} days (one of them is "
            "relative, or in another unit, e.g. milliseconds written as nanoseconds)"
        )
    return None


def profile_drive(
    decoded_dir: Path, nominal_rates: Mapping[str, float] | None = None
) -> tuple[list[StreamProfile], list[SignalProfile]]:
    """Profile every stream table of a decoded drive by reading it (binary payload columns are never read)."""
    profiles = [profile_stream(path) for path in sorted(decoded_dir.glob("*.parquet"))]
    return drive_profiles(profiles, nominal_rates)


def drive_profiles(
    profiles: Iterable[tuple[StreamProfile, list[SignalProfile]]], nominal_rates: Mapping[str, float] | None = None
) -> tuple[list[StreamProfile], list[SignalProfile]]:
    """A drive's stream profiles (from ``profile_stream`` or gathered while the tables were written), with the
    manifest's nominal rates and the checks that compare streams with each other."""
    streams, signals = [], []
    for stream_profile, signal_profiles in sorted(profiles, key=lambda p: p[0].stream):
        stream_profile.nominal_hz = (nominal_rates or {}).get(stream_profile.stream)
        streams.append(stream_profile)
        signals += signal_profiles
    # Streams whose clocks are each plausible can still disagree: a drive's streams start within a day
    starts = sorted(s.first_ns for s in streams if s.first_ns is not None and s.clock_issue is None)
    if starts:
        median = starts[len(starts) // 2]
        for s in streams:
            if s.clock_issue is None and s.first_ns is not None and abs(s.first_ns - median) > DAY_NS:
                s.clock_issue = (
                    f"starts {abs(s.first_ns - median) / DAY_NS:.0f} days away from the drive's other streams "
                    f"({_when(s.first_ns)} vs {_when(median)}): their clocks disagree"
                )
    return streams, signals
