"""The single motion profile that every stream of a drive is sampled from (noise-free, 100 Hz).

A path (curvature over distance) is laid out first; a driver model then follows desired speeds, slows for
curves (lateral acceleration limit) and, in town, stops at lights. Yaw rate, steering angle, lateral
acceleration and the GNSS track are all derived from speed and curvature, so they agree by construction:

    yaw_rate = v * k,  steering_wheel = STEERING_RATIO * atan(WHEELBASE_M * k),  a_lat = v^2 * k
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .profiles import STEERING_RATIO, TRACK_WIDTH_M, WHEELBASE_M, DriveSpec, drive_rng

RATE_HZ = 100
DT = 1.0 / RATE_HZ
DS = 0.5  # path grid, m
EARTH_R = 6_378_137.0

# Path layout per road type: straight length (m), curve radius (m), curve length (m), turn probability.
_PATH = {
    "urban": {"straight": (50, 200), "radius": (150, 400), "curve_len": (30, 80), "turn_p": 0.6},
    "rural": {"straight": (80, 500), "radius": (150, 600), "curve_len": (50, 300), "turn_p": 0.0},
    "highway": {"straight": (100, 600), "radius": (800, 3000), "curve_len": (300, 1200), "turn_p": 0.0},
}
_A_LAT_MAX = {"urban": 2.5, "rural": 2.5, "highway": 2.0}  # m/s^2 a driver accepts in curves
_A_ACC = {"urban": 1.8, "rural": 1.5, "highway": 1.2}
_A_DEC = 2.5

GROUND_TRUTH_FIELDS = (
    "t_ns",
    "t_s",
    "speed_mps",
    "speed_kmh",
    "accel_mps2",
    "curvature_1pm",
    "yaw_rate_dps",
    "steering_deg",
    "steering_rate_dps",
    "road_wheel_deg",
    "lat_accel_mps2",
    "heading_deg",
    "x_m",
    "y_m",
    "lat",
    "lon",
    "alt_m",
    "distance_m",
    "wheel_fl_kmh",
    "wheel_fr_kmh",
    "wheel_rl_kmh",
    "wheel_rr_kmh",
    "accel_pedal_pct",
    "brake_pressure_bar",
    "gear",
    "turn_indicator",
    "wiper",
    "headlight",
    "outside_temp_c",
)


def _smooth(x: np.ndarray, n: int) -> np.ndarray:
    if n <= 1:
        return x
    kernel = np.ones(n) / n
    pad = np.concatenate([np.full(n, x[0]), x, np.full(n, x[-1])])
    return np.convolve(pad, kernel, mode="same")[n:-n]


def _path(spec: DriveSpec, rng: np.random.Generator, length_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Curvature on a DS grid, plus the distances of traffic-light stops (urban only)."""
    cfg = _PATH[spec.odd["road_type"]]
    ks: list[np.ndarray] = []
    stops: list[float] = []
    s = 0.0
    while s < length_m:
        straight = float(rng.uniform(*cfg["straight"]))
        ks.append(np.zeros(int(straight / DS)))
        s += straight
        if rng.random() < cfg["turn_p"]:
            # Intersection: stop at the line half the time, then a 90 degree turn with an urban corner radius.
            if rng.random() < 0.5:
                stops.append(s - 5.0)
            radius = float(rng.uniform(12, 25))
            length = radius * math.pi / 2
        else:
            radius = float(rng.uniform(*cfg["radius"]))
            length = float(rng.uniform(*cfg["curve_len"]))
        sign = 1.0 if rng.random() < 0.5 else -1.0
        ks.append(np.full(int(length / DS), sign / radius))
        s += length
    k = np.concatenate(ks)
    # Drivers (and clothoid road design) do not step the curvature: smooth over ~12 m.
    return _smooth(k, 25), np.array(stops)


def _desired_speeds(spec: DriveSpec, rng: np.random.Generator, length_m: float) -> np.ndarray:
    """Desired cruise speed (m/s) on the DS grid, changing every few hundred metres."""
    prof = spec.profile
    road = spec.odd["road_type"]
    lo, hi = prof.speed_kmh[road]
    out: list[np.ndarray] = []
    s = 0.0
    while s < length_m:
        seg = float(rng.uniform(200, 1200))
        if road == "highway" and prof.highway_limits_mph:
            limit = float(rng.choice(prof.highway_limits_mph)) * 1.609344
            v = float(np.clip(limit + rng.normal(3.0, 4.0), lo, hi))
        else:
            v = float(rng.uniform(lo, hi))
        if spec.odd["weather"] in ("snow", "fog"):
            v *= 0.85
        # Neither drivers nor cruise controls hold a speed exactly: a slow ±0.6 % hunting around the target.
        grid = np.arange(int(seg / DS)) * DS
        out.append(v / 3.6 * (1.0 + 0.006 * np.sin(2 * np.pi * grid / 180.0 + float(rng.uniform(0, 2 * np.pi)))))
        s += seg
    return np.concatenate(out)


def _curve_limit(k: np.ndarray, a_lat: float) -> np.ndarray:
    """Max speed per grid point from the lateral limit, made reachable by braking (backward pass)."""
    v = np.sqrt(a_lat / np.maximum(np.abs(k), 1e-6))
    v = np.minimum(v, 70.0)
    two_a_ds = 2 * _A_DEC * 0.6 * DS
    out = v.copy()
    for i in range(len(out) - 2, -1, -1):
        reach = math.sqrt(out[i + 1] * out[i + 1] + two_a_ds)
        if reach < out[i]:
            out[i] = reach
    return out


class Motion:
    """Compact drive state at 100 Hz (speed, distance, accel, heading, x, y: 48 bytes per sample).

    Every other quantity is derived on demand at the exact times a stream samples it (``field``), so the
    generator's memory grows by only ~4.8 KB per second of drive, and ``ground_truth`` derives the same
    formulas on the full 100 Hz grid.
    """

    def __init__(self, spec: DriveSpec) -> None:
        self.spec = spec
        rng = drive_rng(spec.seed, spec.market, spec.index, 1)
        road = spec.odd["road_type"]
        prof = spec.profile
        self.n = n = round(spec.duration_s * RATE_HZ) + 1
        max_len = spec.duration_s * 45.0 + 500.0
        k_grid, stops = _path(spec, rng, max_len)
        v_des = _desired_speeds(spec, rng, max_len)
        m = min(len(k_grid), len(v_des))
        k_grid, v_des = k_grid[:m], v_des[:m]
        v_cap = np.minimum(v_des, _curve_limit(k_grid, _A_LAT_MAX[road]))
        hold_s = rng.uniform(6, 25, size=len(stops))
        v, s = _drive(spec, v_cap, stops, hold_s, n)
        self.k_grid = k_grid
        # Turn lever: on from ~30 m before a tight (intersection) curve until its end, in the curve's direction.
        tight = np.flatnonzero(np.abs(k_grid) > 1 / 40)
        nxt = np.searchsorted(tight, np.arange(m))
        has = nxt < len(tight)
        j = tight[np.minimum(nxt, len(tight) - 1)] if len(tight) else np.zeros(m, dtype=np.int64)
        ahead = has & ((j - np.arange(m)) <= int(30 / DS)) if len(tight) else np.zeros(m, dtype=bool)
        self.turn_grid = np.where(ahead, np.where(k_grid[j] > 0, 1, 2), 0).astype(np.int8)
        self.v, self.s = v, s
        self.acc = np.concatenate([[0.0], np.diff(v) * RATE_HZ])
        k = self._k(s)
        yaw = v * k
        heading0 = float(rng.uniform(-math.pi, math.pi))
        self.heading = heading0 + np.concatenate([[0.0], np.cumsum(yaw[:-1]) * DT])
        # Integrate position with the heading of each step (ENU, x east, y north); heading 0 = east.
        self.x = np.concatenate([[0.0], np.cumsum(v[:-1] * np.cos(self.heading[:-1]) * DT)])
        self.y = np.concatenate([[0.0], np.cumsum(v[:-1] * np.sin(self.heading[:-1]) * DT)])
        # Drives start anywhere in a ~180 km region around the market's city: curated splits keep places
        # (geo cells of a few km) apart, so a fleet must not all share one street.
        self.lat0 = prof.start_lat + float(rng.uniform(-0.8, 0.8))
        self.lon0 = prof.start_lon + float(rng.uniform(-1.2, 1.2))
        self.alt0 = 520.0 if spec.market == "de" else 30.0
        weather, tod = spec.odd["weather"], spec.odd["time_of_day"]
        base_temp = prof.temperature_c + {"clear": 2.0, "rain": -2.0, "fog": -3.0, "snow": -9.0}[weather]
        if weather == "snow":  # it snows below freezing in every market, whatever its March average
            base_temp = min(base_temp, -1.0)
        self.base_temp = base_temp + {"day": 2.0, "dusk": 0.0, "night": -3.0}[tod] + float(rng.normal(0, 1.5))

    def _lerp(self, arr: np.ndarray, t_s: np.ndarray) -> np.ndarray:
        x = np.clip(np.asarray(t_s, dtype=np.float64) * RATE_HZ, 0.0, self.n - 1.0)
        i = np.minimum(x.astype(np.int64), self.n - 2)
        f = x - i
        return arr[i] * (1.0 - f) + arr[i + 1] * f

    def _k(self, s: np.ndarray) -> np.ndarray:
        g = np.clip(s / DS, 0.0, len(self.k_grid) - 1.0)
        i = np.minimum(g.astype(np.int64), len(self.k_grid) - 2)
        f = g - i
        return self.k_grid[i] * (1.0 - f) + self.k_grid[i + 1] * f

    def fields(
        self,
        t_s: np.ndarray,
        names: tuple[str, ...] | list[str] = GROUND_TRUTH_FIELDS,
    ) -> dict[str, np.ndarray]:
        spec = self.spec
        t = np.asarray(t_s, dtype=np.float64)
        v = np.maximum(self._lerp(self.v, t), 0.0)
        s = self._lerp(self.s, t)
        k = self._k(s)
        acc = self._lerp(self.acc, t)
        kmh = v * 3.6
        out: dict[str, np.ndarray] = {}
        want = set(names)

        def put(name: str, fn: Callable[[], np.ndarray]) -> None:
            if name in want:
                out[name] = fn()

        def steer(kk: np.ndarray) -> np.ndarray:
            return np.degrees(np.arctan(WHEELBASE_M * kk)) * STEERING_RATIO

        half = TRACK_WIDTH_M / 2
        put("t_ns", lambda: spec.start_time_ns + np.round(t * 1e9).astype(np.int64))
        put("t_s", lambda: t)
        put("speed_mps", lambda: v)
        put("speed_kmh", lambda: kmh)
        put("accel_mps2", lambda: acc)
        put("curvature_1pm", lambda: k)
        put("yaw_rate_dps", lambda: np.degrees(v * k))
        put("steering_deg", lambda: steer(k))
        put("steering_rate_dps", lambda: (steer(self._k(s + v * 0.005)) - steer(self._k(s - v * 0.005))) / 0.01)
        put("road_wheel_deg", lambda: np.degrees(np.arctan(WHEELBASE_M * k)))
        put("lat_accel_mps2", lambda: v * v * k)
        put("heading_deg", lambda: np.degrees(self._lerp(self.heading, t)))
        put("x_m", lambda: self._lerp(self.x, t))
        put("y_m", lambda: self._lerp(self.y, t))
        put("lat", lambda: self.lat0 + np.degrees(self._lerp(self.y, t) / EARTH_R))
        lon_scale = EARTH_R * math.cos(math.radians(self.lat0))
        put("lon", lambda: self.lon0 + np.degrees(self._lerp(self.x, t) / lon_scale))
        put("alt_m", lambda: self.alt0 + 5.0 * np.sin(s / 900.0))
        put("distance_m", lambda: s)
        # Outer wheels travel further in a curve; rear wheels follow a slightly tighter radius.
        put("wheel_fl_kmh", lambda: kmh * np.hypot(1 - k * half, WHEELBASE_M * k))
        put("wheel_fr_kmh", lambda: kmh * np.hypot(1 + k * half, WHEELBASE_M * k))
        put("wheel_rl_kmh", lambda: kmh * (1 - k * half))
        put("wheel_rr_kmh", lambda: kmh * (1 + k * half))
        gear = np.full(len(t), 3, dtype=np.int64)  # D
        gear[(t < 2.0) | ((t > spec.duration_s - 1.5) & (v < 0.05))] = 0  # P at ignition-on and at the end
        put("gear", lambda: gear)
        drag = 0.15 + 0.0004 * v * v  # rolling + aero resistance expressed as deceleration, m/s^2
        put("accel_pedal_pct", lambda: np.where(acc < -0.35, 0.0, np.clip((acc + drag) / 3.0 * 100.0, 0.0, 100.0)))
        # Brake pressure follows the demanded deceleration; ~18 bar holds the car at a standstill in D.
        put(
            "brake_pressure_bar",
            lambda: np.where((v < 0.05) & (gear == 3), 18.0, np.clip((-acc - drag) * 14.0, 0.0, 180.0)),
        )
        put(
            "turn_indicator",
            lambda: self.turn_grid[np.clip(np.round(s / DS).astype(np.int64), 0, len(self.turn_grid) - 1)].astype(
                np.int64
            ),
        )
        weather, tod, road = spec.odd["weather"], spec.odd["time_of_day"], spec.odd["road_type"]
        if "wiper" in want:
            wiper = np.zeros(len(t), dtype=np.int64)
            if weather == "rain":
                wiper[:] = 2
                wiper[np.sin(t / 23.0) > 0.6] = 3
                wiper[np.sin(t / 17.0) < -0.7] = 1
            elif weather == "snow":
                wiper[:] = 1
            out["wiper"] = wiper
        if "headlight" in want:
            light = 0
            if tod == "night":
                light = 3 if road != "urban" else 2
            elif tod == "dusk" or weather in ("rain", "snow"):
                light = 2
            if weather == "fog":
                light = 4
            out["headlight"] = np.full(len(t), light, dtype=np.int64)
        put("outside_temp_c", lambda: self.base_temp + 0.8 * np.sin(2 * math.pi * t / 600.0))
        return out

    def field(self, name: str, t_s: np.ndarray) -> np.ndarray:
        return self.fields(t_s, (name,))[name]

    def ground_truth(self) -> dict[str, np.ndarray]:
        return self.fields(np.arange(self.n) * DT)


def _drive(
    spec: DriveSpec, v_cap: np.ndarray, stops: np.ndarray, hold_s: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Driver model: follow the capped desired speed with comfort limits, stop and wait at lights."""
    m = len(v_cap)
    road = spec.odd["road_type"]
    a_acc, a_dec = _A_ACC[road], _A_DEC
    v = np.zeros(n)
    s = np.zeros(n)
    vi, si, af = 0.0, 0.0, 0.0
    stop_i, hold_left = 0, 0.0
    depart_t = 3.0  # stand still in P for the first seconds, like a real ignition-on
    end_stop_t = spec.duration_s - 8.0  # and come to a halt at the end
    for i in range(n):
        t = i * DT
        target = float(v_cap[min(int(si / DS), m - 1)])
        if t < depart_t:
            target = 0.0
        if t > end_stop_t:
            target = min(target, max(0.0, (spec.duration_s - 2.0 - t) * a_dec * 0.5))
        if stop_i < len(stops):
            gap = stops[stop_i] - si
            if gap <= 0.5 and vi < 0.3:
                if hold_left <= 0.0:
                    hold_left = float(hold_s[stop_i])
                hold_left -= DT
                target = 0.0
                if hold_left <= 0.0:
                    stop_i += 1
            else:
                target = min(target, math.sqrt(max(0.0, 2 * a_dec * 0.8 * max(gap, 0.0))))
        a_cmd = min(max(0.8 * (target - vi), -a_dec * 1.2), a_acc)
        af += (a_cmd - af) * DT / 0.4  # first-order lag ~ limits jerk, as a human foot does
        if vi <= 0.0 and af < 0.0:
            af = 0.0
        vi = max(0.0, vi + af * DT)
        si += vi * DT
        v[i], s[i] = vi, si
    return v, s


def motion_profile(spec: DriveSpec) -> Motion:
    return Motion(spec)


def sample(motion: Motion, t_s: np.ndarray, name: str) -> np.ndarray:
    """``name`` at true times ``t_s`` (seconds from drive start)."""
    return motion.field(name, t_s)
