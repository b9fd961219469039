"""The ONNX export: the backbone's forward (images -> pooled features) as one ONNX file (weights inside: a backbone
under protobuf's 2 GB), from torch.onnx.export's torch.export-based exporter, with a dynamic batch axis; checked before
it is written by running it in onnxruntime on a seeded batch against the PyTorch backbone."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..models.backbone_facts import first_line
from .errors import ExportError

INPUT, OUTPUT = "images", "features"
CHECK_BATCH = 3  # images of the numerical check: a batch size other than the traced one, so the batch axis is used
TRACE_BATCH = 2
ATOL, RTOL = 1e-4, 1e-3  # float32 kernels of two runtimes: measured differences are about 1e-6 on unit-scale features


def _require(module: str) -> Any:
    """An optional dependency of the ONNX export, imported; an ExportError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ExportError(f"the onnx export needs {module} (pip install 'mochi_hvs[onnx]': onnx, onnxscript, "
                          "onnxruntime)") from err


def to_onnx(backbone: nn.Module, image_size: int) -> bytes:
    """The ONNX bytes of `backbone` (eval mode) on (batch, 3, image_size, image_size) images."""
    images = torch.zeros(TRACE_BATCH, 3, image_size, image_size)
    _require("onnxscript")
    try:
        program = torch.onnx.export(backbone.eval(), (images,), input_names=[INPUT], output_names=[OUTPUT],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False)
        return program.model_proto.SerializeToString()
    except Exception as err:  # the exporter fails in many ways (unsupported operators, data-dependent control flow)
        raise ExportError(f"torch.onnx.export cannot export this backbone ({first_line(err)})") from err


def onnx_difference(graph: bytes, backbone: nn.Module, image_size: int) -> float:
    """The largest absolute difference between onnxruntime's output of `graph` and the backbone's on a seeded batch;
    an ExportError beyond float tolerance (ATOL + RTOL x |output|)."""
    onnxruntime = _require("onnxruntime")
    images = torch.randn(CHECK_BATCH, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
    exported = session.run([OUTPUT], {INPUT: images.numpy()})[0]
    with torch.no_grad():
        expected = backbone.eval()(images).numpy()
    if exported.shape != expected.shape:
        raise ExportError(f"the ONNX graph gives features of shape {exported.shape}, the backbone {expected.shape}")
    difference = np.abs(exported - expected)
    if not np.all(difference <= ATOL + RTOL * np.abs(expected)):
        raise ExportError(f"the ONNX graph's features differ from the backbone's by up to {difference.max():.3g} "
                          f"in onnxruntime (tolerance {ATOL} + {RTOL} x |feature|); it was not written")
    return float(difference.max())
