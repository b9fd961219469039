"""Uniform fake quantization: what SSQL trains with (methods/ssql.py) and what `quantized/<arch>` backbones run.

A quantized layer computes its convolution or matrix product on values rounded to a b-bit grid, in floating point
(fake quantization: the forward sees exactly the values an integer kernel would, the backward goes straight
through the rounding):

- weights: symmetric, one grid per output channel, levels -Q..Q with Q = 2^(b-1) - 1 and step s_c = max|w_c| / Q
  (b = 2: the ternary grid {-s_c, 0, s_c});
- activations (the layer's input): asymmetric, one grid per sample, levels 0..2^a - 1 with step
  s = (max(x, 0) - min(x, 0)) / (2^a - 1) over the sample's values and zero point z = round(-min(x, 0) / s), so
  that 0 is exactly representable (a runtime's dynamic quantization of one image at a time).

q(x) = (clamp(round(x / s) + z, low, high) - z) s; its gradient is 1 where x lies inside the grid's range and 0
where the clamp cuts it (the straight-through estimator of the rounding), and the steps are read without gradient.

Layers are made quantizable in place (`make_quantizable`): every nn.Conv2d and nn.Linear becomes its Quant*
subclass holding the very same parameters, so a model's state dict, its optimiser and its momentum copy are
unchanged (one copy of weights). A quantizable layer computes in full precision unless bit-widths are set: for a
forward by `quantized(module, bits)` (SSQL's quantized branch), or in eval mode by its deployment bit-widths
(`deploy`, what a `quantized/<arch>` backbone is evaluated and exported at). The first layer (the one that reads
the image) never goes below FIRST_LAYER_BITS, as is usual for quantized networks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

MIN_BITS, MAX_BITS = 2, 8  # the bit-widths a quantized layer takes (what an int8 kernel can hold)
FIRST_LAYER_BITS = 8  # the least bit-width of the layer that reads the image


class BitWidths(NamedTuple):
    """Bit-widths of a layer's weights and of its input activations."""

    weight: int
    activation: int

    def at_least(self, bits: int) -> BitWidths:
        """These bit-widths, each raised to `bits` where below it."""
        return BitWidths(max(self.weight, bits), max(self.activation, bits))


def check_bits(bits: int, what: str) -> int:
    """`bits` when an int in [MIN_BITS, MAX_BITS]; else a ValueError naming `what`."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"{what} must be an integer in [{MIN_BITS}, {MAX_BITS}]; got {bits!r}")
    return bits


class _FakeQuantize(torch.autograd.Function):
    """The fake quantizer; backward the gradient where round(x / scale) + zero_point lies in [low, high] (bounds
    included: the largest weight of a channel maps to Q exactly), 0 where the clamp cuts it."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | float, low: int,
                high: int) -> torch.Tensor:
        level = torch.round(x / scale) + zero_point  # half to even, as integer kernels and ONNX Round
        ctx.save_for_backward((level >= low) & (level <= high))
        return (torch.clamp(level, low, high) - zero_point) * scale

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:
        (inside,) = ctx.saved_tensors
        return grad * inside.to(grad.dtype), None, None, None, None


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | float, low: int,
                  high: int) -> torch.Tensor:
    """(clamp(round(x / scale) + zero_point, low, high) - zero_point) * scale, the rounding straight-through: the
    gradient with respect to x is 1 where round(x / scale) + zero_point lies in [low, high] and 0 where clamped (none
    reaches scale or zero_point); scale and zero_point broadcast against x."""
    return _FakeQuantize.apply(x, scale, zero_point, low, high)


def weight_levels(bits: int) -> int:
    """Q = 2^(bits-1) - 1: a symmetric b-bit weight takes the integers -Q..Q."""
    return 2 ** (bits - 1) - 1


def weight_scale(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """The step of each output channel's grid, max|w_c| / Q, shaped to broadcast against the weight (C, 1, ...); a
    channel of zeros gets step 1 (it quantizes to zeros all the same)."""
    peak = weight.detach().abs().flatten(1).amax(dim=1)
    scale = torch.where(peak > 0, peak / weight_levels(bits), torch.ones_like(peak))
    return scale.view(-1, *[1] * (weight.dim() - 1))


def quantize_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """The weight on its symmetric per-output-channel b-bit grid (fake-quantized, straight-through)."""
    levels = weight_levels(bits)
    return fake_quantize(weight, weight_scale(weight, bits), 0.0, -levels, levels)


def weight_integers(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The integers (in -Q..Q, as int8) and the per-channel steps (C,) that quantize_weight's values are made of."""
    levels, scale = weight_levels(bits), weight_scale(weight, bits)
    integers = torch.clamp(torch.round(weight.detach() / scale), -levels, levels)
    return integers.to(torch.int8), scale.flatten()


def activation_grid(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's step and zero point (N, 1, ...) for b-bit activations x (N, ...): the range [min(x, 0),
    max(x, 0)] over the sample's values onto 0..2^b - 1, without gradient; a sample of zeros gets step 1."""
    flat = x.detach().flatten(1)
    low, high = flat.amin(dim=1).clamp(max=0), flat.amax(dim=1).clamp(min=0)
    span = high - low
    scale = torch.where(span > 0, span / (2 ** bits - 1), torch.ones_like(span))
    zero_point = torch.clamp(torch.round(-low / scale), 0, 2 ** bits - 1)
    shape = (-1, *[1] * (x.dim() - 1))
    return scale.view(shape), zero_point.view(shape)


def quantize_activation(x: torch.Tensor, bits: int) -> torch.Tensor:
    """x (N, ...) on each sample's asymmetric b-bit grid (fake-quantized, straight-through)."""
    scale, zero_point = activation_grid(x, bits)
    return fake_quantize(x, scale, zero_point, 0, 2 ** bits - 1)


class QuantizableLayer:
    """What a quantizable layer adds to its nn.Module: the bit-widths it computes at, if any."""

    bits: BitWidths | None = None  # set for a forward by `quantized` (SSQL's quantized branch)
    deploy: BitWidths | None = None  # its bit-widths in eval mode (a quantized/<arch> backbone's)
    least_bits: int = MIN_BITS  # the first layer's FIRST_LAYER_BITS
    training: bool

    def active_bits(self) -> BitWidths | None:
        """The bit-widths of this forward: those set by `quantized`, else in eval mode the deployment ones, raised
        to the layer's least bit-width; None: full precision."""
        bits = self.bits if self.bits is not None else (None if self.training else self.deploy)
        return None if bits is None else bits.at_least(self.least_bits)


class QuantConv2d(nn.Conv2d, QuantizableLayer):
    """nn.Conv2d on fake-quantized input and weight when bit-widths are active."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bits = self.active_bits()
        if bits is None:
            return super().forward(x)
        return self._conv_forward(quantize_activation(x, bits.activation), quantize_weight(self.weight, bits.weight),
                                  self.bias)


class QuantLinear(nn.Linear, QuantizableLayer):
    """nn.Linear on fake-quantized input and weight when bit-widths are active."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bits = self.active_bits()
        if bits is None:
            return super().forward(x)
        return F.linear(quantize_activation(x, bits.activation), quantize_weight(self.weight, bits.weight), self.bias)


def _quantizable_copy(layer: nn.Module) -> nn.Module:
    """A Quant* layer holding `layer`'s own parameters (built on the meta device, then given them)."""
    if type(layer) is nn.Conv2d:
        copy: nn.Module = QuantConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                      layer.padding, layer.dilation, layer.groups, layer.bias is not None,
                                      layer.padding_mode, device="meta")
    else:
        copy = QuantLinear(layer.in_features, layer.out_features, layer.bias is not None, device="meta")
    copy.weight, copy.bias = layer.weight, layer.bias
    return copy.train(layer.training)


def make_quantizable(module: nn.Module) -> list[QuantizableLayer]:
    """Replace, in place, every nn.Conv2d and nn.Linear of `module` (exactly those types) by its quantizable
    subclass with the same parameters; the first one (in registration order) never goes below FIRST_LAYER_BITS.
    Layers already quantizable are kept. Returns every quantizable layer of the module."""
    for name, child in list(module.named_modules()):
        if type(child) in (nn.Conv2d, nn.Linear):
            parent_name, _, attribute = name.rpartition(".")
            setattr(module.get_submodule(parent_name), attribute, _quantizable_copy(child))
    layers = quantizable_layers(module)
    if layers and all(layer.least_bits == MIN_BITS for layer in layers):
        layers[0].least_bits = FIRST_LAYER_BITS
    return layers


def quantizable_layers(module: nn.Module) -> list[QuantizableLayer]:
    """The quantizable layers of a module, in registration order."""
    return [layer for layer in module.modules() if isinstance(layer, QuantizableLayer)]


def deploy_at(module: nn.Module, bits: BitWidths | None) -> None:
    """Set the eval-mode bit-widths of every quantizable layer of `module` (None: full precision)."""
    for layer in quantizable_layers(module):
        layer.deploy = bits


@contextlib.contextmanager
def quantized(module: nn.Module, bits: BitWidths) -> Iterator[None]:
    """Within the block, every quantizable layer of `module` computes at `bits` (in train and eval mode alike);
    their previous setting is restored on exit."""
    layers = quantizable_layers(module)
    previous = [layer.bits for layer in layers]
    for layer in layers:
        layer.bits = bits
    try:
        yield
    finally:
        for layer, before in zip(layers, previous, strict=True):
            layer.bits = before
