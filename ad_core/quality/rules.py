"""The data-quality rules of decoded drives, as Great Expectations expectations over profile tables.

Each rule becomes one Dagster asset check. Blocking rules guard against data that would poison training
(time running backwards, impossible values, holes, frozen sensors); the rate, clock and loss rules only warn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ad_core.decode.report import DriveDecodeReport
from ad_core.quality.profile import SignalProfile, StreamProfile

MAX_GAP_FLOOR_S = 1.0  # a gap shorter than this never blocks (loggers buffer)
MAX_GAP_PERIODS = 5  # ... nor one shorter than five nominal periods of a slow stream
MAX_FLAT_RUN_S = 10.0  # healthy drives: < 2 s (speeds fluctuate); a frozen sensor: tens of seconds
MAX_NAN_RUN_S = 5.0
RATE_TOLERANCE = 0.10


@dataclass(frozen=True)
class QualityRule:
    name: str
    blocking: bool
    description: str
    table: str  # "streams" | "signals"
    id_columns: tuple[str, ...]
    expectations: Callable[[], list[Any]]


def _gx() -> Any:
    from ad_common.gx import gx

    return gx.expectations


DECODED_RULES: tuple[QualityRule, ...] = (
    QualityRule(
        "sensor_clock_monotonic",
        True,
        "Sensor timestamps (message header stamps; MDF master times in the order recorded) never run backwards "
        "within a stream.",
        "streams",
        ("stream", "sensor_clock_backward_at_ns", "sensor_clock_max_backward_s", "out_of_order_samples"),
        lambda: [
            _gx().ExpectColumnValuesToBeBetween(column="sensor_clock_backward_steps", max_value=0),
            _gx().ExpectColumnValuesToBeBetween(column="out_of_order_samples", max_value=0),
        ],
    ),
    QualityRule(
        "physical_ranges",
        True,
        "Speed, yaw rate, steering, accelerations and lat/lon stay within physically possible limits.",
        "signals",
        ("stream", "signal", "range_min", "range_max", "out_of_range_sample"),
        lambda: [_gx().ExpectColumnValuesToBeBetween(column="out_of_range_rows", max_value=0)],
    ),
    QualityRule(
        "no_gaps",
        True,
        f"No stream has a gap longer than max({MAX_GAP_FLOOR_S} s, {MAX_GAP_PERIODS} nominal periods); log "
        "(rosout) and raw CAN frame tables are not signals and are exempt.",
        "streams",
        ("stream", "max_gap_at_ns"),
        lambda: [
            _gx().ExpectColumnPairValuesAToBeGreaterThanB(column_A="gap_limit_s", column_B="max_gap_s", or_equal=True)
        ],
    ),
    QualityRule(
        "no_flatlines_or_nan_runs",
        True,
        f"Key continuous signals are not frozen at a non-zero value for over {MAX_FLAT_RUN_S:.0f} s and no "
        f"signal is NaN for over {MAX_NAN_RUN_S:.0f} s.",
        "signals",
        ("stream", "signal", "flat_value", "flat_from_ns"),
        lambda: [
            _gx().ExpectColumnValuesToBeBetween(column="longest_flat_run_s", max_value=MAX_FLAT_RUN_S),
            _gx().ExpectColumnValuesToBeBetween(column="longest_nan_run_s", max_value=MAX_NAN_RUN_S),
        ],
    ),
    QualityRule(
        "clock_sanity",
        False,
        "Every stream's timestamps are absolute, plausible UTC times: no relative clock (1970, time since boot), "
        "no date in the future, no clock jump of over a day, header stamps agreeing with log times, and the "
        "drive's streams starting within a day of each other.",
        "streams",
        ("stream", "first_ns", "clock_issue"),
        lambda: [_gx().ExpectColumnValuesToBeNull(column="clock_issue")],
    ),
    QualityRule(
        "nothing_dropped",
        False,
        "Every file decoded and every stream decoded completely: no decoder error, no skipped or salvaged stream, "
        "no CAN frames left undecoded (kept raw in can__unknown_frames), no message whose signals are all null.",
        "decode",
        ("stream", "status", "error"),
        lambda: [_gx().ExpectColumnValuesToBeInSet(column="status", value_set=["ok"])],
    ),
    QualityRule(
        "rates_within_tolerance",
        False,
        f"Each stream with a nominal rate in the drive manifest runs within ±{RATE_TOLERANCE:.0%} of it.",
        "streams",
        ("stream", "nominal_hz", "rate_hz"),
        lambda: [
            _gx().ExpectColumnValuesToBeBetween(
                column="rate_ratio", min_value=1 - RATE_TOLERANCE, max_value=1 + RATE_TOLERANCE, mostly=1.0
            )
        ],
    ),
)


def decode_table(report: DriveDecodeReport) -> pd.DataFrame:
    """One row per stream and per drive-level decoder error (file failures, damaged groups): ``nothing_dropped``."""
    rows = [{"stream": s.name, "status": s.status, "error": s.error} for s in report.streams]
    rows += [{"stream": None, "status": "error", "error": e} for e in report.errors]
    return pd.DataFrame(rows, columns=["stream", "status", "error"])


def profile_tables(
    streams: list[StreamProfile], signals: list[SignalProfile], report: DriveDecodeReport
) -> dict[str, pd.DataFrame]:
    """The tables the rules validate; ``gap_limit_s`` derives from the observed or nominal rate."""
    stream_rows = []
    for s in streams:
        row = s.row()
        rate = s.nominal_hz or s.rate_hz
        # log messages (rosout) come when something happens, and a raw CAN table mixes unrelated ids: a quiet
        # stretch in either is no hole in a signal
        event_stream = s.kind in ("log", "can_raw") and not s.nominal_hz
        row["gap_limit_s"] = max(MAX_GAP_FLOOR_S, MAX_GAP_PERIODS / rate) if rate and not event_stream else float("inf")
        stream_rows.append(row)
    return {
        "streams": pd.DataFrame(stream_rows),
        "signals": pd.DataFrame([s.row() for s in signals]),
        "decode": decode_table(report),
    }
