"""CLI: python -m fleetgen --drives 2 --markets de,us,cn,jp --minutes 2 --out <landing> [--seed 0]"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .drive import DEFAULT_CAMERA_SIZE, DEFAULT_LIDAR_POINTS, generate_fleet
from .profiles import FAULT_TYPES, MARKETS
from .sizing import options_for_size


def _size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fleetgen", description=__doc__)
    ap.add_argument("--drives", type=int, default=2, help="drives per market")
    ap.add_argument("--markets", default=",".join(MARKETS), help="comma separated, e.g. de,us,cn,jp")
    ap.add_argument("--minutes", type=float, default=2.0, help="duration of every drive")
    ap.add_argument("--out", type=Path, required=True, help="landing folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--camera-hz", type=float, default=10.0)
    ap.add_argument("--camera-size", type=_size, default=DEFAULT_CAMERA_SIZE, help="WxH, e.g. 480x270")
    ap.add_argument("--lidar-points", type=int, default=DEFAULT_LIDAR_POINTS)
    ap.add_argument("--extra-mdf-signals", type=int, default=0, help="extra 1 kHz float32 MDF channels")
    ap.add_argument(
        "--size-gb",
        type=float,
        default=None,
        help="target size per drive; sets --lidar-points/--extra-mdf-signals for --minutes",
    )
    ap.add_argument(
        "--fault", action="append", default=[], choices=FAULT_TYPES, help="inject a fault into every drive (repeatable)"
    )
    ap.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    args = ap.parse_args(argv)

    options = {
        "camera_hz": args.camera_hz,
        "camera_size": args.camera_size,
        "lidar_points": args.lidar_points,
        "extra_mdf_signals": args.extra_mdf_signals,
        "faults": tuple(args.fault),
    }
    if args.size_gb is not None:
        options.update(options_for_size(args.size_gb, args.minutes))
    markets = [m.strip() for m in args.markets.split(",") if m.strip()]
    t0 = time.perf_counter()
    drives = generate_fleet(args.out, markets, args.drives, args.minutes, args.seed, workers=args.workers, **options)
    elapsed = time.perf_counter() - t0
    total = sum(f.stat().st_size for d in drives for f in d.iterdir())
    for d in drives:
        print(d)
    print(
        f"{len(drives)} drives, {total / 1e6:.1f} MB in {elapsed:.1f} s ({total / 1e6 / elapsed:.1f} MB/s)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
