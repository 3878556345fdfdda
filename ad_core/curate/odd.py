"""Operational design domain (ODD) tags derived from a drive's synced signals, never read from its manifest.

Four tags per frame, each decided on a window of frames around it, and a drive-level tag (the majority):

- ``time_of_day``: ``day`` / ``dusk_dawn`` / ``night`` from the sun's elevation at the GNSS position and time.
- ``weather``: ``clear`` / ``rain`` / ``fog_snow`` from fog lamps, wipers, the rain sensor and the ambient
  temperature (light precipitation below freezing is snow).
- ``road_type``: ``motorway`` / ``rural`` / ``urban`` from the speed profile against the market's speed bands,
  stops and curvature (yaw rate / speed).
- ``manoeuvre``: ``standstill`` / ``straight`` / ``curve`` / ``turn`` (a junction) from the curvature over a few
  seconds: what a steering model must have seen in training before a test split can judge it there.

Signals are found by their *signal* name (the part after the stream prefix ``<stream>.``), from a configurable
list of candidates per role (:class:`OddSignals`), so a vehicle whose CAN logs call speed ``VehSpeed`` works
without code changes. A tag whose signals are missing is ``unknown`` with the reason, never a guess.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ad_common.lake_layout import ODD_TAGS, ODD_UNKNOWN

ODD_VALUES: dict[str, tuple[str, ...]] = {
    "time_of_day": ("day", "dusk_dawn", "night"),
    "weather": ("clear", "rain", "fog_snow"),
    "road_type": ("motorway", "rural", "urban"),
    "manoeuvre": ("standstill", "straight", "curve", "turn"),
}


@dataclass(frozen=True)
class OddSignals:
    """Candidate signal names per role, first match wins (case-insensitive, after the ``<stream>.`` prefix)."""

    # + the standard names: OBD-II PID 0x0D (CSS Electronics' OBD2 DBC) and J1939 SPN 84 in CCVS1
    speed_kmh: tuple[str, ...] = (
        "VehicleSpeed",
        "VehSpeed",
        "speed_kmh",
        "S01PID0D_VehicleSpeed",
        "WheelBasedVehicleSpeed",
    )
    yaw_rate_dps: tuple[str, ...] = ("YawRate", "YawRateRef", "yaw_rate_dps")
    wiper: tuple[str, ...] = ("WiperState", "WiperMode")
    headlight: tuple[str, ...] = ("HeadlightState",)
    rain_intensity: tuple[str, ...] = ("RainIntensity",)
    ambient_temp_c: tuple[str, ...] = ("OutsideTemperature", "AmbientTemp")
    latitude: tuple[str, ...] = ("latitude", "lat")
    longitude: tuple[str, ...] = ("longitude", "lon")


@dataclass(frozen=True)
class OddConfig:
    signals: OddSignals = field(default_factory=OddSignals)
    # Sun elevation bands (degrees): above day_min is day, below night_max is night, dusk/dawn in between
    # (nautical twilight to low sun: what a camera sees as neither day nor night).
    day_min_elevation_deg: float = 8.0
    night_max_elevation_deg: float = -12.0
    # Wiper and headlight codings of the vehicle's DBC (value tables): wiper >= wiper_on is running,
    # wiper >= wiper_heavy is continuous; headlight == fog_lamp is the fog lamp.
    wiper_on: float = 1.0
    wiper_heavy: float = 2.0
    fog_lamp: float = 4.0
    heavy_rain_intensity: float = 2.0
    snow_max_temp_c: float = 3.0
    # Speed bands per market (km/h), from its limits: the 90th percentile of moving speed at or above
    # motorway_min is a motorway, a median below urban_max is urban.
    motorway_min_kmh: dict[str, float] = field(
        default_factory=lambda: {"de": 100.0, "us": 95.0, "cn": 82.0, "jp": 68.0}
    )
    urban_max_kmh: dict[str, float] = field(default_factory=lambda: {"de": 60.0, "us": 60.0, "cn": 46.0, "jp": 40.0})
    default_motorway_min_kmh: float = 90.0
    default_urban_max_kmh: float = 50.0
    urban_curvature_1pm: float = 0.02  # a turn tighter than 50 m radius happens at junctions
    motorway_max_curvature_1pm: float = 0.0015
    road_edge_margin_s: float = 10.0
    # Manoeuvre per short window from the path curvature (yaw rate / speed): tighter than urban_curvature_1pm
    # is a junction turn, tighter than curve_curvature_1pm (2.5 km radius) a curve; below 5 km/h standstill.
    curve_curvature_1pm: float = 1 / 2500
    weather_window_s: float = 30.0
    road_window_s: float = 60.0
    manoeuvre_window_s: float = 3.0


@dataclass
class OddResult:
    """Per-frame tags (aligned with the input frames) and the drive-level summary."""

    frame_tags: dict[str, np.ndarray]  # tag -> array of str, one per frame
    drive_tags: dict[str, str]
    reasons: dict[str, str | None]  # tag -> why it is unknown (None where derived)
    shares: dict[str, dict[str, float]]  # tag -> {value: share of frames}
    signals_used: dict[str, str]  # role -> column


def find_column(columns: list[str], candidates: tuple[str, ...]) -> str | None:
    """The first column whose signal name (after ``<stream>.``) equals a candidate, case-insensitively."""
    by_signal: dict[str, str] = {}
    for column in columns:
        by_signal.setdefault(column.rsplit(".", 1)[-1].lower(), column)
    for name in candidates:
        if name.lower() in by_signal:
            return by_signal[name.lower()]
    return None


def solar_elevation_deg(timestamp_ns: np.ndarray, lat_deg: np.ndarray, lon_deg: np.ndarray) -> np.ndarray:
    """Sun elevation (degrees) at UTC times and positions (NOAA's low-precision formulas, error < 1 degree)."""
    days = timestamp_ns.astype(np.float64) / 86_400e9  # days since 1970-01-01 UTC
    day_of_year = np.floor(days - _days_to_year_start(days)) + 1
    hours = (days % 1.0) * 24.0
    gamma = 2 * math.pi / 365.0 * (day_of_year - 1 + (hours - 12) / 24)
    decl = (
        0.006918
        - 0.399912 * np.cos(gamma)
        + 0.070257 * np.sin(gamma)
        - 0.006758 * np.cos(2 * gamma)
        + 0.000907 * np.sin(2 * gamma)
    )
    eq_time_min = 229.18 * (
        0.000075 + 0.001868 * np.cos(gamma) - 0.032077 * np.sin(gamma) - 0.014615 * np.cos(2 * gamma)
    )
    solar_time_min = hours * 60 + eq_time_min + 4 * lon_deg
    hour_angle = np.radians(solar_time_min / 4 - 180)
    lat = np.radians(lat_deg)
    sin_el = np.sin(lat) * np.sin(decl) + np.cos(lat) * np.cos(decl) * np.cos(hour_angle)
    return np.degrees(np.arcsin(np.clip(sin_el, -1, 1)))


def _days_to_year_start(days: np.ndarray) -> np.ndarray:
    years = (days.astype("datetime64[D]").astype("datetime64[Y]")).astype("datetime64[D]")
    return years.astype(np.float64)


def _windows(timestamp_ns: np.ndarray, window_s: float) -> np.ndarray:
    return (
        ((timestamp_ns - timestamp_ns[0]) // int(window_s * 1e9)).astype(np.int64)
        if timestamp_ns.size
        else timestamp_ns
    )


def _per_window(window: np.ndarray, decide: Any) -> np.ndarray:
    out = np.empty(window.size, dtype=object)
    for w in np.unique(window):
        rows = np.flatnonzero(window == w)
        out[rows] = decide(rows)
    return out


def _column(table: pa.Table, name: str | None) -> np.ndarray | None:
    if name is None:
        return None
    return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)


def _majority(values: np.ndarray, rows: np.ndarray) -> float:
    finite = values[rows][np.isfinite(values[rows])]
    if not finite.size:
        return math.nan
    vals, counts = np.unique(finite, return_counts=True)
    return float(vals[np.argmax(counts)])


def _curvature(speed_kmh: np.ndarray, yaw_rate_dps: np.ndarray) -> np.ndarray:
    """|Path curvature| (1/m) = yaw rate / speed; 0 below 5 km/h, where yaw over a near-zero speed is noise."""
    curvature = np.abs(np.radians(yaw_rate_dps) / np.maximum(speed_kmh / 3.6, 0.1))
    curvature[~(speed_kmh >= 5)] = 0.0
    return curvature


def tag_frames(table: pa.Table, market: str, config: OddConfig | None = None) -> OddResult:
    """Derive the four ODD tags for every frame of a synced frames table (``timestamp_ns`` + signal columns)."""
    config = config or OddConfig()
    sig = config.signals
    columns = table.column_names
    ts = table.column("timestamp_ns").to_numpy(zero_copy_only=False).astype(np.int64)
    n = ts.size
    used: dict[str, str] = {}

    def find(role: str) -> np.ndarray | None:
        col = find_column(columns, getattr(sig, role))
        if col is not None:
            used[role] = col
        return _column(table, col)

    tags: dict[str, np.ndarray] = {}
    reasons: dict[str, str | None] = {}

    # time of day
    lat, lon = find("latitude"), find("longitude")
    if lat is None or lon is None or not np.isfinite(lat).any():
        tags["time_of_day"] = np.full(n, ODD_UNKNOWN, dtype=object)
        reasons["time_of_day"] = f"no GNSS position: no signal named one of {sig.latitude} / {sig.longitude}"
    else:
        elevation = solar_elevation_deg(ts, lat, lon)
        tod = np.where(
            elevation > config.day_min_elevation_deg,
            "day",
            np.where(elevation < config.night_max_elevation_deg, "night", "dusk_dawn"),
        ).astype(object)
        tod[~np.isfinite(elevation)] = ODD_UNKNOWN
        tags["time_of_day"], reasons["time_of_day"] = tod, None

    # weather
    wiper, headlight, rain, temp = find("wiper"), find("headlight"), find("rain_intensity"), find("ambient_temp_c")
    if wiper is None and rain is None and headlight is None:
        tags["weather"] = np.full(n, ODD_UNKNOWN, dtype=object)
        reasons["weather"] = (
            f"no wiper, rain-sensor or headlight signal (looked for {sig.wiper + sig.rain_intensity + sig.headlight})"
        )
    else:

        def weather(rows: np.ndarray) -> str:
            if headlight is not None and _majority(headlight, rows) == config.fog_lamp:
                return "fog_snow"
            wipe = _majority(wiper, rows) if wiper is not None else math.nan
            intensity = float(np.nanmedian(rain[rows])) if rain is not None and np.isfinite(rain[rows]).any() else 0.0
            heavy = (wipe >= config.wiper_heavy) or intensity >= config.heavy_rain_intensity
            light = (wipe >= config.wiper_on) or intensity > 0.3
            if heavy:
                return "rain"
            if light:
                cold = temp is not None and float(np.nanmedian(temp[rows])) <= config.snow_max_temp_c
                return "fog_snow" if cold else "rain"
            return "clear"

        tags["weather"] = _per_window(_windows(ts, config.weather_window_s), weather)
        reasons["weather"] = None

    # road type
    speed, yaw = find("speed_kmh"), find("yaw_rate_dps")
    if speed is None:
        tags["road_type"] = np.full(n, ODD_UNKNOWN, dtype=object)
        reasons["road_type"] = f"no vehicle speed signal (looked for {sig.speed_kmh})"
    else:
        motorway_min = config.motorway_min_kmh.get(market, config.default_motorway_min_kmh)
        urban_max = config.urban_max_kmh.get(market, config.default_urban_max_kmh)
        curvature = _curvature(speed, yaw) if yaw is not None else np.zeros(n)
        # Ignition-on and parking are no evidence of the road: the first and last seconds are not judged.
        margin = int(config.road_edge_margin_s * 1e9)
        judged = (ts >= ts[0] + margin) & (ts <= ts[-1] - margin) if n else np.zeros(0, dtype=bool)

        def road(rows: np.ndarray) -> str:
            rows = rows[judged[rows]]
            v = speed[rows]
            moving = v[np.isfinite(v) & (v > 5)]
            if moving.size < max(3, rows.size // 10):
                return ODD_UNKNOWN  # standing still: no evidence either way
            still = (v < 2).astype(np.int8)
            stops = int(np.sum(np.diff(still) == 1))
            k95 = float(np.nanpercentile(curvature[rows], 95))
            if np.percentile(moving, 90) >= motorway_min and k95 < config.motorway_max_curvature_1pm:
                return "motorway"
            if np.median(moving) < urban_max or stops > 0 or k95 > config.urban_curvature_1pm:
                return "urban"
            return "rural"

        road_tags = _per_window(_windows(ts, config.road_window_s), road)
        known = road_tags[road_tags != ODD_UNKNOWN]
        if known.size:  # a window without evidence (start, end, a long stop) is on the drive's usual road
            road_tags[road_tags == ODD_UNKNOWN] = Counter(known).most_common(1)[0][0]
        tags["road_type"] = road_tags
        reasons["road_type"] = None
        if n and np.all(tags["road_type"] == ODD_UNKNOWN):
            reasons["road_type"] = "the vehicle never moved faster than 5 km/h"

    # manoeuvre
    if speed is None or yaw is None:
        missing = "vehicle speed" if speed is None else "yaw rate"
        looked = sig.speed_kmh if speed is None else sig.yaw_rate_dps
        tags["manoeuvre"] = np.full(n, ODD_UNKNOWN, dtype=object)
        reasons["manoeuvre"] = f"no {missing} signal (looked for {looked})"
    else:
        curvature = _curvature(speed, yaw)

        def manoeuvre(rows: np.ndarray) -> str:
            v = speed[rows]
            if not np.isfinite(v).any() or np.nanmedian(v) < 5:
                return "standstill"
            k = float(np.nanmax(curvature[rows]))
            if k > config.urban_curvature_1pm:
                return "turn"
            return "curve" if k > config.curve_curvature_1pm else "straight"

        tags["manoeuvre"] = _per_window(_windows(ts, config.manoeuvre_window_s), manoeuvre)
        reasons["manoeuvre"] = None

    drive_tags: dict[str, str] = {}
    shares: dict[str, dict[str, float]] = {}
    for tag in ODD_TAGS:
        counts = Counter(str(v) for v in tags[tag])
        shares[tag] = {value: round(count / max(n, 1), 4) for value, count in sorted(counts.items())}
        known = [(count, value) for value, count in counts.items() if value != ODD_UNKNOWN]
        drive_tags[tag] = max(known)[1] if known else ODD_UNKNOWN
        if not n:
            reasons[tag] = "no frames"
    return OddResult(tags, drive_tags, reasons, shares, used)


def required_columns(columns: list[str], config: OddConfig | None = None) -> list[str]:
    """The columns :func:`tag_frames` reads from a synced frames table (read only these)."""
    sig = (config or OddConfig()).signals
    roles = [getattr(sig, name) for name in sig.__dataclass_fields__]
    found = {find_column(columns, candidates) for candidates in roles}
    return ["timestamp_ns", "frame_index", *sorted(c for c in found if c)]


GEO_CELL_RESOLUTION = 6  # H3 resolution 6: hexagons of ~3.7 km edge, "a few km" of place


def geo_cells(lat: np.ndarray, lon: np.ndarray, resolution: int = GEO_CELL_RESOLUTION) -> list[str | None]:
    """The H3 cell of each position (None where there is no fix)."""
    import h3

    cache: dict[tuple[float, float], str] = {}
    out: list[str | None] = []
    for la, lo in zip(lat.tolist(), lon.tolist(), strict=True):
        if not (math.isfinite(la) and math.isfinite(lo)) or (la == 0.0 and lo == 0.0):
            out.append(None)
            continue
        key = (round(la, 3), round(lo, 3))  # ~100 m: far below a cell, saves most of the h3 calls
        if key not in cache:
            cache[key] = h3.latlng_to_cell(la, lo, resolution)
        out.append(cache[key])
    return out


def tag_synced_drive(
    frames_parquet: str, market: str, config: OddConfig | None = None, resolution: int = GEO_CELL_RESOLUTION
) -> tuple[pa.Table, OddResult]:
    """Per-frame tags and geo cells of one synced drive (reads only the columns the rules use)."""
    import pyarrow.parquet as pq

    from ad_common.lake_layout import FRAME_TAGS_SCHEMA

    config = config or OddConfig()
    table = pq.read_table(frames_parquet, columns=required_columns(pq.read_schema(frames_parquet).names, config))
    result = tag_frames(table, market, config)
    n = table.num_rows
    lat_col = result.signals_used.get("latitude")
    lon_col = result.signals_used.get("longitude")
    lat = _column(table, lat_col) if lat_col and lon_col else np.full(n, np.nan)
    lon = _column(table, lon_col) if lat_col and lon_col else np.full(n, np.nan)
    assert lat is not None and lon is not None
    columns = {
        "frame_index": table.column("frame_index"),
        "timestamp_ns": table.column("timestamp_ns"),
        "latitude": pa.array(lat, pa.float64(), mask=~np.isfinite(lat)),
        "longitude": pa.array(lon, pa.float64(), mask=~np.isfinite(lon)),
        "geo_cell": pa.array(geo_cells(lat, lon, resolution), pa.string()),
        **{tag: pa.array(result.frame_tags[tag].astype(str).tolist(), pa.string()) for tag in ODD_TAGS},
    }
    return pa.table(columns, schema=FRAME_TAGS_SCHEMA), result
