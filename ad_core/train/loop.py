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
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

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
    shuffle_buffer: int = 512
    image: ImageSpec = field(default_factory=ImageSpec)

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
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)


def _loader(dataset: CameraFrames, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        worker_init_fn=worker_init if workers else None,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
    )


def _as_input(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255.0)


def predict(
    model: torch.nn.Module, split: SplitFrames, spec: ImageSpec, batch_size: int = 128, workers: int = 1
) -> tuple[np.ndarray, float]:
    """Predictions for every frame of ``split`` (indexed like its frame table) and the seconds it took."""
    out = np.full(split.frames, np.nan, np.float32)
    started = time.perf_counter()
    with contextlib.suppress(NotImplementedError):  # a loaded torch.export module was traced in eval mode already
        model.eval()
    with torch.no_grad():
        for images, _y, rows in _loader(CameraFrames(split.drives, spec), batch_size, workers):
            out[rows.numpy()] = model(_as_input(images)).numpy()
    return out, time.perf_counter() - started


def train(
    train_split: SplitFrames,
    val_split: SplitFrames | None,
    params: TrainParams,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainResult:
    """Train a :class:`PilotNet` on ``train_split``; the epoch with the best validation MAE is kept (the last
    one without a validation split)."""
    if train_split.frames == 0:
        raise ValueError("the train split has no frames to train on (all excluded, or no steering synced)")
    seed_everything(params.seed, params.threads)
    limit_malloc_arenas()
    targets = train_split.targets()
    mean, scale = float(targets.mean()), float(targets.std())
    scale = scale if scale > 1e-6 else 1.0
    spec = params.image
    model = PilotNet(spec.height, spec.width, mean, scale, params.dropout)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: 0.5 * (1 + math.cos(math.pi * e / max(1, params.epochs)))
    )
    dataset = CameraFrames(
        train_split.drives, spec, shuffle=True, flip=params.flip, seed=params.seed, shuffle_buffer=params.shuffle_buffer
    )
    loader = _loader(dataset, params.batch_size, params.workers)
    history: list[EpochStats] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    val_targets = val_split.targets() if val_split is not None and val_split.frames else None
    for epoch in range(params.epochs):
        dataset.set_epoch(epoch)
        model.train()
        started, total, frames = time.perf_counter(), 0.0, 0
        lr = optimizer.param_groups[0]["lr"]
        for images, y, _rows in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.smooth_l1_loss(model.standardized(_as_input(images)), (y - mean) / scale)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(y)
            frames += len(y)
        seconds = time.perf_counter() - started
        schedule.step()
        val_mae = None
        if val_targets is not None and val_split is not None:
            pred, _ = predict(model, val_split, spec, workers=params.workers)
            val_mae = float(np.mean(np.abs(pred - val_targets)))
            if best is None or val_mae < best[0]:
                best = (val_mae, epoch, copy.deepcopy(model.state_dict()))
        stats = EpochStats(epoch, total / max(frames, 1), frames, seconds, val_mae, lr)
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
    best_epoch = params.epochs - 1
    if best is not None:
        best_epoch = best[1]
        model.load_state_dict(best[2])
    model.eval()
    return TrainResult(model, history, best_epoch, mean, scale, train_split.frames)


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
    target = split.targets()
    markets = np.asarray(split.table.column("market").to_pylist())
    report: dict[str, Any] = {"overall": _stats(pred, target, baseline), "markets": {}, "slices": []}
    for market in sorted(set(markets)):
        m = markets == market
        report["markets"][market] = _stats(pred[m], target[m], baseline)
        for tag in ODD_TAGS:
            values = np.asarray(split.table.column(tag).fill_null("unknown").to_pylist())
            for value in sorted(set(values[m])):
                s = m & (values == value)
                report["slices"].append(
                    {"market": market, "tag": tag, "value": value, **_stats(pred[s], target[s], baseline)}
                )
    return report
