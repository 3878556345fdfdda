"""TensorRT engine builds (NVIDIA SoCs / GPUs) through the ``tensorrt`` Python API, with parity against
onnxruntime. Runs only where ``tensorrt`` imports: the libraries (libnvinfer) cannot be installed on the
development machines (the PyPI packages are stubs that download from NVIDIA's index), so tests skip this with
that reason and the compile stage's pods run on the GPU node pool (``ad_common/stages.py``).

Written against the TensorRT 10 API (explicit batch networks, ``build_serialized_network``, memory pool
limits, ``IInt8EntropyCalibrator2``); it has not been executed here.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ad_core.compile.parity import ParityReport, compare, frames, ort_predictor, ort_session
from ad_core.train.data import ImageSpec, SplitFrames


class TensorRtUnavailable(RuntimeError):
    """``tensorrt`` (or a CUDA device) is not available on this machine."""


def tensorrt_import_error() -> str | None:
    """Why ``tensorrt`` cannot be used here, or None when it can."""
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # ImportError, or OSError of a bindings wheel without libnvinfer
        return f"tensorrt does not import here ({type(exc).__name__}: {exc}); TensorRT engines build on the GPU pool"
    return None


def require_tensorrt() -> ModuleType:
    why = tensorrt_import_error()
    if why:
        raise TensorRtUnavailable(why)
    import tensorrt

    return tensorrt


@dataclass(frozen=True)
class TrtEngine:
    path: Path
    sha256: str
    size_bytes: int
    precision: str
    gpu_name: str
    gpu_slug: str
    tensorrt_version: str
    latency_p50_ms: float
    latency_p99_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


def _batches(split: SplitFrames, spec: ImageSpec, batch_size: int, limit: int) -> list[np.ndarray]:
    out = []
    for images, _y, _rows in frames(split, spec, batch_size):
        if images.shape[0] == batch_size:
            out.append(np.ascontiguousarray(images.float().div_(255.0).numpy()))
        if len(out) >= limit:
            break
    return out


def _calibrator(trt: ModuleType, batches: list[np.ndarray], cache: Path) -> Any:
    import torch

    class Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.batches = iter(batches)
            self.device = torch.empty(batches[0].shape, dtype=torch.float32, device="cuda")

        def get_batch_size(self) -> int:
            return int(batches[0].shape[0])

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self.batches, None)
            if batch is None:
                return None
            self.device.copy_(torch.from_numpy(batch))
            return [int(self.device.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data: bytes) -> None:
            cache.write_bytes(bytes(data))

    return Calibrator()


def build_engine(
    trt: ModuleType,
    onnx_path: Path,
    out: Path,
    *,
    precision: str,
    spec: ImageSpec,
    calibration: SplitFrames | None = None,
    calibration_batches: int = 16,
    calibration_batch_size: int = 8,
    max_batch: int = 16,
    workspace_mib: int = 2048,
) -> TrtEngine:
    """Parse the ONNX engine, build a serialized TensorRT engine (``fp16`` or ``int8``) and time it at batch 1."""
    import torch

    if precision not in ("fp16", "int8"):
        raise ValueError(f"precision must be fp16 or int8, not {precision!r}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    shape = (3, spec.height, spec.width)
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    profile.set_shape(name, (1, *shape), (max(1, max_batch // 2), *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    config.set_flag(trt.BuilderFlag.FP16)  # int8 falls back to fp16, not fp32, for layers without int8 kernels
    if precision == "int8":
        if calibration is None or calibration.frames == 0:
            raise ValueError("INT8 needs calibration frames (the val split)")
        config.set_flag(trt.BuilderFlag.INT8)
        batches = _batches(calibration, spec, calibration_batch_size, calibration_batches)
        config.int8_calibrator = _calibrator(trt, batches, out.with_suffix(".calib"))
        config.set_calibration_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build a {precision} engine from {onnx_path}")
    data = bytes(serialized)
    out.write_bytes(data)
    p50, p99 = _latency(trt, data, (1, *shape))
    gpu = torch.cuda.get_device_name(0)
    return TrtEngine(
        path=out,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        precision=precision,
        gpu_name=gpu,
        gpu_slug=re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-"),
        tensorrt_version=trt.__version__,
        latency_p50_ms=p50,
        latency_p99_ms=p99,
    )


class _Runner:
    """A deserialized engine executing batches from host numpy arrays (torch CUDA tensors as buffers)."""

    def __init__(self, trt: ModuleType, data: bytes) -> None:
        import torch

        self.torch = torch
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(data)
        self.context = self.engine.create_execution_context()
        self.input = self.engine.get_tensor_name(0)
        self.output = self.engine.get_tensor_name(1)
        self.stream = torch.cuda.Stream()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        inp = torch.from_numpy(np.ascontiguousarray(x, np.float32)).cuda()
        self.context.set_input_shape(self.input, tuple(inp.shape))
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(self.input, inp.data_ptr())
        self.context.set_tensor_address(self.output, out.data_ptr())
        self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        return out.cpu().numpy().reshape(-1)


def _latency(trt: ModuleType, data: bytes, shape: tuple[int, ...], runs: int = 200) -> tuple[float, float]:
    run = _Runner(trt, data)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    for _ in range(20):
        run(x)
    ms = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run(x)
        ms.append((time.perf_counter() - t0) * 1e3)
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def parity_vs_onnxruntime(
    engine: Path, onnx_path: Path, split: SplitFrames, spec: ImageSpec, *, atol: float, batch_size: int = 7
) -> ParityReport:
    """Polygraphy-style comparison: the same frames through onnxruntime (reference) and the TensorRT engine."""
    trt = require_tensorrt()
    return compare(
        ort_predictor(ort_session(onnx_path)),
        _Runner(trt, engine.read_bytes()),
        split,
        spec,
        batch_size=batch_size,
        atol=atol,
        mae_tolerance=atol,
        engine_name="tensorrt",
        reference_name="onnxruntime",
    )
