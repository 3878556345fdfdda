"""Measure one drive: time, size, MB/s and peak private memory (RssAnon, sampled every 20 ms).

    python -m fleetgen.measure /tmp/landing '{"minutes": 20, "lidar_points": 11488, "extra_mdf_signals": 335}'

RssAnon (not RSS) because page cache and mapped files would hide whether the generator itself streams.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from .drive import generate_drive


def rss_anon_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def measure(landing: Path, market: str = "de", index: int = 0, **options: object) -> dict[str, float]:
    minutes = float(options.pop("minutes", 2.0))  # type: ignore[arg-type]
    peak = [rss_anon_kb()]
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_anon_kb())
            time.sleep(0.02)

    base = rss_anon_kb()
    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    drive = generate_drive(landing, market, index, minutes, **options)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - t0
    stop.set()
    thread.join()
    total = sum(p.stat().st_size for p in drive.iterdir())
    return {
        "minutes": minutes,
        "seconds": round(elapsed, 2),
        "MB": round(total / 1e6, 1),
        "MB_per_s": round(total / 1e6 / elapsed, 1),
        "rss_anon_before_MB": round(base / 1024, 1),
        "rss_anon_peak_MB": round(peak[0] / 1024, 1),
    }


if __name__ == "__main__":
    opts = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    print(json.dumps(measure(Path(sys.argv[1]), **opts)))
