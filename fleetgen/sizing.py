"""Pick lidar points and extra MDF channels so a drive of ``minutes`` lands near ``size_gb``.

Calibrated on this generator (bytes per second of drive): the defaults (320x180 JPEG at 10 Hz, 2048 lidar
points, CAN + physical MDF groups, IMU/GNSS) write ~0.6 MB/s; every lidar point adds ~143 B/s to the MCAP
(16 bytes x 10 Hz, zstd barely compresses noisy float32); every extra 1 kHz float32 MDF channel adds ~4 KB/s.
The bytes are split half MCAP lidar, half MDF channels, so benchmarks stress both readers.
"""

from __future__ import annotations

from typing import Any

from .drive import DEFAULT_LIDAR_POINTS

BASE_BPS = 625_000.0
LIDAR_BPS_PER_POINT = 143.4
BENCH_BPS_PER_CHANNEL = 4042.0
MAX_LIDAR_POINTS = 131_072  # a 64-128 beam lidar sweep
MAX_EXTRA_SIGNALS = 2000


def options_for_size(size_gb: float, minutes: float) -> dict[str, Any]:
    """``lidar_points`` and ``extra_mdf_signals`` for a drive of ~``size_gb`` GB (1e9 bytes)."""
    budget = size_gb * 1e9 / (minutes * 60.0) - BASE_BPS
    if budget <= 0:
        return {"lidar_points": DEFAULT_LIDAR_POINTS, "extra_mdf_signals": 0}
    extra_points = min(budget / 2 / LIDAR_BPS_PER_POINT, MAX_LIDAR_POINTS - DEFAULT_LIDAR_POINTS)
    points = DEFAULT_LIDAR_POINTS + int(extra_points) // 32 * 32
    signals = round((budget - (points - DEFAULT_LIDAR_POINTS) * LIDAR_BPS_PER_POINT) / BENCH_BPS_PER_CHANNEL)
    if signals > MAX_EXTRA_SIGNALS:
        raise ValueError(f"{size_gb} GB in {minutes} min needs {signals} extra MDF channels; use more minutes")
    return {"lidar_points": points, "extra_mdf_signals": max(signals, 0)}
