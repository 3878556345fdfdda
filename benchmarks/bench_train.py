"""Training and evaluation throughput of the steering model through the real streaming loader, one JSON line.

A fleetgen drive (``--minutes``, 10 Hz camera, 320x180 JPEG) is decoded and synced once into a cache folder and
listed in a split manifest (every frame in train). A fresh subprocess then trains ``--epochs`` epoch(s) (JPEG
decode in ``--workers`` DataLoader process(es), ``--threads`` torch threads) and predicts every frame; the parent
polls RssAnon of the child and its loader workers (private heap, summed) every 20 ms.

    make bench-train          # python benchmarks/bench_train.py [--minutes 1] [--epochs 1] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CACHE = Path(tempfile.gettempdir()) / "ad-bench-train"


def prepare(minutes: float) -> Path:
    """``<cache>/<minutes>/lake`` with one synced DE drive and its manifest; reused when present."""
    from ad_common.lake_layout import FRAMES_FILE, decoded_path, synced_path
    from ad_core.decode import decode_drive
    from ad_core.sync import sync_drive
    from ad_core.sync.plan import build_sync_plan
    from fleetgen import generate_drive
    from tests.support.splits import write_manifest

    root = CACHE / f"{minutes:g}min"
    lake = root / "lake"
    manifest = lake / "splits/de/bench/manifest.parquet"
    if manifest.is_file():
        return manifest
    drive = generate_drive(root / "landing", "de", 0, minutes, seed=11)
    decoded = lake / decoded_path("de", drive.name)
    decoded.mkdir(parents=True, exist_ok=True)
    dbc = sorted((root / "landing/de/_dbc").glob("*.dbc"))
    decode_drive(sorted(p for p in drive.iterdir() if p.suffix in (".mf4", ".mcap")), decoded, dbc)
    synced = lake / synced_path("de", drive.name)
    synced.mkdir(parents=True, exist_ok=True)
    sync_drive(build_sync_plan(decoded).config, synced / FRAMES_FILE)
    write_manifest(lake, "de", "bench", splits={drive.name: "train"})
    return manifest


def child(manifest: Path, epochs: int, workers: int, threads: int) -> None:
    from ad_core.train.data import read_manifest, select_split
    from ad_core.train.loop import TrainParams, predict, train

    lake = manifest.parents[3]
    split = select_split(read_manifest(manifest), "train", lambda rel: lake / rel)
    params = TrainParams(epochs=epochs, workers=workers, threads=threads)
    result = train(split, None, params)
    _, eval_s = predict(result.model, split, params.image, workers=workers)
    train_s = sum(h.train_seconds for h in result.history)
    print(
        json.dumps(
            {
                "frames": split.frames,
                "epochs": epochs,
                "train_frames_per_s": round(split.frames * epochs / train_s, 1),
                "eval_frames_per_s": round(split.frames / eval_s, 1),
            }
        )
    )


def _anon_kib(pid: int) -> int:
    """RssAnon of ``pid`` plus its children (the DataLoader workers)."""
    total = 0
    pids = [pid]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            pids += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.epochs, args.workers, args.threads)
        return
    manifest = prepare(args.minutes)
    cmd = [sys.executable, __file__, "--child", str(manifest), "--epochs", str(args.epochs),
           "--workers", str(args.workers), "--threads", str(args.threads)]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _anon_kib(proc.pid))
        time.sleep(0.02)
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode:
        sys.exit(f"benchmark child failed ({proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(
        {
            "peak_anon_mib": round(peak / 1024, 1),
            "workers": args.workers,
            "threads": args.threads,
            "input": "3x66x200",
            "device": "cpu",
            "wall_s": round(time.monotonic() - started, 1),
        }
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
