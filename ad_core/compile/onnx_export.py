"""ONNX export of a registered steering model, with a stable identity.

The registry holds the model as a ``pt2`` archive (``torch.export``, batch dimension dynamic: docs/models.md).
That very ``ExportedProgram`` is converted by the dynamo exporter (``torch.onnx.export(..., dynamo=True)``,
ops translated by ``onnxscript``): no re-tracing of Python code, so the graph is the one that was evaluated.

**Identity.** The engine is named by the sha256 of its bytes. The exporter writes the same graph for the same
program, but node doc strings and metadata can carry source locations (file paths, line numbers) that differ
between checkouts; :func:`canonicalize` drops them and fixes the producer fields, so the bytes depend only on
the weights, the graph, the opset and the exporter's version (tested: two exports give the same sha256).
"""

from __future__ import annotations

import hashlib
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

OPSET = 18
INPUT_NAME = "frames"
OUTPUT_NAME = "steering_deg"
EXPORTER_VERSION = "1"  # bump when export() changes what bytes it writes for the same program


@dataclass(frozen=True)
class OnnxEngine:
    path: Path
    sha256: str
    size_bytes: int
    opset: int
    input_name: str
    output_name: str
    input_shape: tuple[int | str, ...]
    producer: str


def load_program(pt2_path: Path) -> torch.export.ExportedProgram:
    """The registry's ``model.pt2`` (``model/data/model.pt2`` of the logged MLflow model)."""
    return torch.export.load(str(pt2_path))


def find_pt2(model_dir: Path) -> Path:
    found = sorted(model_dir.rglob("model.pt2"))
    if not found:
        raise FileNotFoundError(f"{model_dir}: no model.pt2 (the steering model is logged as pt2, docs/models.md)")
    return found[0]


def canonicalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop what is not the model (doc strings, source locations in metadata) and fix the producer fields."""
    model.doc_string = ""
    model.producer_name = "ad-platform"
    model.producer_version = f"exporter-{EXPORTER_VERSION}+torch-{torch.__version__}+onnx-{onnx.__version__}"
    keep = [(p.key, p.value) for p in model.metadata_props if "stack_trace" not in p.key and "source" not in p.key]
    del model.metadata_props[:]
    for key, value in sorted(keep):
        model.metadata_props.add(key=key, value=value)
    # The batch symbol is named by torch.export's symbol counter (``s77``): name it for what it is.
    batch = model.graph.input[0].type.tensor_type.shape.dim[0].dim_param if model.graph.input else ""
    if batch:
        for vi in (*model.graph.input, *model.graph.output, *model.graph.value_info):
            for d in vi.type.tensor_type.shape.dim:
                if d.dim_param == batch:
                    d.dim_param = "batch"
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        g.doc_string = ""
        for n in g.node:
            n.doc_string = ""
            kept = [(p.key, p.value) for p in n.metadata_props if "stack_trace" not in p.key and "source" not in p.key]
            del n.metadata_props[:]
            for key, value in kept:
                n.metadata_props.add(key=key, value=value)
            graphs += [a.g for a in n.attribute if a.type == onnx.AttributeProto.GRAPH]
    return model


def export(program: torch.export.ExportedProgram | torch.nn.Module, out: Path, example: np.ndarray) -> OnnxEngine:
    """Export to ``out`` (dynamic batch), check it with ``onnx.checker`` (full check, shape inference) and hash it.

    ``example`` (float32 Nx3xHxW, N >= 2) is used only for an ``nn.Module``: an ``ExportedProgram`` carries its
    own (dynamic) shapes.
    """
    args = (torch.from_numpy(np.ascontiguousarray(example, np.float32)),)
    dynamic = None
    if not isinstance(program, torch.export.ExportedProgram):
        if example.shape[0] < 2:
            raise ValueError("the example needs >= 2 frames, or torch.export freezes the batch size to 1")
        dynamic = ({0: torch.export.Dim("batch")},)
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore", FutureWarning)
        onnx_program = torch.onnx.export(
            program,
            args,
            dynamo=True,
            dynamic_shapes=dynamic,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            optimize=True,
            verbose=False,
        )
        raw = Path(tmp) / "model.onnx"
        onnx_program.save(str(raw))  # weights inline: PilotNet is ~1 MB, far below protobuf's 2 GB limit
        model = canonicalize(onnx.load(str(raw)))
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString(deterministic=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_out.write_bytes(data)
    tmp_out.replace(out)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return OnnxEngine(
        path=out,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        opset=OPSET,
        input_name=model.graph.input[0].name,
        output_name=model.graph.output[0].name,
        input_shape=tuple(d.dim_param or d.dim_value for d in dims),
        producer=model.producer_version,
    )
