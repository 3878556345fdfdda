"""Ingest benchmark: decode_drive end to end (MDF4 + MCAP -> Parquet) on ~1 GB and ~4 GB drives.

Drives are generated once with fleetgen, sized with ``options_for_size(size_gb, minutes)`` (default
320x180 camera; the bytes are lidar points in the MCAP and extra 1 kHz channels in the MF4; 10 minutes for 1 GB,
20 for 4 GB) and cached under benchmarks/.data/fleetgen_<size>gb (git-ignored), keyed by those options: a cache
generated with other options is deleted and regenerated. Each size runs in a fresh subprocess that imports the
decoders first, as a Dagster run worker has: ``seconds`` is decode_drive's wall time there, ``startup_seconds``
the interpreter start and imports before it (a per-process constant). RssAnon is polled from /proc for the
whole process (``peak_anon_mib``) and summed with its child processes (``peak_anon_mib_with_children``: the MDF
decoder runs in a forkserver child). One JSON line per size on stdout.

    python benchmarks/bench_ingest.py [--sizes 1,4] [--keep-output]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / ".data"
sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------- drive generation
BENCH_MINUTES = {1.0: 10.0, 4.0: 20.0}  # drive length per size; bytes come from lidar points + MDF channels


def fleetgen_drive(gb: float, data: Path = DATA) -> Path:
    """A fleetgen drive of ~gb GB sized with ``options_for_size`` (default 320x180 camera), cached by options
    under ``data``."""
    from fleetgen import generate_drive, options_for_size

    minutes = BENCH_MINUTES.get(gb, max(10.0, round(gb * 5.0, 1)))
    opts = options_for_size(gb, minutes)
    key = {"minutes": minutes, "seed": 0, **opts}
    landing = data / f"fleetgen_{gb:g}gb"
    stamp = landing / "bench-options.json"
    existing = [p for p in landing.glob("*/*") if p.is_dir() and not p.name.startswith((".", "_"))]
    if existing and stamp.exists() and json.loads(stamp.read_text()) == key:
        return existing[0]
    shutil.rmtree(landing, ignore_errors=True)  # generated with other options: regenerate
    landing.mkdir(parents=True)
    t = time.perf_counter()
    drive = Path(generate_drive(landing, "de", 0, minutes, seed=0, **opts))
    stamp.write_text(json.dumps(key, sort_keys=True))
    print(f"generated {drive} ({key}) in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return drive


def drive_files(drive: Path) -> tuple[list[Path], list[Path]]:
    files = sorted(p for p in drive.iterdir() if p.suffix.lower() in (".mf4", ".mcap"))
    dbcs = sorted(drive.parent.glob("_dbc/*.dbc"))
    return files, dbcs


# --------------------------------------------------------------------------- measurement
def _floor_seconds(files: list[Path]) -> float:
    for p in files:  # warm the page cache
        with open(p, "rb") as fh:
            while fh.read(16 << 20):
                pass
    t = time.perf_counter()
    for p in files:
        with open(p, "rb") as fh:
            while fh.read(16 << 20):
                pass
    return time.perf_counter() - t


def _child(files: list[str], dbcs: list[str], out: str) -> None:
    # A warm worker, as in a Dagster run process: the decoders' libraries are imported before the clock starts
    # (asammdf alone takes ~1.2 s, a per-process constant reported apart as startup_seconds).
    import asammdf.blocks.bus_logging_utils
    import asammdf.blocks.utils  # noqa: F401

    from ad_core.decode import decode_drive

    t = time.perf_counter()
    rep = decode_drive([Path(f) for f in files], Path(out), [Path(d) for d in dbcs])
    print(
        json.dumps(
            {
                "seconds_inner": time.perf_counter() - t,
                "rows": rep.rows,
                "streams": len(rep.streams),
                "errors": rep.errors[:3],
            }
        )
    )


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    """pid's child processes, recursively (the MDF decoder runs in a forkserver child)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/task/{p}/children") as fh:
                kids = [int(k) for k in fh.read().split()]
        except OSError:
            kids = []
        out += kids
        todo += kids
    return out


def watch(cmd: list[str], env: dict[str, str] | None = None, samples: list | None = None) -> dict:
    """Run ``cmd``, polling RssAnon of it and its descendants: wall seconds, stdout, peaks (MiB) of the process
    itself, of its largest single process and of the tree summed. ``samples`` gets (epoch s, process KiB,
    largest child KiB) tuples."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    peak_rss = peak_anon = peak_anon_process = peak_anon_tree = 0
    while proc.poll() is None:
        peak_rss = max(peak_rss, _status_kib(proc.pid, "VmRSS"))
        anon = _status_kib(proc.pid, "RssAnon")
        children = [_status_kib(c, "RssAnon") for c in _descendants(proc.pid)]
        peak_anon = max(peak_anon, anon)
        peak_anon_process = max(peak_anon_process, anon, *children)
        peak_anon_tree = max(peak_anon_tree, anon + sum(children))
        if samples is not None:
            samples.append((time.time(), anon, max(children, default=0)))
        time.sleep(0.02)
    return {
        "seconds": time.perf_counter() - t,
        "stdout": proc.stdout.read() if proc.stdout else "",
        "rc": proc.returncode,
        "peak_rss_mib": round(peak_rss / 1024, 1),
        "peak_anon_mib": round(peak_anon / 1024, 1),
        "peak_anon_mib_largest_process": round(peak_anon_process / 1024, 1),
        "peak_anon_mib_with_children": round(peak_anon_tree / 1024, 1),
    }


def measure_decode(files: list[Path], dbcs: list[Path], out: Path) -> dict:
    """decode_drive of ``files`` into ``out`` in a fresh, warm subprocess (see the module docstring)."""
    cmd = [sys.executable, __file__, "--child", json.dumps([str(f) for f in files]), json.dumps([str(d) for d in dbcs])]
    watched = watch([*cmd, str(out)])
    child = json.loads(watched.pop("stdout").strip().splitlines()[-1] or "{}")
    return {**watched, **child}


def run_size(gb: float, keep: bool) -> dict:
    drive = fleetgen_drive(gb)
    files, dbcs = drive_files(drive)
    size = sum(p.stat().st_size for p in files)
    floor = _floor_seconds(files)
    out = Path(tempfile.mkdtemp(prefix="bench_out_", dir=DATA))
    run = measure_decode(files, dbcs, out)
    decode_s, process_s = run.get("seconds_inner", float("nan")), run["seconds"]
    out_bytes = sum(p.stat().st_size for p in out.glob("*.parquet"))
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    return {
        "size_gb_requested": gb,
        "drive": str(drive.relative_to(ROOT)),
        "size_bytes": size,
        "seconds": round(decode_s, 3),
        "startup_seconds": round(process_s - decode_s, 3),
        "mb_per_s": round(size / 1e6 / decode_s, 1),
        "mb_per_s_with_startup": round(size / 1e6 / process_s, 1),
        "floor_seconds": round(floor, 3),
        "ratio_to_floor": round(decode_s / floor, 1) if floor > 0 else None,
        "peak_rss_mib": run["peak_rss_mib"],
        "peak_anon_mib": run["peak_anon_mib"],
        "peak_anon_mib_with_children": run["peak_anon_mib_with_children"],
        "parquet_bytes": out_bytes,
        "rows": run.get("rows"),
        "streams": run.get("streams"),
        "rc": run["rc"],
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4])
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,4", help="drive sizes in GB, comma separated")
    ap.add_argument("--keep-output", action="store_true")
    args = ap.parse_args()
    DATA.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(DATA).free
    sizes = [float(s) for s in args.sizes.split(",")]
    need = sum(sizes) * 2.2e9
    if free < need:
        print(json.dumps({"error": f"need ~{need / 1e9:.0f} GB free under {DATA}, have {free / 1e9:.0f} GB"}))
        return 1
    os.environ.setdefault("PYTHONHASHSEED", "0")
    for gb in sizes:
        print(json.dumps(run_size(gb, args.keep_output)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
