"""Logging and loading the steering model with MLflow (inside an active MLflow run).

MLflow 3 saves PyTorch models as ``pt2`` (``torch.export``) by default. A traced graph specializes every
dimension it is not told is dynamic, and ``torch.export`` specializes a size-1 dimension even when told: the
signature therefore declares the batch dimension ``-1`` and the input example holds two frames, so the logged
model accepts any batch size (tests load it at a batch size different from the example's).
``pip_requirements`` are given explicitly: inferring them costs ~10 s per log.
"""

from __future__ import annotations

import importlib
import logging

import mlflow
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from ad_core.train.data import ImageSpec


def _import_keeping_root_logger(module: str) -> None:
    """Import ``module``, undoing the ``logging.basicConfig()`` that ``mlflow.pytorch`` runs at import (its
    Lightning autolog module): a stderr handler on the root logger that printed every propagated record a second
    time ("INFO:dagster.builtin:..." under each of Dagster's own log lines)."""
    handlers, level = list(logging.root.handlers), logging.root.level
    try:
        importlib.import_module(module)
    finally:
        logging.root.handlers[:] = handlers
        logging.root.setLevel(level)


_import_keeping_root_logger("mlflow.pytorch")


def signature(spec: ImageSpec) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, spec.height, spec.width))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1,))]),
    )


def log_model(model: torch.nn.Module, spec: ImageSpec, example: np.ndarray, registered_name: str | None) -> str | None:
    """Log ``model`` to the active run (and register it); returns the registered version, if registered."""
    if example.shape[0] < 2:
        raise ValueError("the input example needs >= 2 frames, or the exported batch size is frozen to 1")
    info = mlflow.pytorch.log_model(
        pytorch_model=model,
        name="model",
        signature=signature(spec),
        input_example=example.astype(np.float32),
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
        serialization_format="pt2",
        registered_model_name=registered_name,
    )
    version = getattr(info, "registered_model_version", None)
    return None if version is None else str(version)


def load_model(uri: str) -> torch.nn.Module:
    """A logged steering model (``models:/steering-de@approved``, ``runs:/<id>/model``) as a callable module."""
    loaded = mlflow.pytorch.load_model(uri)
    return loaded.module() if hasattr(loaded, "module") and not isinstance(loaded, torch.nn.Module) else loaded
