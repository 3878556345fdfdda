"""One drive: spec -> motion profile -> MDF4 + MCAP written chunk by chunk -> drive.json, atomically."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ad_common.atomic import atomic_dir, write_bytes_atomic

from .mcap_out import WINDOW_S, McapDriveWriter
from .mdf_out import BENCH_GROUP, MdfDriveWriter
from .motion import motion_profile
from .profiles import (
    GENERATOR_VERSION,
    MCAP_STREAMS,
    MDF_STREAMS,
    STEERING_RATIO,
    WHEELBASE_M,
    DriveSpec,
    make_spec,
)

CHUNK_S = 10.0  # MDF chunk; memory per chunk is bounded by this, not by the drive length
DEFAULT_CAMERA_SIZE = (320, 180)
DEFAULT_LIDAR_POINTS = 2048
MANIFEST = "drive.json"
DBC_DIR = "_dbc"
DBC_NAME = "vehicle.dbc"


def dbc_text(market: str) -> str:
    template = resources.files("fleetgen").joinpath("vehicle.dbc").read_text()
    return template.replace("{market}", market)


def write_market_dbc(landing: Path, market: str) -> Path:
    path = Path(landing) / market / DBC_DIR / DBC_NAME
    data = dbc_text(market).encode()
    if path.is_file() and path.read_bytes() == data:
        return path
    try:
        write_bytes_atomic(path, data)
    except FileNotFoundError:
        # A concurrent writer of the same DBC swept our temporary file; fine if its content is ours.
        if not (path.is_file() and path.read_bytes() == data):
            raise
    return path


def _manifest(
    spec: DriveSpec,
    camera_hz: float,
    camera_size: tuple[int, int],
    lidar_points: int,
    extra_mdf_signals: int,
    jpeg_quality: int,
) -> dict[str, Any]:
    mf4, mcap = f"{spec.drive_id}.mf4", f"{spec.drive_id}.mcap"
    sensors: dict[str, dict[str, Any]] = {}
    mdf_off = spec.clock_offsets_ns["mdf_logger"]
    streams = dict(MDF_STREAMS)
    if extra_mdf_signals:
        streams["bench"] = (BENCH_GROUP, 1000.0)
    for name, (stream, hz) in streams.items():
        sensors[name] = {"file": mf4, "stream": stream, "nominal_hz": hz, "clock_offset_ns": mdf_off}
    sensors["can"].update({"bus_channel": 1, "dbc": f"../{DBC_DIR}/{DBC_NAME}"})
    for name, (topic, hz) in MCAP_STREAMS.items():
        sensors[name] = {
            "file": mcap,
            "stream": topic,
            "nominal_hz": float(camera_hz) if hz is None else hz,
            "clock_offset_ns": spec.clock_offsets_ns.get(name, 0),
        }
    sensors["camera_front"].update({"width": camera_size[0], "height": camera_size[1], "format": "jpeg"})
    sensors["lidar_top"]["points"] = lidar_points
    return {
        "drive_id": spec.drive_id,
        "vehicle_id": spec.vehicle_id,
        "market": spec.market,
        "start_time_ns": spec.start_time_ns,
        "duration_s": spec.duration_s,
        "odd": spec.odd,
        "driving_side": spec.profile.driving_side,
        "sensors": sensors,
        "vehicle": {"wheelbase_m": WHEELBASE_M, "steering_ratio": STEERING_RATIO},
        "generator": {
            "version": GENERATOR_VERSION,
            "seed": spec.seed,
            "index": spec.index,
            "options": {
                "camera_hz": camera_hz,
                "camera_size": list(camera_size),
                "lidar_points": lidar_points,
                "extra_mdf_signals": extra_mdf_signals,
                "jpeg_quality": jpeg_quality,
            },
        },
        "faults": spec.faults,
    }


def generate_drive(
    landing: Path,
    market: str,
    index: int,
    minutes: float,
    seed: int = 0,
    *,
    camera_hz: float = 10,
    camera_size: tuple[int, int] = DEFAULT_CAMERA_SIZE,
    lidar_points: int = DEFAULT_LIDAR_POINTS,
    extra_mdf_signals: int = 0,
    faults: Sequence[str] = (),
    jpeg_quality: int = 85,
) -> Path:
    """Write ``<landing>/<market>/<drive_id>/`` and the market DBC; returns the drive folder.

    The folder appears atomically (built under a hidden ``.<drive_id>.tmp-*`` name, then renamed).
    """
    if not 1 <= camera_hz <= 60:
        raise ValueError("camera_hz must be within 1..60")
    landing = Path(landing)
    camera_size = (int(camera_size[0]), int(camera_size[1]))
    spec = make_spec(market, index, minutes, seed, tuple(faults))
    dbc = dbc_text(market)
    write_market_dbc(landing, market)
    profile = motion_profile(spec)
    final = landing / market / spec.drive_id
    with atomic_dir(final) as tmp:
        mdf = MdfDriveWriter(tmp / f"{spec.drive_id}.mf4", spec, dbc, extra_mdf_signals)
        mcap = McapDriveWriter(tmp / f"{spec.drive_id}.mcap", spec, camera_hz, camera_size, lidar_points, jpeg_quality)
        n_chunks = math.ceil(spec.duration_s / CHUNK_S - 1e-9)
        for c in range(n_chunks):
            t0, t1 = c * CHUNK_S, min((c + 1) * CHUNK_S, spec.duration_s)
            mdf.write_chunk(profile, t0, t1)
            w0 = t0
            while w0 < t1 - 1e-9:
                w1 = min(w0 + WINDOW_S, t1)
                mcap.write_window(profile, w0, w1)
                w0 = w1
        mcap.close()
        mdf.close()
        manifest = _manifest(spec, camera_hz, camera_size, lidar_points, extra_mdf_signals, jpeg_quality)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return final


def ground_truth(drive_dir: Path) -> dict[str, np.ndarray]:
    """The noise-free motion profile at 100 Hz, regenerated from drive.json (market, index, seed, duration)."""
    manifest = json.loads((Path(drive_dir) / MANIFEST).read_text())
    gen = manifest["generator"]
    spec = make_spec(
        manifest["market"],
        int(gen["index"]),
        0.0,
        int(gen["seed"]),
        [f["type"] for f in manifest.get("faults", [])],
        duration_s=float(manifest["duration_s"]),
    )
    if spec.drive_id != manifest["drive_id"]:
        raise ValueError(
            f"drive.json does not match generator {GENERATOR_VERSION}: {spec.drive_id} != {manifest['drive_id']}"
        )
    return motion_profile(spec).ground_truth()


def _drive_job(args: tuple[Path, str, int, float, int, dict[str, Any]]) -> Path:
    landing, market, index, minutes, seed, options = args
    return generate_drive(landing, market, index, minutes, seed, **options)


def generate_fleet(
    landing: Path,
    markets: Sequence[str],
    drives_per_market: int,
    minutes: float,
    seed: int = 0,
    workers: int | None = None,
    **options: Any,
) -> list[Path]:
    """Generate ``drives_per_market`` drives for every market; returns the drive folders (market, index order)."""
    jobs = [(Path(landing), m, i, minutes, seed, options) for m in markets for i in range(drives_per_market)]
    for m in markets:  # once, before the workers start, so they never race on the shared DBC
        write_market_dbc(Path(landing), m)
    workers = min(len(jobs), workers or os.cpu_count() or 1)
    if workers <= 1:
        return [_drive_job(j) for j in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_drive_job, jobs))
