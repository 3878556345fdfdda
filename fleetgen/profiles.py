"""Per-market driving profiles and the per-drive specification derived from (market, index, seed).

Everything a drive looks like is decided here from a seeded RNG, so the manifest plus the seed is enough to
regenerate the noise-free ground truth later (``ground_truth``) without reading the data files.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

GENERATOR_VERSION = "1.2.0"

# Vehicle geometry used by the bicycle model: steering_wheel = STEERING_RATIO * atan(WHEELBASE_M * curvature).
WHEELBASE_M = 2.85
STEERING_RATIO = 15.5
TRACK_WIDTH_M = 1.60
LANE_WIDTH_M = 3.5

FAULT_TYPES = ("gnss_dropout", "stuck_speed", "clock_jump")

# The drive dates start here; drive ``index`` lands on day ``index`` after it, so ids are unique per vehicle.
BASE_DATE = datetime(2026, 3, 2, tzinfo=UTC)


@dataclass(frozen=True)
class MarketProfile:
    market: str
    driving_side: str  # "right" or "left" (JP drives on the left)
    utc_offset_h: int  # local time zone (standard time), to place day/dusk/night drives
    start_lat: float
    start_lon: float
    speed_kmh: dict[str, tuple[float, float]]  # road type -> (low, high) desired cruise speed
    weather_mix: dict[str, float]
    time_of_day_mix: dict[str, float]
    road_mix: dict[str, float]
    temperature_c: float  # typical March outside temperature
    highway_limits_mph: tuple[float, ...] = ()  # US posts mph limits; desired speeds cluster around them
    center_line_yellow: bool = False
    # Each market's vehicle programme has its own front-camera module and ISP tuning (exposure target, gain):
    # the same scene comes out this much brighter/darker than on the DE programme, at any time of day.
    camera_gain: float = 1.0


MARKETS: dict[str, MarketProfile] = {
    "de": MarketProfile(
        "de",
        "right",
        1,
        48.1372,
        11.5756,
        {"urban": (30, 50), "rural": (70, 100), "highway": (110, 160)},
        {"clear": 0.45, "rain": 0.35, "fog": 0.10, "snow": 0.10},
        {"day": 0.60, "dusk": 0.20, "night": 0.20},
        {"urban": 0.30, "rural": 0.30, "highway": 0.40},
        temperature_c=7.0,
        camera_gain=0.90,
    ),
    "us": MarketProfile(
        "us",
        "right",
        -8,
        37.3861,
        -122.0839,
        {"urban": (35, 50), "rural": (75, 95), "highway": (100, 125)},
        {"clear": 0.70, "rain": 0.15, "fog": 0.10, "snow": 0.05},
        {"day": 0.60, "dusk": 0.20, "night": 0.20},
        {"urban": 0.20, "rural": 0.20, "highway": 0.60},
        temperature_c=14.0,
        highway_limits_mph=(65.0, 75.0),
        center_line_yellow=True,
        camera_gain=1.27,
    ),
    "cn": MarketProfile(
        "cn",
        "right",
        8,
        31.2304,
        121.4737,
        {"urban": (20, 50), "rural": (50, 80), "highway": (90, 120)},
        {"clear": 0.55, "rain": 0.25, "fog": 0.15, "snow": 0.05},
        {"day": 0.55, "dusk": 0.20, "night": 0.25},
        {"urban": 0.60, "rural": 0.15, "highway": 0.25},
        temperature_c=12.0,
        camera_gain=0.76,
    ),
    "jp": MarketProfile(
        "jp",
        "left",
        9,
        35.6762,
        139.6503,
        {"urban": (20, 40), "rural": (40, 60), "highway": (80, 110)},
        {"clear": 0.60, "rain": 0.30, "fog": 0.05, "snow": 0.05},
        {"day": 0.45, "dusk": 0.20, "night": 0.35},
        {"urban": 0.60, "rural": 0.20, "highway": 0.20},
        temperature_c=10.0,
        camera_gain=1.07,
    ),
}

LOCAL_START_HOURS = {"day": (8.0, 15.5), "dusk": (17.5, 18.5), "night": (20.0, 23.0)}

# Sensor streams: file kind, stream (MCAP topic or MDF group), nominal rate. Rates of camera are per drive.
MDF_STREAMS = {
    "can": ("CAN_DataFrame", 100.0),
    "environment": ("Environment_10Hz", 10.0),
    "chassis": ("Chassis_100Hz", 100.0),
    "powertrain": ("Powertrain_1kHz", 1000.0),
}
MCAP_STREAMS = {
    "camera_front": ("/camera/front/compressed", None),
    "lidar_top": ("/lidar/top/points", 10.0),
    "imu": ("/imu/data", 200.0),
    "gnss": ("/gnss/fix", 10.0),
    "logger": ("/logger/status", 1.0),
}
# Transport latency (receive - capture) per MCAP stream, ns; jitter is added on top (always >= 0).
LATENCY_NS = {"camera_front": 25_000_000, "lidar_top": 40_000_000, "imu": 1_000_000, "gnss": 60_000_000, "logger": 0}


def market_code(market: str) -> int:
    return zlib.crc32(market.encode())


def drive_rng(seed: int, market: str, index: int, stream: int) -> np.random.Generator:
    """Independent, reproducible random stream per (drive, purpose): changing one purpose never shifts another."""
    return np.random.default_rng([seed, market_code(market), index, stream])


def _pick(rng: np.random.Generator, mix: dict[str, float]) -> str:
    keys = list(mix)
    p = np.array([mix[k] for k in keys])
    return str(keys[int(rng.choice(len(keys), p=p / p.sum()))])


@dataclass
class DriveSpec:
    market: str
    index: int
    seed: int
    duration_s: float
    drive_id: str
    vehicle_id: str
    start_time_ns: int
    odd: dict[str, str]
    clock_offsets_ns: dict[str, int]
    faults: list[dict[str, Any]] = field(default_factory=list)

    @property
    def profile(self) -> MarketProfile:
        return MARKETS[self.market]


def make_spec(
    market: str,
    index: int,
    minutes: float,
    seed: int,
    faults: tuple[str, ...] | list[str] = (),
    duration_s: float | None = None,
) -> DriveSpec:
    if market not in MARKETS:
        raise ValueError(f"unknown market {market!r}; known: {sorted(MARKETS)}")
    unknown = set(faults) - set(FAULT_TYPES)
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}; known: {FAULT_TYPES}")
    prof = MARKETS[market]
    rng = drive_rng(seed, market, index, 0)
    odd = {
        "weather": _pick(rng, prof.weather_mix),
        "time_of_day": _pick(rng, prof.time_of_day_mix),
        "road_type": _pick(rng, prof.road_mix),
    }
    # A small fleet per market; several drives can share a vehicle but never a start time.
    vehicle_no = 1 + int(rng.integers(0, 40))
    lo, hi = LOCAL_START_HOURS[odd["time_of_day"]]
    local_h = float(rng.uniform(lo, hi))
    start = BASE_DATE + timedelta(days=index, hours=local_h - prof.utc_offset_h)
    start = start.replace(microsecond=0)
    start_ns = int(start.timestamp()) * 1_000_000_000
    vehicle_id = f"veh{vehicle_no:03d}"
    drive_id = f"{market}-{vehicle_id}-{start:%Y%m%dt%H%M%S}"
    # Sensor clock - UTC. The MDF logger and the MCAP logger are different boxes; MCAP log_time is the
    # reference (offset 0), sensor header stamps and the MDF logger clock are not.
    offsets = {
        "mdf_logger": int(rng.integers(5, 80)) * 1_000_000 + int(rng.integers(0, 1000)) * 1000,
        "camera_front": int(rng.integers(-20_000, 20_000)) * 1000,
        "lidar_top": int(rng.integers(-5_000, 5_000)) * 1000,
        "imu": int(rng.integers(-3_000, 3_000)) * 1000,
        "gnss": 0,  # GNSS receivers discipline their clock to GPS/UTC
    }
    if duration_s is None:
        duration_s = round(float(minutes) * 60.0, 3)
    if duration_s < 20.0:
        raise ValueError("a drive needs at least 20 s (start-up, driving and the final stop)")
    spec = DriveSpec(market, index, seed, duration_s, drive_id, vehicle_id, start_ns, odd, offsets)
    spec.faults = _make_faults(drive_rng(seed, market, index, 9), tuple(faults), duration_s)
    return spec


def camera_exposure(spec: DriveSpec) -> float:
    """The market camera's gain times this drive's auto-exposure settling point (log-normal, sigma 2 %)."""
    return spec.profile.camera_gain * math.exp(0.02 * float(drive_rng(spec.seed, spec.market, spec.index, 10).normal()))


def _make_faults(rng: np.random.Generator, faults: tuple[str, ...], duration_s: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for kind in FAULT_TYPES:  # fixed order: the manifest does not depend on the order the caller listed them
        if kind not in faults:
            continue
        if kind == "gnss_dropout":
            length = float(min(8.0, 0.2 * duration_s))
            start = float(rng.uniform(0.3, 0.6) * duration_s)
            out.append(
                {"type": kind, "stream": "/gnss/fix", "start_s": round(start, 3), "end_s": round(start + length, 3)}
            )
        elif kind == "stuck_speed":
            length = float(min(60.0, 0.3 * duration_s))
            start = float(rng.uniform(0.25, 0.45) * duration_s)
            out.append(
                {
                    "type": kind,
                    "stream": "CAN_DataFrame",
                    "signal": "VehicleSpeed",
                    "start_s": round(start, 3),
                    "end_s": round(start + length, 3),
                }
            )
        elif kind == "clock_jump":
            at = float(rng.uniform(0.55, 0.75) * duration_s)
            out.append({"type": kind, "stream": "/imu/data", "at_s": round(at, 3), "jump_ns": -1_500_000_000})
    return out
