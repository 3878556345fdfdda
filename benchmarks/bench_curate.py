"""Curated splits at fleet scale: 10,000 drives x 4 markets of synthetic catalog records, one JSON line.

Each market's drives get random ODD tags and 2-6 H3 cells (res 6) from a region of ~200 km around its city, so
place groups form as in a real fleet. Timed: place groups, stratified assignment, a second version run with
500 new drives per market (stability path), the quota report and the leakage check. Peak private (anonymous)
memory is read from /proc (VmHWM would count shared pages too).

    python benchmarks/bench_curate.py [--drives 10000]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import h3
import numpy as np

from ad_core.curate.odd import ODD_VALUES
from ad_core.curate.splits import (
    DriveCandidate,
    SplitConfig,
    assign_splits,
    leakage_violations,
    place_groups,
    quota_report,
)

CITIES = {"de": (48.14, 11.58), "us": (37.39, -122.08), "cn": (31.23, 121.47), "jp": (35.68, 139.65)}


def _anon_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def synthetic_drives(
    market: str, n: int, seed: int, prefix: str = "d", region_deg: float = 1.0
) -> list[DriveCandidate]:
    rng = np.random.default_rng([seed, len(market), ord(market[0])])
    lat0, lon0 = CITIES[market]
    drives = []
    for i in range(n):
        lat, lon = lat0 + rng.uniform(-region_deg, region_deg), lon0 + rng.uniform(-1.3, 1.3) * region_deg
        cells = {h3.latlng_to_cell(lat + k * 0.03, lon + k * 0.03, 6) for k in range(int(rng.integers(2, 7)))}
        frames = int(rng.integers(300, 3000))
        tags = {tag: {str(rng.choice(values)): frames} for tag, values in ODD_VALUES.items()}
        drives.append(DriveCandidate(f"{market}-{prefix}{i:05d}", frames, frozenset(cells), tags))
    return drives


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--drives", type=int, default=10_000, help="drives per market")
    ap.add_argument("--region-deg", type=float, default=1.0, help="half-size of each market's region (degrees)")
    args = ap.parse_args()
    config = SplitConfig()
    started = time.perf_counter()
    peak = _anon_kib()
    held_out = leaks = 0
    largest_group = 0.0
    for market in CITIES:
        drives = synthetic_drives(market, args.drives, seed=0, region_deg=args.region_deg)
        first = assign_splits(drives, {}, config)
        more = drives + synthetic_drives(market, args.drives // 20, seed=1, prefix="new", region_deg=args.region_deg)
        second = assign_splits(more, first.splits, config)
        assert all(second.splits[d] == s for d, s in first.splits.items()), "an existing drive moved"
        by_id = {d.drive_id: d for d in more}
        quota_report(second.splits, by_id, config)
        leaks += len(leakage_violations(second.splits, {d: by_id[d].cells for d in second.splits}))
        held_out += len(second.held_out)
        groups = place_groups({d.drive_id: d.cells for d in more})
        largest_group = max(largest_group, max(len(g) for g in groups.values()) / len(more))
        peak = max(peak, _anon_kib())
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "drives": args.drives * len(CITIES),
                "markets": len(CITIES),
                "seconds": round(seconds, 2),
                "peak_anon_mib": round(peak / 1024, 1),
                "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "new_drives_held_out": held_out,
                "leakage_violations": leaks,
                # 1.0 = every drive of a market shares places with the others: one group, nothing to split
                "largest_place_group_share": round(largest_group, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
