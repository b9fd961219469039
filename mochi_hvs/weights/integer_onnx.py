"""The integer ONNX export of a compact backbone: a quantized/<arch> backbone at its deployment bit-widths, or a
binary/<resnet> one, as one ONNX graph (images -> pooled features) whose quantized and binary convolutions run as
ONNX Runtime's integer convolutions (ConvInteger: int8 weights, uint8 activations, int32 sums).

The full-precision graph of the backbone comes from the ONNX export (onnx_format.to_onnx; each quantized or binary
convolution exported as a plain one on its latent weights, so the exporter may fold the BatchNorm after it); then each
of those Conv nodes is replaced by

    activation quantizer -> ConvInteger(q, W_int8, zero point) -> Cast(float) x activation step x weight steps [+ bias]

- a quantized layer: its activation quantizer is fake_quant's, written in ONNX operators: the range [min(x, 0),
  max(x, 0)] of the whole input tensor onto 0..2^a - 1 (Round is half to even in both), computed at run time (dynamic
  quantization; one image at a time, this is exactly the per-sample grid the backbone trained and is evaluated with);
  its weights are the very integers of its symmetric per-channel b-bit grid (fake_quant.weight_integers);
- a binary layer: sign(x) as uint8 {0, 2} with zero point 1 (so that ConvInteger's padding, at the zero point, is
  0), its weights sign(w) in int8 and its steps alpha_c.

Where the exporter folded a BatchNorm into the convolution, the folded weights are the latent ones times a factor per
output channel, which multiplies that channel's step; the integers stay those the backbone computes with. Every
bit-width from 2 to 8 runs in 8-bit containers: no ONNX Runtime kernel on a CPU computes sub-byte convolutions, so a
b-bit layer has b-bit accuracy and int8's size and speed. Quantized linear layers (a ViT's) are refused.

Before a graph is returned, ONNX Runtime runs it on seeded images, one at a time, against the backbone in eval mode;
`integer_difference` reports the largest difference.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..models.arch import BINARY, library_and_name
from ..models.binary import BinaryConv2d, weight_alpha
from ..models.fake_quant import (
    BitWidths,
    QuantConv2d,
    QuantLinear,
    check_bits,
    deploy_at,
    make_quantizable,
    weight_integers,
)
from .errors import ExportError
from .onnx_format import INPUT, OUTPUT, to_onnx
from .onnx_format import _require as require  # the optional dependency, or the extra that installs it

CHECK_IMAGES = 3  # seeded images of the numerical check, run one at a time
# The weight integers travel as uint8 with zero point 128: ONNX Runtime's uint8 x int8 kernels on x86 CPUs without
# VNNI add pairs of products in saturating int16 (255 x 127 x 2 overflows it), its uint8 x uint8 kernels do not.
WEIGHT_OFFSET = 128


class IntegerExportError(ExportError):
    """A backbone that cannot be exported with integer convolutions, or whose integer graph does not match it."""


@dataclass(frozen=True)
class IntegerLayer:
    """One convolution to run in integers: its weights' integers (int8, the conv's shape) and steps (C,) on the
    latent weights; its activation bit-width (None: binary, sign activations)."""

    weight: torch.Tensor  # the latent weights, to find the exporter's folding factor
    integers: torch.Tensor
    steps: torch.Tensor
    activation_bits: int | None


def integer_layers(backbone: nn.Module) -> dict[str, IntegerLayer]:
    """The convolutions of a backbone (eval mode) that compute in integers, by parameter name of their weight: its
    quantizable convolutions at their deployment bit-widths, its binary convolutions. Quantized linear layers are an
    IntegerExportError."""
    layers: dict[str, IntegerLayer] = {}
    for name, module in backbone.named_modules():
        key = f"{name}.weight"
        if isinstance(module, QuantLinear) and module.active_bits() is not None:
            raise IntegerExportError(f"{name}: quantized linear layers are not exported (integer convolutions only)")
        if isinstance(module, QuantConv2d) and (bits := module.active_bits()) is not None:
            integers, steps = weight_integers(module.weight, bits.weight)
            layers[key] = IntegerLayer(module.weight.detach(), integers, steps, bits.activation)
        elif isinstance(module, BinaryConv2d):
            if not module.binary_weights:
                raise IntegerExportError(f"{name}: a binary convolution with real weights (BURN's first stage) "
                                         "has no integer form")
            weight = module.weight.detach()
            integers = torch.where(weight >= 0, 1, -1).to(torch.int8)
            layers[key] = IntegerLayer(weight, integers, weight_alpha(weight).flatten(), None)
    return layers


def plain_copy(backbone: nn.Module) -> nn.Module:
    """A copy of the backbone (eval mode) with every quantizable or binary convolution a plain nn.Conv2d on the same
    latent weights: the graph the integer convolutions are written into."""
    plain = copy.deepcopy(backbone).eval()
    for name, module in list(plain.named_modules()):
        if isinstance(module, (QuantConv2d, BinaryConv2d)):
            conv = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                             module.padding, module.dilation, module.groups, module.bias is not None,
                             module.padding_mode)
            conv.load_state_dict(module.state_dict())
            parent, _, attribute = name.rpartition(".")
            setattr(plain.get_submodule(parent), attribute, conv)
    return plain


def float_graph(backbone: nn.Module, image_size: int) -> Any:
    """The ONNX model (onnx.ModelProto) of a full-precision backbone on (batch, 3, size, size) images."""
    return require("onnx").load_model_from_string(to_onnx(backbone, image_size))


class _GraphEditor:
    """Adds initializers and nodes to an ONNX graph under fresh names."""

    def __init__(self, graph: Any) -> None:
        self.onnx = require("onnx")
        self.graph = graph
        self.count = 0

    def fresh(self, stem: str) -> str:
        self.count += 1
        return f"integer/{stem}_{self.count}"

    def constant(self, stem: str, value: np.ndarray) -> str:
        name = self.fresh(stem)
        self.graph.initializer.append(self.onnx.numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], stem: str, **attributes: Any) -> str:
        output = self.fresh(stem)
        self.graph.node.append(self.onnx.helper.make_node(op, inputs, [output], **attributes))
        return output


def _activation(edit: _GraphEditor, x: str, bits: int | None) -> tuple[str, str, str | None]:
    """Nodes quantizing x: (uint8 levels, uint8 zero point, float step; None for binary's sign, step 1)."""
    f32 = lambda v: np.array(v, dtype=np.float32)  # noqa: E731
    if bits is None:
        positive = edit.node("GreaterOrEqual", [x, edit.constant("zero", f32(0))], "nonnegative")
        levels = edit.node("Where", [positive, edit.constant("two", np.array(2, np.uint8)),
                                     edit.constant("none", np.array(0, np.uint8))], "sign")
        return levels, edit.constant("sign_zero_point", np.array(1, np.uint8)), None
    top = f32(2 ** bits - 1)
    low = edit.node("Min", [edit.node("ReduceMin", [x], "min", keepdims=0), edit.constant("zero", f32(0))], "low")
    high = edit.node("Max", [edit.node("ReduceMax", [x], "max", keepdims=0), edit.constant("zero", f32(0))], "high")
    span = edit.node("Sub", [high, low], "span")
    step = edit.node("Where", [edit.node("Greater", [span, edit.constant("zero", f32(0))], "spread"),
                               edit.node("Div", [span, edit.constant("top", top)], "ratio"),
                               edit.constant("one", f32(1))], "step")
    ceiling = edit.constant("top", top)
    floor = edit.constant("zero", f32(0))
    zero_point = edit.node("Clip", [edit.node("Round", [edit.node("Div", [edit.node("Neg", [low], "neg"), step],
                                                                            "offset")], "zero_round"), floor, ceiling],
                           "zero_point")
    level = edit.node("Add", [edit.node("Round", [edit.node("Div", [x, step], "scaled")], "rounded"), zero_point],
                      "shifted")
    levels = edit.node("Cast", [edit.node("Clip", [level, floor, ceiling], "clipped")], "levels", to=2)  # uint8
    return levels, edit.node("Cast", [zero_point], "zero_point_u8", to=2), step


def _folding(folded: np.ndarray, latent: np.ndarray) -> np.ndarray:
    """Per output channel, the factor c with folded = c x latent (1 where the exporter folded nothing)."""
    flat_folded, flat_latent = folded.reshape(len(folded), -1), latent.reshape(len(latent), -1)
    norm = (flat_latent * flat_latent).sum(axis=1)
    return np.where(norm > 0, (flat_folded * flat_latent).sum(axis=1) / np.where(norm > 0, norm, 1), 1.0)


def integer_graph(model: Any, layers: dict[str, IntegerLayer]) -> Any:
    """`model` (the float graph, changed in place and returned) with each Conv node on a listed weight replaced by
    its integer convolution; an IntegerExportError when a listed layer is missing from the graph."""
    onnx = require("onnx")
    graph, edit = model.graph, _GraphEditor(model.graph)
    initializers = {init.name: init for init in graph.initializer}
    nodes, done = list(graph.node), set()
    del graph.node[:]
    for node in nodes:
        layer = layers.get(node.input[1]) if node.op_type == "Conv" else None
        if layer is None:
            graph.node.append(node)
            continue
        folded = onnx.numpy_helper.to_array(initializers[node.input[1]]).astype(np.float64)
        steps = layer.steps.double().numpy() * _folding(folded, layer.weight.double().numpy())
        levels, zero_point, step = _activation(edit, node.input[0], layer.activation_bits)
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        weight = (layer.integers.numpy().astype(np.int16) + WEIGHT_OFFSET).astype(np.uint8)
        sums = edit.node("ConvInteger", [levels, edit.constant("weight", weight), zero_point,
                                         edit.constant("weight_zero_point", np.array(WEIGHT_OFFSET, np.uint8))],
                         "sums", **attributes)
        value = edit.node("Cast", [sums], "sums_float", to=1)
        if step is not None:
            value = edit.node("Mul", [value, step], "activation_scaled")
        shape = (1, -1) + (1,) * (folded.ndim - 2)
        value = edit.node("Mul", [value, edit.constant("steps", steps.astype(np.float32).reshape(shape))], "scaled")
        if len(node.input) > 2 and node.input[2]:
            bias = onnx.numpy_helper.to_array(initializers[node.input[2]]).reshape(shape)
            value = edit.node("Add", [value, edit.constant("bias", bias.astype(np.float32))], "biased")
        graph.node.append(onnx.helper.make_node("Identity", [value], list(node.output)))
        done.add(node.input[1])
    if missing := sorted(set(layers) - done):
        raise IntegerExportError(f"the exported graph has no convolution on {', '.join(missing[:3])} (the exporter "
                                 "renamed or merged it)")
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.checker.check_model(model)
    return model


def to_integer_onnx(backbone: nn.Module, image_size: int) -> tuple[bytes, float]:
    """The integer ONNX bytes of a compact backbone (eval mode) and their difference from it (integer_difference);
    an IntegerExportError when it has no layer to run in integers."""
    backbone = backbone.eval()
    layers = integer_layers(backbone)
    if not layers:
        raise IntegerExportError("the backbone has no quantized or binary convolution to run in integers (a "
                                 "quantized/<arch> or binary/<resnet> backbone, or --bits)")
    graph = integer_graph(float_graph(plain_copy(backbone), image_size), layers).SerializeToString()
    return graph, integer_difference(graph, backbone, image_size)


def run_graph(graph: bytes, images: torch.Tensor) -> np.ndarray:
    """ONNX Runtime's output of a graph (CPU) for images (N, 3, H, W), one image at a time."""
    session = require("onnxruntime").InferenceSession(graph, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run([OUTPUT], {INPUT: image[None].numpy()})[0] for image in images])


def integer_difference(graph: bytes, backbone: nn.Module, image_size: int, tolerance: float = 0.05) -> float:
    """The largest difference between the integer graph's features and the backbone's (eval mode) on seeded images,
    relative to the features' largest magnitude; an IntegerExportError beyond `tolerance` (a rounding that flips
    between the two runtimes moves one value by one step, and every layer after it by less)."""
    images = torch.randn(CHECK_IMAGES, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    exported = run_graph(graph, images)
    with torch.no_grad():
        expected = torch.cat([backbone.eval()(image[None]) for image in images]).numpy()
    if exported.shape != expected.shape:
        raise IntegerExportError(f"the integer graph gives features of shape {exported.shape}, the backbone "
                                 f"{expected.shape}")
    relative = float(np.abs(exported - expected).max() / max(np.abs(expected).max(), 1e-12))
    if relative > tolerance:
        raise IntegerExportError(f"the integer graph's features differ from the backbone's by {relative:.3g} of "
                                 f"their largest magnitude in onnxruntime (tolerance {tolerance}); it was not written")
    return relative


def deployment_bits(text: str) -> BitWidths:
    """BitWidths from 'w<bits>a<bits>' (e.g. w4a8), each in [2, 8]; a ValueError naming the form otherwise."""
    weight, _, activation = text.lower().removeprefix("w").partition("a")
    if not (weight.isdigit() and activation.isdigit()):
        raise ValueError(f"bit-widths are written w<bits>a<bits> (e.g. w8a8, w4a4); got {text!r}")
    return BitWidths(check_bits(int(weight), "the weights' bit-width"),
                     check_bits(int(activation), "the activations' bit-width"))


def quantized_at(backbone: nn.Module, arch: str, bits: str) -> nn.Module:
    """The backbone (of model.arch `arch`) with its convolutions and linear layers deployed at `bits`
    ('w<bits>a<bits>'): post-training quantization of any non-binary backbone, or a quantized/<arch> backbone's
    bit-widths overridden; an IntegerExportError for a binary backbone or a malformed `bits`."""
    if library_and_name(arch)[0] == BINARY:
        raise IntegerExportError(f"--bits: {arch} is binary; its convolutions have no bit-widths to choose")
    try:
        chosen = deployment_bits(bits)
    except ValueError as err:
        raise IntegerExportError(f"--bits: {err}") from err
    make_quantizable(backbone)
    deploy_at(backbone, chosen)
    return backbone.eval()
