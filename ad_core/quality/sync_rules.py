"""Quality rules of synced frames: a reference clock, enough frames within tolerance, the required roles present."""

from __future__ import annotations

import pandas as pd

from ad_core.quality.rules import QualityRule, _gx
from ad_core.sync import SyncReport
from ad_core.sync.plan import SyncPlan

MIN_WITHIN_TOLERANCE = 0.99
REFERENCE_CHECK = "sync_reference_available"

SYNCED_RULES: tuple[QualityRule, ...] = (
    QualityRule(
        REFERENCE_CHECK,
        True,
        "The drive's sensor profile finds a reference clock for it (a role's stream, or a fixed-rate grid over a "
        "plausible span); the reason says what is missing when it does not.",
        "reference",
        ("profile", "reason"),
        lambda: [_gx().ExpectColumnValuesToBeInSet(column="available", value_set=[True])],
    ),
    QualityRule(
        "frames_within_tolerance",
        True,
        f"At least {MIN_WITHIN_TOLERANCE:.0%} of frames have every checked stream within its tolerance (the "
        "profile's role streams, or every stream where the profile says so).",
        "streams",
        ("stream", "method", "tolerance_ms", "out_of_tolerance", "max_abs_sync_error_ms"),
        lambda: [_gx().ExpectColumnValuesToBeBetween(column="within_tolerance_ratio", min_value=MIN_WITHIN_TOLERANCE)],
    ),
    QualityRule(
        "required_sensors_present",
        True,
        "Every role the drive's sensor profile requires (the demo fleet: camera, lidar, IMU, GNSS, vehicle "
        "speed) has a stream in the drive.",
        "sensors",
        ("role", "profile"),
        lambda: [_gx().ExpectColumnValuesToBeInSet(column="present", value_set=[True])],
    ),
)

_STREAM_COLUMNS = ["stream", "method", "tolerance_ms", "within_tolerance_ratio", "out_of_tolerance"]


def sync_tables(report: SyncReport | None, plan: SyncPlan) -> dict[str, pd.DataFrame]:
    """The tables the synced rules validate; ``report`` is None for a drive that could not be synced."""
    rows = [
        {
            "stream": name,
            "method": stats.method,
            "tolerance_ms": stats.tolerance_ns / 1e6,
            "within_tolerance_ratio": stats.within_tolerance_ratio,
            "out_of_tolerance": stats.out_of_tolerance,
            "max_abs_sync_error_ms": None if stats.max_abs_sync_error_ns is None else stats.max_abs_sync_error_ns / 1e6,
        }
        for name, stats in (report.streams.items() if report else ())
        if name in plan.checked
    ]
    sensors = [
        {"role": role, "profile": plan.profile.label, "stream": match.stream if match else None, "present": bool(match)}
        for role in plan.profile.required
        for match in [plan.roles.get(role)]
    ]
    reference = [
        {
            "profile": plan.profile.label,
            "reference": plan.reference,
            "reason": plan.reason,
            "available": plan.config is not None,
        }
    ]
    return {
        "streams": pd.DataFrame(rows, columns=[*_STREAM_COLUMNS, "max_abs_sync_error_ms"]),
        "sensors": pd.DataFrame(sensors, columns=["role", "profile", "stream", "present"]),
        "reference": pd.DataFrame(reference),
    }
