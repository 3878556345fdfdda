"""Register 100,000 drives of one market through the landing sensor on a real PostgreSQL instance.

Prints one JSON line per tick and a summary: every tick must stay under Dagster's 60 s sensor timeout.
Then times listing the market's partitions and their materialization status, as the UI does.
Run: .venv/bin/python benchmarks/bench_sensor_postgres.py [--drives 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from dagster import AssetKey, DagsterInstance, SensorResult, build_sensor_context

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from ad_resources.lake import LocalLake  # noqa: E402
from ad_resources.landing import LocalLandingZone  # noqa: E402
from ad_sensors.landing import evaluate_landing  # noqa: E402
from tests.support.postgres_server import running_postgres  # noqa: E402


def land(root: Path, drives: int) -> None:
    old = time.time_ns() - 3_600 * 10**9
    for i in range(drives):
        folder = root / "de" / f"de-veh{i % 500:03d}-{i:06d}"
        folder.mkdir(parents=True)
        path = folder / "drive.mcap"
        path.write_bytes(b"x")
        os.utime(path, ns=(old + i, old + i))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--drives", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sensor-") as tmp:
        root = Path(tmp)
        started = time.monotonic()
        land(root / "landing", args.drives)
        print(json.dumps({"landed_drives": args.drives, "seconds": round(time.monotonic() - started, 1)}), flush=True)
        with running_postgres(root / "pg") as params:
            home = root / "home"
            home.mkdir()
            shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
            os.environ.update(params.env())
            instance = DagsterInstance.from_config(str(home))
            landing = LocalLandingZone(root=str(root / "landing"))
            lake = LocalLake(root=str(root / "lake"))
            cursor, ticks, registered = None, [], 0
            while True:
                tick_started = time.monotonic()
                with build_sensor_context(instance=instance, cursor=cursor) as context:
                    result = evaluate_landing(context, landing, lake, markets=("de",))
                if not isinstance(result, SensorResult) or not result.run_requests:
                    break
                # What the daemon does with the result: add the partitions (the runs it would queue are counted).
                for request in result.dynamic_partitions_requests:
                    instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
                seconds = time.monotonic() - tick_started
                registered += len(result.run_requests)
                cursor = result.cursor
                ticks.append(seconds)
                print(
                    json.dumps({"tick": len(ticks), "drives": len(result.run_requests), "seconds": round(seconds, 2)}),
                    flush=True,
                )
            list_started = time.monotonic()
            keys = instance.get_dynamic_partitions("drives_de")
            list_s = time.monotonic() - list_started
            status_started = time.monotonic()
            materialized = instance.get_materialized_partitions(AssetKey(["de", "raw_drive"]))
            status_s = time.monotonic() - status_started
            print(
                json.dumps(
                    {
                        "backend": "postgres",
                        "drives_registered": registered,
                        "partitions": len(keys),
                        "ticks": len(ticks),
                        "max_tick_s": round(max(ticks), 2),
                        "mean_tick_s": round(sum(ticks) / len(ticks), 2),
                        "total_s": round(sum(ticks), 1),
                        "list_partitions_s": round(list_s, 3),
                        "materialized_status_s": round(status_s, 3),
                        "materialized": len(materialized),
                        "all_ticks_under_60s": max(ticks) < 60,
                    }
                ),
                flush=True,
            )
            instance.dispose()


if __name__ == "__main__":
    main()
