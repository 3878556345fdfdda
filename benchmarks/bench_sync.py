"""Benchmark ``ad_core.sync.sync_drive`` on synthetic decoded drives of 10 minutes and 10 hours.

Streams: 30 Hz camera (reference, no image payload), 10 Hz lidar sweep index, 200 Hz IMU, 10 Hz GNSS,
100 Hz vehicle signals (speed, steering and a discrete gear). The Parquet inputs are cached under
``benchmarks/.data/sync/`` (git-ignored). Each size is synced in its own subprocess so that its memory is
measured alone: the parent polls ``/proc/<pid>/status`` for RssAnon (private heap, what the 1 GiB budget is
about) and VmRSS. One JSON line per size on stdout. ``seconds`` is the median over ``--repeat`` fresh
subprocesses of the ``sync_drive`` call alone, made after an untimed 10-second warm-up drive in the same
process (per-process start-up, see ``child``); ``--cold`` drops the warm-up.

    python benchmarks/bench_sync.py [--hours 0.1667 10] [--repeat 5] [--cold] [--regenerate]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from ad_core.sync import SyncConfig

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "benchmarks" / ".data" / "sync"
T0 = 1_700_000_000_000_000_000
S = 1_000_000_000
SEGMENT_S = 3600  # generate and write one hour at a time: the generator stays bounded too
DATA_VERSION = "1"
WARMUP_HOURS = 10 / 3600
TARGET_FPS = 200_000
TARGET_ANON_MIB = 1024

# name -> (rate Hz, jitter std ns, clock offset ns)
STREAMS: dict[str, tuple[float, int, int]] = {
    "camera": (30.0, 300_000, 0),
    "lidar": (10.0, 200_000, 2_500_000),
    "imu": (200.0, 50_000, 0),
    "gnss": (10.0, 1_000_000, 0),
    "vehicle": (100.0, 100_000, -1_000_000),
}


def _label(hours: float) -> str:
    return f"{hours:g}h"


def _timestamps(
    rng: np.random.Generator, rate: float, jitter: int, offset: int, t_lo: int, t_hi: int
) -> tuple[np.ndarray, np.ndarray]:
    period = S / rate
    k0, k1 = int(np.ceil((t_lo - T0) / period)), int(np.ceil((t_hi - T0) / period))
    k = np.arange(k0, k1, dtype=np.int64)
    ts = T0 + np.round(k * period).astype(np.int64) + offset
    ts += rng.normal(0, jitter, ts.size).astype(np.int64)
    dup = rng.random(ts.size) < 1e-4  # rare duplicates (re-transmissions)
    ts[1:][dup[1:]] = ts[:-1][dup[1:]]
    return np.maximum.accumulate(ts), k


def _columns(name: str, rng: np.random.Generator, ts: np.ndarray, k: np.ndarray) -> dict[str, pa.Array]:
    t = (ts - T0).astype(np.float64) / S
    n = ts.size
    if name == "camera":
        return {"frame_id": pa.array(k), "exposure_us": pa.array(rng.integers(100, 20_000, n, dtype=np.int32))}
    if name == "lidar":
        return {"sweep_index": pa.array(k), "point_count": pa.array(rng.integers(100_000, 130_000, n, np.int32))}
    if name == "imu":
        return {c: pa.array(np.sin(t * (i + 1) * 0.7) + rng.normal(0, 0.05, n)) for i, c in
                enumerate(["ax", "ay", "az", "gx", "gy", "gz"])}  # fmt: skip
    if name == "gnss":
        return {"lat": pa.array(48.1 + 1e-5 * t), "lon": pa.array(11.5 + 1e-5 * t), "alt": pa.array(520 + np.sin(t))}
    gear = np.clip((np.floor(t / 37.0) % 7).astype(np.int8) - 1, 0, 5).astype(np.int8)  # changes every 37 s
    return {
        "speed_mps": pa.array(15 + 10 * np.sin(t / 60)),
        "steering_rad": pa.array(0.2 * np.sin(t / 7)),
        "gear": pa.array(gear),
    }


def generate(hours: float, regenerate: bool = False) -> Path:
    folder = DATA / _label(hours)
    stamp = folder / f".complete-v{DATA_VERSION}"
    if stamp.exists() and not regenerate:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    t_end = T0 + int(hours * 3600 * S)
    for i, (name, (rate, jitter, offset)) in enumerate(STREAMS.items()):
        rng = np.random.default_rng(i)
        writer: pq.ParquetWriter | None = None
        last = None
        for seg_lo in range(T0, t_end, SEGMENT_S * S):
            ts, k = _timestamps(rng, rate, jitter, offset, seg_lo, min(seg_lo + SEGMENT_S * S, t_end))
            if last is not None:
                ts = np.maximum(ts, last)  # jitter must not break sortedness across segments
            last = int(ts[-1])
            table = pa.table({"timestamp_ns": pa.array(ts), **_columns(name, rng, ts, k)})
            if writer is None:
                dict_cols = [f.name for f in table.schema if pa.types.is_integer(f.type) and f.name == "gear"]
                writer = pq.ParquetWriter(
                    folder / f"{name}.parquet", table.schema, compression="zstd", use_dictionary=dict_cols
                )
            writer.write_table(table, row_group_size=1 << 20)
        assert writer is not None
        writer.close()
    stamp.touch()
    return folder


def _config(folder: Path) -> SyncConfig:
    from ad_core.sync import ReferenceSpec, StreamSpec, SyncConfig

    ms = 1_000_000
    v = STREAMS["vehicle"][2]
    streams = [
        StreamSpec("lidar", folder / "lidar.parquet", ["sweep_index", "timestamp_ns"], "nearest", 50 * ms,
                   clock_offset_ns=STREAMS["lidar"][2], row_index=True),
        StreamSpec("imu", folder / "imu.parquet", ["ax", "ay", "az", "gx", "gy", "gz"], "linear", 10 * ms),
        StreamSpec("gnss", folder / "gnss.parquet", ["lat", "lon", "alt"], "linear", 150 * ms),
        StreamSpec("vehicle", folder / "vehicle.parquet", ["speed_mps", "steering_rad"], "linear", 20 * ms,
                   clock_offset_ns=v),
        StreamSpec("gear", folder / "vehicle.parquet", ["gear"], "previous", 20 * ms, clock_offset_ns=v),
    ]  # fmt: skip
    return SyncConfig(ReferenceSpec(folder / "camera.parquet"), streams)


def _status_kib(pid: int | str, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def child(hours: float, warmup: bool) -> None:
    """Runs in the measured subprocess: one sync_drive, result as JSON on stdout.

    With ``warmup`` a 10-second drive is synced first (untimed): a Dagster worker syncs many drives per
    process, so Arrow's thread pools, codec contexts and allocator arenas, and the first touch of fresh
    heap pages (costly in this VM) are paid once per process, not per drive. ``--cold`` measures without.
    """
    t_imports = time.perf_counter()
    sys.path.insert(0, str(REPO))
    # pyarrow imports pandas lazily on its first numpy conversion (~0.3 s); a Dagster worker has it loaded
    # already, so import it up front and report import time apart from the sync itself.
    import pandas  # noqa: F401

    from ad_core.sync import sync_drive

    import_s = time.perf_counter() - t_imports
    warmup_s = None
    if warmup:
        t = time.perf_counter()
        sync_drive(_config(DATA / _label(WARMUP_HOURS)), DATA / "out" / "synced_warmup.parquet")
        warmup_s = time.perf_counter() - t
    folder = DATA / _label(hours)
    config = _config(folder)
    out = DATA / "out" / f"synced_{_label(hours)}.parquet"
    baseline_anon = _status_kib("self", "RssAnon")
    t, cpu = time.perf_counter(), time.process_time()
    rep = sync_drive(config, out)
    seconds, cpu_s = time.perf_counter() - t, time.process_time() - cpu
    print(
        json.dumps(
            {
                "frames": rep.frames,
                "seconds": seconds,
                "cpu_s": cpu_s,
                "import_s": import_s,
                "warmup_s": warmup_s,
                "baseline_anon_mib": baseline_anon / 1024,
                "hwm_rss_mib": _status_kib("self", "VmHWM") / 1024,
                "stream_rows": sum(s.rows_read for s in rep.streams.values()),
                "out_mib": out.stat().st_size / 2**20,
                "within_ratio": {k: round(s.within_tolerance_ratio, 5) for k, s in rep.streams.items()},
            }
        )
    )


def _run_child(hours: float, warmup: bool) -> tuple[dict[str, Any], float, float]:
    """One measured subprocess: (its JSON result, peak RssAnon MiB, peak VmRSS MiB)."""
    cmd = [sys.executable, __file__, "--child", str(hours), *([] if warmup else ["--cold"])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
    peak_anon = peak_rss = 0
    while proc.poll() is None:
        try:
            peak_anon = max(peak_anon, _status_kib(proc.pid, "RssAnon"))
            peak_rss = max(peak_rss, _status_kib(proc.pid, "VmRSS"))
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass  # the process ended between poll() and the read
        time.sleep(0.005)
    stdout = proc.stdout.read() if proc.stdout else ""
    if proc.returncode:
        raise SystemExit(f"sync subprocess failed ({proc.returncode})")
    res = json.loads(stdout.strip().splitlines()[-1])
    return res, peak_anon / 1024, max(peak_rss / 1024, res["hwm_rss_mib"])


def measure(hours: float, repeat: int, warmup: bool) -> dict[str, Any]:
    """Median time and worst memory over ``repeat`` fresh subprocesses (the machine is shared and noisy)."""
    runs = [_run_child(hours, warmup) for _ in range(repeat)]
    res = runs[0][0]
    seconds = statistics.median(r[0]["seconds"] for r in runs)
    peak_anon_mib = max(r[1] for r in runs)
    fps = res["frames"] / seconds
    return {
        "hours": hours,
        "frames": res["frames"],
        "seconds": round(seconds, 3),
        "frames_per_s": round(fps),
        "peak_anon_mib": round(peak_anon_mib, 1),
        "peak_rss_mib": round(max(r[2] for r in runs), 1),
        "best_seconds": round(min(r[0]["seconds"] for r in runs), 3),
        "runs_s": [round(r[0]["seconds"], 3) for r in runs],
        "cpu_s": round(statistics.median(r[0]["cpu_s"] for r in runs), 3),
        "warm_process": warmup,
        "import_s": round(res["import_s"], 3),
        "baseline_anon_mib": round(res["baseline_anon_mib"], 1),
        "stream_rows": res["stream_rows"],
        "out_mib": round(res["out_mib"], 1),
        "within_ratio": res["within_ratio"],
        "meets_targets": fps >= TARGET_FPS and peak_anon_mib <= TARGET_ANON_MIB,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, nargs="+", default=[10 / 60, 10.0])
    ap.add_argument("--regenerate", action="store_true")
    ap.add_argument("--repeat", type=int, default=5, help="subprocess runs per size (median time, max memory)")
    ap.add_argument("--cold", action="store_true", help="no untimed warm-up drive in the measured process")
    ap.add_argument("--child", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(args.child, warmup=not args.cold)
        return
    generate(WARMUP_HOURS)
    for hours in args.hours:
        t = time.perf_counter()
        generate(hours, args.regenerate)
        print(f"# data for {_label(hours)} ready in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        print(json.dumps(measure(hours, args.repeat, warmup=not args.cold)), flush=True)


if __name__ == "__main__":
    main()
