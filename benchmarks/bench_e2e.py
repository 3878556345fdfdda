"""End-to-end ingest benchmark: one generated drive through the real Dagster path, against decode_drive alone.

For each size (~1 GB and ~4 GB fleetgen drives, generated once with ``bench_ingest.fleetgen_drive`` and cached
under ``--data``, default ``$AD_STATE_DIR/bench-e2e``), a fresh embedded state (landing, lake, SQLite Dagster
instance) gets the drive hard-linked into its landing zone, then a fresh subprocess does what
``python -m ad_platform run-once --settle-s 0`` does: the landing sensor's tick registers the drive and its
ingest run executes in-process (raw_drive -> decoded_signals -> synced_frames -> odd_tags, asset checks
included). Measured:

* ``seconds``: from the end of the interpreter start and imports (``startup_seconds``: Python, Dagster, the
  definitions, and what run-once prepares once per process before its first step, ``runner.prepare_process``:
  the Great Expectations import, the MDF decoders' forkserver start; opening the Dagster instance, which on the
  fresh state of every measurement creates its SQLite schema) to the end of run-once; ``mb_per_s`` over
  it, ``mb_per_s_with_startup`` over the whole process;
  ``mb_per_s_through_synced`` up to the end of the ``synced_frames`` step (issue 15's path: landing, sensor,
  raw_drive, decoded_signals, synced_frames; the run's later steps, drive_recording and odd_tags, left out);
* ``steps``: each step's seconds, from the run's step stats in the Dagster instance; ``core_seconds``: the
  seconds ``decode_drive`` / ``sync_drive`` took inside their step (the step's ``seconds`` metadata);
* ``peak_anon_mib``: the largest RssAnon (private memory) of any one process of the run: the run-once process,
  which executes every step, or the MDF decoder child. ``peak_anon_mib_with_children`` sums the tree;
* ``decode_only_mb_per_s``: ``decode_drive`` alone on the same files, in the same run, as ``make bench-ingest``
  measures it (a warm subprocess, page cache warm), and ``ratio_to_decode_only`` = mb_per_s / that.

One JSON line per size on stdout.

``--runs N`` repeats both measurements N times and reports the median of each (this machine's run-to-run noise is
±25 %), every run's figures in ``*_runs``.

    python benchmarks/bench_e2e.py [--sizes 1,4] [--runs N] [--data DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_ingest import _floor_seconds, drive_files, fleetgen_drive, measure_decode, watch  # noqa: E402

MARKET = "de"


def _child_run_once() -> None:
    """In the state the environment names: imports, then the landing tick and its runs, as run-once does."""
    started = time.time()
    from ad_platform.definitions import defs
    from ad_platform.instance import local_instance
    from ad_platform.runner import prepare_process, run_once

    prepare_process()  # what run-once does first, once per process (GX import, the MDF forkserver's start)
    instance = local_instance()  # a fresh state's instance migrates its SQLite schema here (~0.4 s), once
    ready = time.time()
    outcomes = run_once(defs, instance, log=lambda line: print(line, file=sys.stderr), settle_s=0)
    done = time.time()
    from dagster import DagsterEventType

    steps: dict[str, tuple[float, float]] = {}
    inner: dict[str, float] = {}  # the seconds a step's core reported (decode_drive, sync_drive), in its metadata
    for outcome in outcomes:
        if outcome.run_id:
            for stat in instance.get_run_step_stats(outcome.run_id):
                if stat.start_time and stat.end_time:
                    steps[stat.step_key.removeprefix(f"{MARKET}__")] = (stat.start_time, stat.end_time)
            for event in instance.all_logs(outcome.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION):
                materialization = event.asset_materialization
                if materialization is not None and "seconds" in materialization.metadata:
                    inner[materialization.asset_key.path[-1]] = materialization.metadata["seconds"].value
    print(
        json.dumps(
            {
                "started": started,
                "ready": ready,
                "done": done,
                "steps": steps,
                "core_seconds": inner,
                "outcomes": [{"status": o.status, "error": o.error, "materialized": o.materialized} for o in outcomes],
            }
        )
    )


def _fresh_state(state: Path, drive: Path) -> dict[str, str]:
    """An empty embedded state whose landing zone holds ``drive`` (hard links: no copy of the bytes)."""
    shutil.rmtree(state, ignore_errors=True)
    landing = state / "landing" / MARKET
    for folder in (drive, drive.parent / "_dbc"):
        target = landing / folder.name
        target.mkdir(parents=True)
        for f in folder.iterdir():
            if f.is_file():
                os.link(f, target / f.name)
    return {
        **os.environ,
        "AD_STATE_DIR": str(state),
        "AD_LANDING_DIR": str(state / "landing"),
        "AD_LAKE_DIR": str(state / "lake"),
        "DAGSTER_HOME": str(state / "dagster_home"),
    }


def _run_once_child(state: Path, drive: Path, keep: bool) -> dict:
    """One run-once of ``drive`` on a fresh state, in a fresh process."""
    env = _fresh_state(state, drive)
    spawned = time.time()
    samples: list[tuple[float, int, int]] = []
    # -c, as `python -m ad_platform` does: the decoder's forkserver children re-import a main *script* (this one)
    paths = [str(ROOT), str(ROOT / "benchmarks")]
    code = f"import sys; sys.path[:0] = {paths!r}; import bench_e2e; bench_e2e._child_run_once()"
    run = watch([sys.executable, "-c", code], env=env, samples=samples)
    if not keep:
        shutil.rmtree(state, ignore_errors=True)
    child = json.loads(run["stdout"].strip().splitlines()[-1])
    window = child["steps"]
    synced_end = window["synced_frames"][1] if "synced_frames" in window else None
    return {
        **run,
        **child,
        "startup_seconds": child["ready"] - spawned,
        "through_synced": synced_end - child["ready"] if synced_end else None,
        # RssAnon of the run-once process (every step runs in it) and of its largest child (the MDF decoder)
        "steps_anon": {
            step: round(max((max(a, c) for at, a, c in samples if start <= at <= end), default=0) / 1024, 1)
            for step, (start, end) in window.items()
        },
    }


def run_size(gb: float, data: Path, keep: bool, runs: int) -> dict:
    """``runs`` pairs of (decode_drive alone, run-once); the line is the median run-once (by its time through
    synced_frames) against the median decode_drive, with every run's two figures beside them."""
    drive = fleetgen_drive(gb, data)
    files, dbcs = drive_files(drive)
    size = sum(p.stat().st_size for p in files)
    floor = _floor_seconds(files)  # also warms the page cache for both measurements
    decodes, run_onces = [], []
    for _ in range(runs):
        decode_out = data / f"decode_only_{gb:g}gb"
        shutil.rmtree(decode_out, ignore_errors=True)
        decode_out.mkdir()
        decodes.append(measure_decode(files, dbcs, decode_out))
        shutil.rmtree(decode_out, ignore_errors=True)
        run_onces.append(_run_once_child(data / f"state_{gb:g}gb", drive, keep))
    decode = sorted(decodes, key=lambda d: d.get("seconds_inner", float("inf")))[(runs - 1) // 2]
    run = sorted(run_onces, key=lambda r: r["through_synced"] or float("inf"))[(runs - 1) // 2]
    seconds = run["done"] - run["ready"]
    decode_s = decode.get("seconds_inner", float("nan"))
    mb_per_s = size / 1e6 / seconds
    through_synced = run["through_synced"]
    return {
        "size_gb_requested": gb,
        "size_bytes": size,
        "runs": runs,
        "seconds": round(seconds, 3),
        "startup_seconds": round(run["startup_seconds"], 3),
        "steps": {step: round(end - start, 3) for step, (start, end) in run["steps"].items()},
        "steps_peak_anon_mib": run["steps_anon"],
        "core_seconds": run["core_seconds"],
        "mb_per_s": round(mb_per_s, 1),
        "mb_per_s_with_startup": round(size / 1e6 / run["seconds"], 1),
        "seconds_through_synced": round(through_synced, 3) if through_synced else None,
        "mb_per_s_through_synced": round(size / 1e6 / through_synced, 1) if through_synced else None,
        "peak_anon_mib": max(r["peak_anon_mib_largest_process"] for r in run_onces),
        "peak_anon_mib_run_once": max(r["peak_anon_mib"] for r in run_onces),
        "peak_anon_mib_with_children": max(r["peak_anon_mib_with_children"] for r in run_onces),
        "decode_only_seconds": round(decode_s, 3),
        "decode_only_mb_per_s": round(size / 1e6 / decode_s, 1),
        "decode_only_peak_anon_mib": max(d["peak_anon_mib_largest_process"] for d in decodes),
        "ratio_to_decode_only": round(mb_per_s / (size / 1e6 / decode_s), 3),
        "ratio_through_synced_to_decode_only": round(decode_s / through_synced, 3) if through_synced else None,
        "seconds_through_synced_runs": [round(r["through_synced"] or float("nan"), 3) for r in run_onces],
        "decode_only_seconds_runs": [round(d.get("seconds_inner", float("nan")), 3) for d in decodes],
        "floor_seconds": round(floor, 3),
        "outcomes": run["outcomes"],
        "load_average": os.getloadavg()[0],
        "rc": max(r["rc"] for r in run_onces),
    }


def main() -> int:
    state_dir = Path(os.environ.get("AD_STATE_DIR", ROOT / ".state"))
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,4", help="drive sizes in GB, comma separated")
    ap.add_argument("--data", type=Path, default=state_dir / "bench-e2e", help="drive cache and run states")
    ap.add_argument("--keep", action="store_true", help="keep the last run's state (lake, instance) for inspection")
    ap.add_argument("--runs", type=int, default=1, help="measurements per size; the line gives the median")
    args = ap.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    sizes = [float(s) for s in args.sizes.split(",")]
    need = sum(sizes) * 3.2e9  # the drive (kept) plus two decoded copies at a time
    free = shutil.disk_usage(args.data).free
    if free < need:
        print(json.dumps({"error": f"need ~{need / 1e9:.0f} GB free under {args.data}, have {free / 1e9:.0f} GB"}))
        return 1
    os.environ.setdefault("PYTHONHASHSEED", "0")
    for gb in sizes:
        print(json.dumps(run_size(gb, args.data.resolve(), args.keep, args.runs)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
