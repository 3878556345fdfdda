"""Parity of an engine against the registered PyTorch model, on real frames, and its CPU latency.

Both run on the same frames (the market's test split, decoded exactly as training and evaluation decode them),
in batches of ``batch_size`` (deliberately not the export's example size: dynamic batch dimensions are where
exporters break). The report gives the max and mean absolute difference of the outputs (degrees) and the
downstream metric, steering MAE against the targets, for both; it passes when the max difference is within
``atol`` and the two MAEs agree within ``mae_tolerance`` degrees.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch.utils.data import DataLoader

from ad_core.train.data import CameraFrames, ImageSpec, SplitFrames

Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ParityReport:
    frames: int
    batch_size: int
    max_abs_diff: float
    mean_abs_diff: float
    mae_reference: float
    mae_engine: float
    mae_delta: float
    atol: float
    mae_tolerance: float
    per_market: dict[str, dict[str, float]]
    engine: str
    reference: str

    @property
    def passed(self) -> bool:
        return self.frames > 0 and self.max_abs_diff <= self.atol and self.mae_delta <= self.mae_tolerance

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def ort_session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU onnxruntime session with a fixed thread count (latency and results comparable between runs)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_predictor(session: ort.InferenceSession) -> Predictor:
    name = session.get_inputs()[0].name
    return lambda x: np.asarray(session.run(None, {name: x})[0], np.float32).reshape(-1)


def torch_predictor(module: torch.nn.Module) -> Predictor:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy().astype(np.float32).reshape(-1)

    return run


def frames(split: SplitFrames, spec: ImageSpec, batch_size: int) -> DataLoader:
    """Batches ``(images float32 in [0, 1], targets, rows)`` in the split's fixed order (no shuffle, no flip)."""
    return DataLoader(CameraFrames(split.drives, spec), batch_size=batch_size, num_workers=0)


def compare(
    reference: Predictor,
    engine: Predictor,
    split: SplitFrames,
    spec: ImageSpec,
    *,
    batch_size: int = 7,
    atol: float = 1e-3,
    mae_tolerance: float = 0.01,
    engine_name: str = "onnxruntime",
    reference_name: str = "torch",
) -> ParityReport:
    ref = np.full(split.frames, np.nan, np.float32)
    eng = np.full(split.frames, np.nan, np.float32)
    for images, _y, rows in frames(split, spec, batch_size):
        x = images.float().div_(255.0).numpy()
        ref[rows.numpy()] = reference(x)
        eng[rows.numpy()] = engine(x)
    target = split.targets()
    diff = np.abs(ref - eng)
    markets = np.asarray(split.table.column("market").to_pylist(), dtype=str) if split.frames else np.zeros(0, str)
    per_market = {}
    for m in sorted(set(markets.tolist())):
        sel = markets == m
        per_market[m] = {
            "frames": int(sel.sum()),
            "max_abs_diff": float(diff[sel].max()),
            "mae_reference": float(np.abs(ref[sel] - target[sel]).mean()),
            "mae_engine": float(np.abs(eng[sel] - target[sel]).mean()),
        }
    n = split.frames
    mae_ref = float(np.abs(ref - target).mean()) if n else float("nan")
    mae_eng = float(np.abs(eng - target).mean()) if n else float("nan")
    return ParityReport(
        frames=n,
        batch_size=batch_size,
        max_abs_diff=float(diff.max()) if n else float("nan"),
        mean_abs_diff=float(diff.mean()) if n else float("nan"),
        mae_reference=mae_ref,
        mae_engine=mae_eng,
        mae_delta=abs(mae_ref - mae_eng),
        atol=atol,
        mae_tolerance=mae_tolerance,
        per_market=per_market,
        engine=engine_name,
        reference=reference_name,
    )


def first_frames(split: SplitFrames, spec: ImageSpec, n: int) -> np.ndarray:
    """The first ``n`` frames of the split as model input (float32 Nx3xHxW in [0, 1])."""
    images, _y, _rows = next(iter(frames(split, spec, n)))
    return images.float().div_(255.0).numpy()


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p99_ms: float
    mean_ms: float
    runs: int
    batch_size: int
    threads: int
    provider: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ort_latency(path: Path, frame: np.ndarray, *, runs: int = 200, warmup: int = 20, threads: int = 1) -> Latency:
    """Per-frame latency of the engine with onnxruntime on this CPU: batch 1, ``threads`` intra-op threads."""
    session = ort_session(path, threads)
    name = session.get_inputs()[0].name
    x = np.ascontiguousarray(frame[:1], np.float32)
    for _ in range(warmup):
        session.run(None, {name: x})
    times = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        session.run(None, {name: x})
        times[i] = time.perf_counter() - t0
    ms = times * 1e3
    return Latency(
        p50_ms=float(np.percentile(ms, 50)),
        p99_ms=float(np.percentile(ms, 99)),
        mean_ms=float(ms.mean()),
        runs=runs,
        batch_size=1,
        threads=threads,
        provider=session.get_providers()[0],
    )
