"""Cheap numpy renderers for the front camera and the top lidar.

The camera draws a pinhole view of a flat road whose centre line bends with the vehicle's current path
curvature (the same curvature that sets the steering angle), so a model can learn steering from pixels.
Lighting follows time of day, weather darkens and adds noise, and the ego lane sits on the market's side.
"""

from __future__ import annotations

import numpy as np

from .profiles import LANE_WIDTH_M

CAM_HEIGHT_M = 1.4
LIDAR_HEIGHT_M = 1.9

_SKY = {
    "day": ((110, 160, 225), (190, 215, 240)),
    "dusk": ((60, 60, 110), (235, 150, 95)),
    "night": ((4, 5, 14), (18, 20, 38)),
}
_BRIGHT = {"day": 1.0, "dusk": 0.6, "night": 0.22}


class CameraRenderer:
    def __init__(
        self,
        width: int,
        height: int,
        time_of_day: str,
        weather: str,
        driving_side: str,
        yellow_center: bool,
        rng: np.random.Generator,
        exposure: float = 1.0,
    ) -> None:
        self.w, self.h = width, height
        self.tod, self.weather = time_of_day, weather
        self.side = 1.0 if driving_side == "right" else -1.0
        self.f = 0.9 * width
        self.cx = width / 2.0
        self.y_h = 0.42 * height
        self.rows = np.arange(int(self.y_h) + 1, height)
        self.z = np.minimum(self.f * CAM_HEIGHT_M / (self.rows - self.y_h), 250.0)
        self.cols = np.arange(width, dtype=np.float32)[None, :]
        # ``exposure``: the camera's gain (market programme x auto-exposure), folded into sky, scene, haze and noise.
        b = exposure * _BRIGHT[time_of_day] * {"clear": 1.0, "rain": 0.72, "fog": 0.85, "snow": 0.9}[weather]
        ground = (200, 200, 205) if weather == "snow" else (70, 105, 50)
        self.palette = (
            np.array(
                [ground, (92, 92, 96), (235, 235, 235), (225, 180, 40) if yellow_center else (235, 235, 235)],
                dtype=np.float32,
            )
            * b
        )
        # Per-row gain/offset: headlights fall off with distance at night, fog washes distant rows out.
        gain = np.ones(len(self.rows), dtype=np.float32)
        add = np.zeros(len(self.rows), dtype=np.float32)
        if time_of_day == "night":
            gain = (0.35 + 3.2 * np.exp(-self.z / 18.0)).astype(np.float32)
        if weather == "fog":
            fog = (1.0 - np.exp(-self.z / 35.0)).astype(np.float32)
            gain *= 1.0 - fog
            add += fog * 150.0 * b
        self.gain, self.add = gain[:, None, None], add[:, None, None]
        top, bottom = (np.array(c, dtype=np.float32) for c in _SKY[time_of_day])
        frac = np.linspace(0.0, 1.0, int(self.y_h) + 1, dtype=np.float32)[:, None]
        sky = top * (1 - frac) + bottom * frac
        if weather in ("rain", "fog", "snow"):
            gray = sky.mean(axis=1, keepdims=True)
            sky = 0.3 * sky + 0.7 * gray * (1.1 if weather == "fog" else 0.75)
        sky *= exposure
        self.sky = np.repeat(sky[:, None, :], width, axis=1).clip(0, 255).astype(np.uint8)
        self.noise_sigma = {"clear": 2.0, "rain": 14.0, "fog": 7.0, "snow": 10.0}[weather]
        if time_of_day == "night":
            self.noise_sigma += 5.0  # high gain sensor noise in the dark
        # One noise texture per drive, sampled at random offsets per frame: ~free compared to fresh noise.
        noise = rng.standard_normal((height + 64, width + 64, 3)) * (self.noise_sigma * exposure)
        self.noise = noise.astype(np.float32)

    def render(self, curvature: float, distance_m: float, lateral_m: float, rng: np.random.Generator) -> np.ndarray:
        z = self.z
        s = self.side
        # Road centre line offset at depth z for a constant-curvature path: x = k z^2 / 2 (left turn -> left).
        shift = -0.5 * curvature * z * z - lateral_m

        def x_of(lateral: float) -> np.ndarray:
            return (self.cx + self.f * (lateral * s + shift) / z)[:, None]

        half = LANE_WIDTH_M / 2
        near = x_of(-half - LANE_WIDTH_M - 0.6)
        far = x_of(half + 0.6)
        lo, hi = np.minimum(near, far), np.maximum(near, far)
        cols = self.cols
        label = np.zeros((len(z), self.w), dtype=np.uint8)
        label[(cols >= lo) & (cols <= hi)] = 1
        lw = np.maximum(self.f * 0.07 / z, 0.6)[:, None]
        dashed = (((z + distance_m) % 12.0) < 4.5)[:, None]
        label[(np.abs(cols - x_of(half)) <= lw)] = 2  # solid edge line on the ego side
        label[(np.abs(cols - x_of(-half - LANE_WIDTH_M)) <= lw)] = 2  # far road edge
        label[(np.abs(cols - x_of(-half)) <= lw) & dashed] = 3  # centre line towards oncoming traffic
        ground = self.palette[label] * self.gain + self.add
        yo, xo = int(rng.integers(0, 64)), int(rng.integers(0, 64))
        noise = self.noise[yo : yo + self.h, xo : xo + self.w]
        img = np.empty((self.h, self.w, 3), dtype=np.uint8)
        n_sky = self.h - len(z)
        img[:n_sky] = (self.sky + noise[:n_sky]).clip(0, 255)
        img[n_sky:] = (ground + noise[n_sky:]).clip(0, 255)
        return img


class LidarRenderer:
    """A 32-ring spinning lidar over a flat ground with walls/guard rails either side of the road."""

    RINGS = 32

    def __init__(self, n_points: int, road_type: str, rng: np.random.Generator) -> None:
        n_az = max(1, n_points // self.RINGS)
        el = np.radians(np.linspace(-25.0, 5.0, self.RINGS))
        az = np.linspace(-np.pi, np.pi, n_az, endpoint=False)
        el_g, az_g = np.meshgrid(el, az, indexing="ij")
        self.el = el_g.ravel()[:n_points]
        self.az = az_g.ravel()[:n_points]
        self.n = len(self.el)
        self.dirs = np.stack(
            [np.cos(self.el) * np.cos(self.az), np.cos(self.el) * np.sin(self.az), np.sin(self.el)]
        ).astype(np.float32)
        down = np.sin(self.el) < -1e-3
        self.r_ground = np.where(down, LIDAR_HEIGHT_M / np.maximum(-np.sin(self.el), 1e-3), np.inf)
        self.wall_d = {"urban": 9.0, "rural": 14.0, "highway": 7.0}[road_type]
        self.wall_h = {"urban": 12.0, "rural": 3.0, "highway": 0.9}[road_type]
        self.sin_az = np.abs(np.sin(self.az)) + 1e-3
        self.tan_el = np.tan(self.el)
        self.rng = rng

    def sweep(self, t_s: float) -> bytes:
        d = self.wall_d * (1.0 + 0.25 * np.sin(t_s / 7.0))
        r_wall = d / self.sin_az
        z_hit = LIDAR_HEIGHT_M + r_wall * self.tan_el
        r_wall = np.where((z_hit >= 0) & (z_hit <= self.wall_h), r_wall, np.inf)
        r = np.minimum(np.minimum(self.r_ground, r_wall), 120.0)
        noise = self.rng.standard_normal(self.n).astype(np.float32) * 0.02
        r32 = (r + noise).astype(np.float32)
        pts = np.empty((self.n, 4), dtype="<f4")
        pts[:, :3] = (self.dirs * r32).T
        pts[:, 3] = np.where(r_wall < self.r_ground, 60.0, 15.0) + noise * 200
        return pts.tobytes()
