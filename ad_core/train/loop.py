"""Training loop and evaluation (per market and per ODD slice, against a train-mean baseline).

Deterministic: seeds, ``torch.use_deterministic_algorithms(True)``, a fixed intra-op thread count and the
dataset's fixed ordering (``data.py``) make a retrain on the same manifest and code give the same weights and
metrics. The thread count is part of that: float sums are grouped per thread.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset

from ad_common.lake_layout import ODD_TAGS
from ad_core.train.data import CameraFrames, ImageSpec, SplitFrames, worker_init
from ad_core.train.model import PilotNet


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 8
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    dropout: float = 0.0
    seed: int = 0
    workers: int = 1  # DataLoader processes decoding JPEGs (0: decode in the training process)
    threads: int = 2  # torch intra-op threads of the training process
    flip: bool = True  # mirror half the frames (steering negated): left- and right-hand traffic alike
    shuffle_buffer: int = 1024  # frames each loader worker mixes (bounded memory)
    image: ImageSpec = field(default_factory=ImageSpec)
    device: str = "cpu"  # "cuda": each rank trains on GPU LOCAL_RANK (NCCL); not run on a GPU so far
    # Validate and keep an exponential moving average of the weights (per step; 0: the raw weights). With a few
    # thousand frames the raw weights' val MAE swung by 20-40 % from epoch to epoch (docs/models.md).
    ema_decay: float = 0.9

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update({f"image_{k}": v for k, v in d.pop("image").items()})
        return d


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float
    train_frames: int
    train_seconds: float
    val_mae: float | None
    learning_rate: float

    @property
    def train_frames_per_s(self) -> float:
        return self.train_frames / self.train_seconds if self.train_seconds > 0 else 0.0


@dataclass
class TrainResult:
    model: PilotNet
    history: list[EpochStats]
    best_epoch: int
    target_mean: float
    target_scale: float
    train_frames: int


def limit_malloc_arenas() -> None:
    """glibc only: at most 2 malloc arenas and trim above 1 MiB of free heap.

    Batches arriving from DataLoader workers are handled by the loader's threads; with glibc's default of one
    arena per thread (up to 8 x cores) freed batch and activation memory stayed fragmented across arenas, and
    the trainer's RssAnon grew with the frames seen (measured: 511 -> 750 MiB from 596 to 3,583 frames;
    416 MiB flat with these two settings, the same as MALLOC_ARENA_MAX=2 MALLOC_TRIM_THRESHOLD_=1048576).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_arena_max = -1, -8  # malloc.h
    libc.mallopt(m_arena_max, 2)
    libc.mallopt(m_trim_threshold, 1 << 20)


def seed_everything(seed: int, threads: int) -> None:
    # Deterministic cuBLAS needs a fixed workspace, set before its first call: without it, deterministic mode raises
    # at the first matrix product on a GPU.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)


def _loader(dataset: IterableDataset, batch_size: int, workers: int, pin: bool = False) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        worker_init_fn=worker_init if workers else None,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
        pin_memory=pin,
    )


def _as_input(images: torch.Tensor, device: str = "cpu") -> torch.Tensor:
    return images.to(device, non_blocking=True).float().div_(255.0)


def _world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sum_across_ranks(*values: float) -> list[float]:
    _rank, world = _world()
    if world == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


class _Standardized(torch.nn.Module):
    """The model's training output as ``forward`` (DistributedDataParallel synchronises through forward)."""

    def __init__(self, model: PilotNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.standardized(x)


def predict_dataset(
    model: torch.nn.Module,
    dataset: IterableDataset,
    size: int,
    batch_size: int = 128,
    workers: int = 1,
    device: str = "cpu",
) -> tuple[np.ndarray, float]:
    """Predictions for the samples ``dataset`` yields (``(image, target, index)``), by index, and the seconds."""
    out = np.full(size, np.nan, np.float32)
    started = time.perf_counter()
    with contextlib.suppress(NotImplementedError):  # a loaded torch.export module was traced in eval mode already
        model.eval()
    with torch.no_grad():
        for images, _y, rows in _loader(dataset, batch_size, workers):
            out[rows.numpy()] = model(_as_input(images, device)).cpu().numpy()
    return out, time.perf_counter() - started


def predict(
    model: torch.nn.Module, split: SplitFrames, spec: ImageSpec, batch_size: int = 128, workers: int = 1
) -> tuple[np.ndarray, float]:
    """Predictions for every frame of ``split`` (indexed like its frame table) and the seconds it took."""
    return predict_dataset(model, CameraFrames(split.drives, spec), split.frames, batch_size, workers)


def _val_mae(model: PilotNet, val_set: IterableDataset, params: TrainParams) -> float:
    """Mean absolute error over ``val_set``; under DDP each rank holds its part and the sums are combined."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for images, y, _rows in _loader(val_set, 128, params.workers):
            pred = model(_as_input(images, params.device)).cpu()
            total += float((pred - y).abs().sum())
            count += len(y)
    total, count = _sum_across_ranks(total, count)
    return total / max(count, 1)


def fit(
    train_set: IterableDataset,
    val_set: IterableDataset | None,
    params: TrainParams,
    target_mean: float,
    target_scale: float,
    train_frames: int,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainResult:
    """Train a :class:`PilotNet` on ``train_set`` (an epoch-aware dataset yielding ``(image, target, index)``);
    the epoch with the best validation MAE is kept (the last one without ``val_set``).

    One training loop for one process and for N (``torch.distributed`` initialised, e.g. by torchrun): the
    model is wrapped in DistributedDataParallel, each rank takes ``batch_size / world`` samples a step (the
    global batch, and so the optimisation, is the rank count's), losses and validation errors are summed
    across ranks. Every rank starts from the same seeded weights (DDP also broadcasts rank 0's)."""
    rank, world = _world()
    if params.batch_size % world:
        raise ValueError(f"batch_size {params.batch_size} is not divisible by the {world} ranks")
    seed_everything(params.seed, params.threads)
    limit_malloc_arenas()
    scale = target_scale if target_scale > 1e-6 else 1.0
    spec = params.image
    model = PilotNet(spec.height, spec.width, target_mean, scale, params.dropout).to(params.device)
    net: torch.nn.Module = _Standardized(model)
    if world > 1:
        device_ids = [torch.device(params.device).index or 0] if params.device.startswith("cuda") else None
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=device_ids)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay)
    averaged = (
        torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(params.ema_decay), use_buffers=True
        )
        if params.ema_decay > 0
        else None
    )
    evaluated = averaged.module if averaged is not None else model
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: 0.5 * (1 + math.cos(math.pi * e / max(1, params.epochs)))
    )
    loader = _loader(train_set, params.batch_size // world, params.workers, pin=params.device.startswith("cuda"))
    history: list[EpochStats] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    for epoch in range(params.epochs):
        train_set.set_epoch(epoch)  # type: ignore[attr-defined]
        net.train()
        started, total, frames = time.perf_counter(), 0.0, 0
        lr = optimizer.param_groups[0]["lr"]
        for images, y, _rows in loader:
            optimizer.zero_grad(set_to_none=True)
            target = (y.to(params.device) - target_mean) / scale
            loss = torch.nn.functional.smooth_l1_loss(net(_as_input(images, params.device)), target)
            loss.backward()
            optimizer.step()
            if averaged is not None:
                averaged.update_parameters(model)
            total += loss.item() * len(y)
            frames += len(y)
        seconds = time.perf_counter() - started
        schedule.step()
        total, frames_all = _sum_across_ranks(total, frames)
        val_mae = None
        if val_set is not None:
            val_mae = _val_mae(evaluated, val_set, params)
            if best is None or val_mae < best[0]:
                best = (val_mae, epoch, copy.deepcopy(evaluated.state_dict()))
        stats = EpochStats(epoch, total / max(frames_all, 1), int(frames_all), seconds, val_mae, lr)
        history.append(stats)
        if on_epoch is not None and rank == 0:
            on_epoch(stats)
    best_epoch = params.epochs - 1
    if best is not None:
        best_epoch = best[1]
        model.load_state_dict(best[2])
    elif averaged is not None:
        model.load_state_dict(averaged.module.state_dict())
    model.eval()
    return TrainResult(model, history, best_epoch, target_mean, scale, train_frames)


def robust_scale(targets: np.ndarray) -> float:
    """The target's training scale (deg): the 90th percentile of |steering - mean|, at least 1 deg.

    Not the std: a few junction turns (100+ deg) set the std to ~30 deg, and then the usual 0-5 deg of a road is a
    rounding error in the Huber loss (measured on the demo fleet: CN test MAE 0.69 -> 0.42 x the baseline).
    """
    return float(max(np.percentile(np.abs(targets - targets.mean()), 90), 1.0)) if targets.size else 1.0


def train(
    train_split: SplitFrames,
    val_split: SplitFrames | None,
    params: TrainParams,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainResult:
    """:func:`fit` on the frames of split manifests, JPEGs decoded on the fly (:class:`CameraFrames`)."""
    if train_split.frames == 0:
        raise ValueError("the train split has no frames to train on (all excluded, or no steering synced)")
    targets = train_split.targets()
    spec = params.image
    dataset = CameraFrames(
        train_split.drives, spec, shuffle=True, flip=params.flip, seed=params.seed, shuffle_buffer=params.shuffle_buffer
    )
    val = CameraFrames(val_split.drives, spec) if val_split is not None and val_split.frames else None
    return fit(dataset, val, params, float(targets.mean()), robust_scale(targets), train_split.frames, on_epoch)


def _stats(pred: np.ndarray, target: np.ndarray, baseline: float) -> dict[str, float]:
    err, base = pred - target, baseline - target
    mae, bmae = float(np.mean(np.abs(err))), float(np.mean(np.abs(base)))
    return {
        "frames": len(target),
        "mae": mae,
        "rmse": float(np.sqrt(np.mean(err**2))),
        "baseline_mae": bmae,
        "baseline_rmse": float(np.sqrt(np.mean(base**2))),
        "mae_ratio": mae / bmae if bmae > 0 else (0.0 if mae == 0 else math.inf),
    }


def evaluate(pred: np.ndarray, split: SplitFrames, baseline: float) -> dict[str, Any]:
    """MAE/RMSE of ``pred`` on ``split`` overall, per market and per (market, ODD tag, value) slice, next to
    the baseline that always predicts ``baseline`` (the train mean)."""
    if split.frames == 0:
        raise ValueError(f"the {split.split} split has no frames to evaluate on")
    return evaluate_frames(pred, split.table, split.targets(), baseline)


def evaluate_frames(pred: np.ndarray, table: pa.Table, target: np.ndarray, baseline: float) -> dict[str, Any]:
    """:func:`evaluate` on a frame table (``market`` and ODD tag columns) and its targets, row by row."""
    markets = np.asarray(table.column("market").to_pylist())
    report: dict[str, Any] = {"overall": _stats(pred, target, baseline), "markets": {}, "slices": []}
    for market in sorted(set(markets)):
        m = markets == market
        report["markets"][market] = _stats(pred[m], target[m], baseline)
        for tag in ODD_TAGS:
            values = np.asarray(table.column(tag).fill_null("unknown").to_pylist())
            for value in sorted(set(values[m])):
                s = m & (values == value)
                report["slices"].append(
                    {"market": market, "tag": tag, "value": value, **_stats(pred[s], target[s], baseline)}
                )
    return report
