"""Quality rules of synced frames: enough frames within tolerance, every required sensor present."""

from __future__ import annotations

import pandas as pd

from ad_core.quality.rules import QualityRule, _gx
from ad_core.sync import SyncReport

MIN_WITHIN_TOLERANCE = 0.99

SYNCED_RULES: tuple[QualityRule, ...] = (
    QualityRule(
        "frames_within_tolerance",
        True,
        f"At least {MIN_WITHIN_TOLERANCE:.0%} of frames have every synced stream within its tolerance.",
        "streams",
        ("stream", "method", "tolerance_ms", "out_of_tolerance", "max_abs_sync_error_ms"),
        lambda: [_gx().ExpectColumnValuesToBeBetween(column="within_tolerance_ratio", min_value=MIN_WITHIN_TOLERANCE)],
    ),
    QualityRule(
        "required_sensors_present",
        True,
        "Camera, lidar, IMU, GNSS and vehicle speed are all present in the drive.",
        "sensors",
        ("sensor", "stream"),
        lambda: [_gx().ExpectColumnValuesToBeInSet(column="present", value_set=[True])],
    ),
)


def sync_tables(report: SyncReport, present: dict[str, bool], streams: dict[str, str]) -> dict[str, pd.DataFrame]:
    rows = [
        {
            "stream": name,
            "method": stats.method,
            "tolerance_ms": stats.tolerance_ns / 1e6,
            "within_tolerance_ratio": stats.within_tolerance_ratio,
            "out_of_tolerance": stats.out_of_tolerance,
            "max_abs_sync_error_ms": None if stats.max_abs_sync_error_ns is None else stats.max_abs_sync_error_ns / 1e6,
        }
        for name, stats in report.streams.items()
    ]
    sensors = [{"sensor": s, "stream": streams[s], "present": ok} for s, ok in present.items()]
    return {"streams": pd.DataFrame(rows), "sensors": pd.DataFrame(sensors)}
