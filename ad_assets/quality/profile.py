"""Streaming profiles of a decoded drive: the facts the data-quality expectations are checked against.

One pass over each stream, batch by batch, with state carried across batch boundaries (a gap or a flat
line can straddle two batches), so a 10-hour drive costs no more memory than a 10-minute one. The result
is one small table row per stream and per (stream, signal): Great Expectations validates those tables.
"""

from __future__ import annotations

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
    nominal_hz: float | None = None

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
class _Run:
    """A run of equal (or NaN) values that may continue into the next batch."""

    value: float | None = None
    start_ns: int | None = None
    last_ns: int | None = None


def _longest_runs(t: np.ndarray, same_as_previous: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start index and end index (inclusive) of every maximal run where ``same_as_previous`` holds."""
    starts_mask = ~same_as_previous
    starts = np.flatnonzero(starts_mask)
    ends = np.append(starts[1:] - 1, len(t) - 1)
    return starts, ends


class _SignalProfiler:
    def __init__(self, stream: str, signal: str) -> None:
        self.profile = SignalProfile(stream, signal)
        low_high = PHYSICAL_RANGES.get(signal)
        if low_high:
            self.profile.range_min, self.profile.range_max = low_high
        self.flat = _Run()
        self.nan = _Run()

    def _extend_run(self, run: _Run, t: np.ndarray, same: np.ndarray, values: np.ndarray | None) -> float:
        """Fold this batch into the carried run; return the longest run (s) completed or ongoing."""
        if len(t) == 0:
            return 0.0
        starts, ends = _longest_runs(t, same)
        longest = 0.0
        for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
            start_ns = int(t[s])
            if i == 0 and s == 0 and run.start_ns is not None and same[0]:
                start_ns = run.start_ns  # continues the run carried from the previous batch
            duration = (int(t[e]) - start_ns) / NS
            if duration > longest:
                longest = duration
                if values is not None:
                    self.profile.flat_value, self.profile.flat_from_ns = float(values[s]), start_ns
            if i == len(starts) - 1:
                run.start_ns, run.last_ns = start_ns, int(t[e])
                run.value = None if values is None else float(values[e])
        return longest

    def update(self, t: np.ndarray, v: np.ndarray) -> None:
        p = self.profile
        p.rows += len(v)
        isnan = np.isnan(v)
        p.nan_rows += int(isnan.sum())
        # NaN runs: "same" = this and the previous sample are both NaN.
        prev_nan = np.concatenate([[self.nan.value is not None and self.nan.last_ns is not None], isnan[:-1]])
        nan_same = isnan & prev_nan
        longest_nan = self._extend_run_nan(t, isnan, nan_same)
        p.longest_nan_run_s = max(p.longest_nan_run_s, longest_nan)
        if p.signal in FLATLINE_SIGNALS:
            previous = np.concatenate([[np.nan if self.flat.value is None else self.flat.value], v[:-1]])
            same = (v == previous) & (v != 0)  # standing still at 0 is legitimate
            nonzero_flat = self._extend_run(self.flat, t, same, v)
            p.longest_flat_run_s = max(p.longest_flat_run_s, nonzero_flat)
        if p.range_min is not None and p.range_max is not None:
            bad = ~isnan & ((v < p.range_min) | (v > p.range_max))
            count = int(bad.sum())
            if count:
                p.out_of_range_rows += count
                room = SAMPLE_SIZE - len(p.out_of_range_sample)
                for i in np.flatnonzero(bad)[:room]:
                    p.out_of_range_sample.append({"timestamp_ns": int(t[i]), "value": float(v[i])})

    def _extend_run_nan(self, t: np.ndarray, isnan: np.ndarray, nan_same: np.ndarray) -> float:
        if not isnan.any():
            self.nan.value = None
            return 0.0
        longest = 0.0
        idx = np.flatnonzero(isnan)
        # Runs of consecutive NaN indices.
        breaks = np.flatnonzero(np.diff(idx) != 1)
        run_starts = np.concatenate([[idx[0]], idx[breaks + 1]])
        run_ends = np.concatenate([idx[breaks], [idx[-1]]])
        for s, e in zip(run_starts, run_ends, strict=True):
            start_ns = int(t[s])
            if s == 0 and nan_same[0] and self.nan.start_ns is not None:
                start_ns = self.nan.start_ns
            longest = max(longest, (int(t[e]) - start_ns) / NS)
            self.nan.start_ns = start_ns
        self.nan.value = 1.0 if isnan[-1] else None
        self.nan.last_ns = int(t[-1]) if isnan[-1] else None
        return longest


def _numeric_signals(schema: pa.Schema) -> list[str]:
    skip = {TIME, SENSOR_TIME, "publish_time_ns", "frame_index", "bus", "can_id"}
    return [
        f.name
        for f in schema
        if f.name not in skip
        and (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))
        and not f.name.endswith((".sec", ".nsec", ".nanosec", "Counter", "Valid"))
    ]


def profile_stream(
    path: Path, nominal_hz: float | None = None, signals: Iterable[str] | None = None
) -> tuple[StreamProfile, list[SignalProfile]]:
    """Profile one decoded stream table (``timestamp_ns`` sorted; optional sensor ``header_stamp_ns``)."""
    parquet = pq.ParquetFile(path)
    schema = parquet.schema_arrow
    stream = path.stem
    wanted = [s for s in (signals if signals is not None else _numeric_signals(schema)) if s in schema.names]
    has_sensor_time = SENSOR_TIME in schema.names
    columns = [TIME, *([SENSOR_TIME] if has_sensor_time else []), *wanted]
    profile = StreamProfile(stream, nominal_hz=nominal_hz)
    profilers = {s: _SignalProfiler(stream, s) for s in wanted}
    last_t: int | None = None
    last_sensor: int | None = None
    for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns):
        t = batch.column(TIME).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        if len(t) == 0:
            continue
        profile.rows += len(t)
        profile.first_ns = int(t[0]) if profile.first_ns is None else profile.first_ns
        profile.last_ns = int(t[-1])
        steps = np.diff(t, prepend=t[0] if last_t is None else last_t)
        gap_index = int(np.argmax(steps))
        if steps[gap_index] / NS > profile.max_gap_s:
            profile.max_gap_s, profile.max_gap_at_ns = steps[gap_index] / NS, int(t[gap_index])
        last_t = int(t[-1])
        if has_sensor_time:
            s = batch.column(SENSOR_TIME).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
            back = np.diff(s, prepend=s[0] if last_sensor is None else last_sensor)
            backwards = np.flatnonzero(back < 0)
            if len(backwards):
                profile.sensor_clock_backward_steps += len(backwards)
                profile.sensor_clock_max_backward_s = max(profile.sensor_clock_max_backward_s, -back.min() / NS)
                room = SAMPLE_SIZE - len(profile.sensor_clock_backward_at_ns)
                profile.sensor_clock_backward_at_ns += [int(t[i]) for i in backwards[:room]]
            last_sensor = int(s[-1])
        for name, profiler in profilers.items():
            values = batch.column(name).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
            profiler.update(t, values)
    return profile, [p.profile for p in profilers.values()]


def profile_drive(
    decoded_dir: Path, nominal_rates: Mapping[str, float] | None = None
) -> tuple[list[StreamProfile], list[SignalProfile]]:
    """Profile every stream table of a decoded drive (binary payload columns are never read)."""
    streams, signals = [], []
    for path in sorted(decoded_dir.glob("*.parquet")):
        stream_profile, signal_profiles = profile_stream(path, (nominal_rates or {}).get(path.stem))
        streams.append(stream_profile)
        signals += signal_profiles
    return streams, signals
