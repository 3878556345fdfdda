"""raw_drive on one drive of many small files: wall time, event-log rows and the materialization event's size.

The drive is ``--files`` copies of one small real MCAP (../shared/data), landed in a temporary state folder and
materialized once on a temporary instance. One JSON line on stdout.

    python benchmarks/bench_raw_many_files.py [--files 10000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SOURCE = ROOT.parent / "shared" / "data" / "mcap" / "depthai__recording.mcap"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args()

    from dagster import AssetKey, DagsterEventType, EventRecordsFilter, instance_for_test, materialize
    from dagster._serdes import serialize_value

    from ad_assets import raw
    from ad_resources.lake import LocalLake
    from ad_resources.landing import LocalLandingZone

    with tempfile.TemporaryDirectory() as tmp, instance_for_test() as instance:
        drive = Path(tmp) / "landing" / "de" / "de-many-files"
        drive.mkdir(parents=True)
        for i in range(args.files):
            shutil.copyfile(SOURCE, drive / f"part_{i:05d}.mcap")
        instance.add_dynamic_partitions("drives_de", ["de-many-files"])
        started = time.perf_counter()
        result = materialize(
            [raw.definitions("de").assets[1]],
            partition_key="de-many-files",
            instance=instance,
            resources={"landing": LocalLandingZone(root=str(Path(tmp) / "landing")), "lake": LocalLake(root=tmp)},
            raise_on_error=False,
        )
        seconds = time.perf_counter() - started
        (record,) = instance.get_event_records(
            EventRecordsFilter(DagsterEventType.ASSET_MATERIALIZATION, asset_key=AssetKey(["de", "raw_drive"]))
        )
        print(
            json.dumps(
                {
                    "files": args.files,
                    "bytes": args.files * SOURCE.stat().st_size,
                    "success": result.success,
                    "seconds": round(seconds, 1),
                    "event_log_rows": len(instance.all_logs(result.run_id)),
                    "materialization_event_bytes": len(serialize_value(record.event_log_entry)),
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
