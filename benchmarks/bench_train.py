"""Training from shards at 1 and 2 ranks: one JSON line per configuration (docs/training-at-scale.md).

A fleetgen drive (``--minutes``, 10 Hz camera) is decoded, synced and written as training shards once into a
cache folder; ``--drives`` copies of it (2 by default) make the doubled dataset. Each configuration runs in a
fresh process tree (torchrun for 2 ranks) and reports, measured in the same run:

* ``train_frames_per_s``: training from the shards through the real loader (all ranks together);
* ``compute_only_frames_per_s``: the same model and per-rank batch on in-memory tensors (rank 0's rate times ranks);
* ``loader_frames_per_s``: the loader alone (one rank's share, its workers, no model);
* ``eval_frames_per_s``: inference over the shards;
* ``peak_anon_mib``: the largest process's peak RssAnon (trainer or loader worker), polled every 20 ms.

    make bench-train          # python benchmarks/bench_train.py [--minutes 1] [--epochs 1] [--ranks 1,2]
    python benchmarks/bench_train.py --device cuda --ranks 1 --workers 8   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CACHE = Path(tempfile.gettempdir()) / "ad-bench-train-shards"


def prepare(minutes: float, copies: int) -> list[str]:
    """Index URIs of ``copies`` shard sets of one synced DE drive (the same frames, so doubling is exact)."""
    from ad_core.train.data import ImageSpec, read_manifest, select_split
    from ad_core.train.shards import write_shards

    root = CACHE / f"{minutes:g}min"
    index = root / "shards" / "index.json"
    if not index.is_file():
        from tests.support.splits import synced_fleet, write_manifest  # Dagster: only to build the cache

        lake = synced_fleet(root, "de", drives=1, minutes=minutes, seed=11)  # the real raw -> synced assets
        (drive,) = (lake / "synced" / "de").iterdir()
        rel, sha = write_manifest(lake, "de", "bench", splits={drive.name: "train"})
        split = select_split(read_manifest(lake / rel), "train", lambda r: lake / r)
        write_shards({"train": split}, ImageSpec(), index.parent, market="de", split_version="bench",
                     manifest_sha256=sha, manifest_path=rel, shard_bytes=8 << 20)  # fmt: skip
    return [str(index)] * copies


def child(indexes: list[str], epochs: int, workers: int, threads: int, batch: int, device: str) -> None:
    """One rank (under torchrun when WORLD_SIZE is set): train, then compute-only, loader-only, eval."""
    import torch
    import torch.distributed as dist

    from ad_core.train.loop import TrainParams, _loader, fit, predict_dataset, robust_scale
    from ad_core.train.model import PilotNet
    from ad_core.train.shards import ShardStream, load_split

    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    split = load_split(indexes, "train")
    targets = split.targets()
    params = TrainParams(epochs=epochs, batch_size=batch, workers=workers, threads=threads, device=device)
    train_set = ShardStream(split.shards, shuffle=True, flip=True, rank=rank, world=world, pad=True)
    result = fit(train_set, None, params, float(targets.mean()), robust_scale(targets), split.size)
    train_s = max(h.train_seconds for h in result.history)  # the slowest epoch... of this rank
    train_rate = sum(h.train_frames for h in result.history) / sum(h.train_seconds for h in result.history)
    # Compute only: the same model and per-rank batch on in-memory tensors, as many steps as an epoch.
    per_rank = batch // world
    steps = len(train_set) // per_rank
    model = PilotNet().to(device)
    optimizer = torch.optim.Adam(model.parameters())
    x, y = torch.rand(per_rank, 3, 66, 200, device=device), torch.rand(per_rank, device=device)
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.smooth_l1_loss(model.standardized(x), y).backward()
        optimizer.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()  # kernels run asynchronously: time their end, not their launch
    compute_rate = steps * per_rank / (time.perf_counter() - started) * world
    loader = _loader(ShardStream(split.shards, shuffle=True, rank=rank, world=world, pad=True), per_rank, workers)
    started = time.perf_counter()
    loaded = sum(len(b[1]) for b in loader)
    loader_rate = loaded / (time.perf_counter() - started)
    _, eval_s = predict_dataset(
        result.model, ShardStream(split.shards, rank=rank, world=world), split.size, workers=workers, device=device
    )
    if rank == 0:
        print(json.dumps({
            "dataset_frames": split.size,
            "epochs": epochs,
            "train_frames_per_s": round(train_rate, 1),
            "compute_only_frames_per_s": round(compute_rate, 1),
            "loader_frames_per_s": round(loader_rate, 1),
            "eval_frames_per_s": round(len(ShardStream(split.shards, rank=0, world=world)) / eval_s * world, 1),
            "slowest_epoch_s": round(train_s, 2),
            "final_train_loss": result.history[-1].train_loss,  # equal across reruns: training is deterministic
        }), flush=True)  # fmt: skip
    if dist.is_initialized():
        dist.destroy_process_group()


def _tree(pid: int) -> list[int]:
    pids, queue = [], [pid]
    while queue:
        p = queue.pop()
        pids.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                queue += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return pids


def _anon_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run(ranks: int, indexes: list[str], args: argparse.Namespace) -> dict:
    child_args = ["--child", *indexes, "--epochs", str(args.epochs), "--workers", str(args.workers),
                  "--threads", str(args.threads if ranks == 1 else max(1, args.threads // ranks)),
                  "--batch", str(args.batch), "--device", args.device]  # fmt: skip
    if ranks == 1:
        cmd = [sys.executable, __file__, *child_args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
               __file__, *child_args]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    peak = 0
    while proc.poll() is None:
        peak = max([peak, *(_anon_kib(p) for p in _tree(proc.pid))])
        time.sleep(0.02)
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode:
        sys.exit(f"benchmark ({ranks} ranks) failed ({proc.returncode})")
    line = json.loads([x for x in out.splitlines() if x.startswith("{")][-1])
    return {"ranks": ranks, **line, "peak_anon_mib": round(peak / 1024, 1), "workers": args.workers,
            "batch_size": args.batch, "input": "3x66x200", "device": args.device,
            "wall_s": round(time.monotonic() - started, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--device", default="cpu", help='"cuda" trains on the GPU (one rank per GPU)')
    parser.add_argument("--copies", default="1,2", help="dataset sizes, in copies of the drive (memory flatness)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.epochs, args.workers, args.threads, args.batch, args.device)
        return
    copies = [int(c) for c in args.copies.split(",")]
    indexes = prepare(args.minutes, 1)
    for ranks in (int(r) for r in args.ranks.split(",")):
        for n in copies if ranks == 1 else copies[-1:]:
            print(json.dumps(run(ranks, indexes * n, args)), flush=True)


if __name__ == "__main__":
    main()
