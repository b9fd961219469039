"""Slimmable networks (Yu et al., "Slimmable Neural Networks", ICLR 2019): one set of weights run at several widths.

At width w every convolution and linear layer uses the first w x its channels (the first layer keeps the image's
channels as input; an encoder's last layer keeps the embedding size as output, so that embeddings of every width
compare), and every BatchNorm layer normalises its first w x channels with statistics and affine parameters of its
own for that width (switchable BatchNorm: the statistics of a narrower network are not those of a slice of the
wide one). Width 1 is the network itself, untouched. Channel counts must stay whole (`scaled_channels`): a ResNet's
(all multiples of 64) take any width that is a multiple of 1/64.

`sliced_tensors` gives the weights of width w as views of the wide network's (what a training forward at that width
uses, so that its gradient reaches the shared weights); `SwitchableNorms` holds the BatchNorm layers of the narrower
widths; `SlimmableEncoder` runs an encoder at any of its widths; `narrow` builds a plain network of width w, whose
state dict is the wide network's slice under the same names (the export of one width, models/scaled_resnet.py's
ResNets).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.func import functional_call

WEIGHTED = (nn.Conv2d, nn.Linear)
NORMS = nn.modules.batchnorm._BatchNorm
NORM_TENSORS = ("weight", "bias", "running_mean", "running_var")


def scaled_channels(channels: int, width: float) -> int:
    """channels x width, which must be a whole, positive number of channels (ValueError otherwise)."""
    scaled = channels * width
    if scaled < 1 or abs(scaled - round(scaled)) > 1e-6:
        raise ValueError(f"width {width:g} leaves {scaled:g} of {channels} channels: a width must leave whole channels "
                         f"(for a ResNet, a multiple of 1/64)")
    return round(scaled)


def _weighted_layers(module: nn.Module) -> list[str]:
    """The paths of the convolution and linear layers of `module`, in the order named_modules visits them."""
    return [name for name, layer in module.named_modules() if isinstance(layer, WEIGHTED)]


def _check_layers(module: nn.Module) -> None:
    """Only plain convolutions (groups 1) slice by channels here: a grouped or depthwise one is a ValueError."""
    grouped = [name for name, layer in module.named_modules() if isinstance(layer, nn.Conv2d) and layer.groups != 1]
    if grouped:
        raise ValueError(f"cannot slim grouped convolutions ({grouped[0]}): only networks of plain convolutions, "
                         "linear layers and BatchNorm (the ResNets) take a width")


def layer_channels(module: nn.Module, width: float, keep_output: bool) -> dict[str, tuple[int, int]]:
    """(input, output) channels of each convolution and linear layer of `module` at `width`: its first layer keeps
    its input, and with keep_output its last layer keeps its output."""
    _check_layers(module)
    layers = _weighted_layers(module)
    channels = {}
    for name in layers:
        layer = module.get_submodule(name)
        size_in, size_out = (layer.in_channels, layer.out_channels) if isinstance(layer, nn.Conv2d) else (
            layer.in_features, layer.out_features)
        channels[name] = (size_in if name == layers[0] else scaled_channels(size_in, width),
                          size_out if keep_output and name == layers[-1] else scaled_channels(size_out, width))
    return channels


def _joined(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def sliced_tensors(module: nn.Module, width: float, keep_output: bool) -> dict[str, torch.Tensor]:
    """Every weight and bias of the convolution and linear layers of `module` at `width`, and its BatchNorm layers'
    tensors sliced to their width, under their state dict names: views of the wide tensors (a gradient through them
    reaches the wide network)."""
    tensors: dict[str, torch.Tensor] = {}
    for name, (size_in, size_out) in layer_channels(module, width, keep_output).items():
        layer = module.get_submodule(name)
        tensors[_joined(name, "weight")] = layer.weight[:size_out, :size_in]
        if layer.bias is not None:
            tensors[_joined(name, "bias")] = layer.bias[:size_out]
    for name, layer in module.named_modules():
        if isinstance(layer, NORMS):
            size = scaled_channels(layer.num_features, width)
            for tensor in NORM_TENSORS:
                if getattr(layer, tensor, None) is not None:
                    tensors[_joined(name, tensor)] = getattr(layer, tensor)[:size]
            if layer.num_batches_tracked is not None:
                tensors[_joined(name, "num_batches_tracked")] = layer.num_batches_tracked
    return tensors


def narrowed_norm(layer: nn.modules.batchnorm._BatchNorm, width: float) -> nn.modules.batchnorm._BatchNorm:
    """A copy of a BatchNorm layer (of any BatchNorm class: split BatchNorm keeps its groups) over its first
    width x channels, its parameters and statistics copied from theirs."""
    size = scaled_channels(layer.num_features, width)
    narrow_layer = copy.deepcopy(layer)
    narrow_layer.num_features = size
    with torch.no_grad():
        for tensor in NORM_TENSORS:
            value = getattr(layer, tensor, None)
            if isinstance(value, nn.Parameter):
                setattr(narrow_layer, tensor, nn.Parameter(value[:size].clone(), requires_grad=value.requires_grad))
            elif value is not None:
                setattr(narrow_layer, tensor, value[:size].clone())
    return narrow_layer


def width_key(width: float) -> str:
    """The module name of a width's BatchNorm layers: 0.25 -> '0_25' (module names hold no dot)."""
    return f"{width:g}".replace(".", "_")


def norm_key(path: str) -> str:
    """The module name of one BatchNorm layer: its path with '-' for '.' (module names hold no dot)."""
    return path.replace(".", "-")


class SwitchableNorms(nn.Module):
    """The BatchNorm layers of a network at each width below 1 (the full width uses the network's own): for width
    w, `norms[width_key(w)][norm_key(path)]` is the layer at `path`, over its first w x channels, initialised from
    the wide layer's slice."""

    def __init__(self, module: nn.Module, widths: list[float]) -> None:
        super().__init__()
        self.norms = nn.ModuleDict({
            width_key(w): nn.ModuleDict({norm_key(path): narrowed_norm(layer, w)
                                         for path, layer in module.named_modules() if isinstance(layer, NORMS)})
            for w in widths if w != 1})

    def tensors(self, width: float, prefix: str = "") -> dict[str, torch.Tensor]:
        """The parameters and buffers of width's BatchNorm layers under the network's own state dict names (those
        under `prefix` only, with it removed; every one when `prefix` is '')."""
        chosen = {}
        for key, layer in self.norms[width_key(width)].items():
            path = key.replace("-", ".")
            if prefix and not path.startswith(prefix + "."):
                continue
            path = path[len(prefix) + 1:] if prefix else path
            chosen |= {_joined(path, name): value for name, value in
                       [*layer.named_parameters(recurse=False), *layer.named_buffers(recurse=False)]}
        return chosen


class SlimmableEncoder(nn.Module):
    """An encoder run at any of its widths: the full width is the encoder itself, a narrower one its sliced weights
    (gradients reach the shared weights) with that width's own BatchNorm layers (`norms`). One module, so that one
    DDP wrapper averages every trained gradient (the shared weights' and the narrow BatchNorm layers')."""

    def __init__(self, encoder: nn.Module, norms: SwitchableNorms) -> None:
        super().__init__()
        self.encoder = encoder
        self.norms = norms

    def forward(self, x: torch.Tensor, width: float = 1.0, dense: bool = False):
        """The encoder's output for x at `width` (its EncoderOutput); dense maps at the full width only."""
        if width == 1:
            return self.encoder(x, dense=dense)
        if dense:
            raise ValueError("dense maps are computed at the full width only")
        tensors = sliced_tensors(self.encoder, width, keep_output=True) | self.norms.tensors(width)
        return functional_call(self.encoder, tensors, (x,))


def narrow(module: nn.Module, width: float, keep_output: bool = False) -> nn.Module:
    """A plain copy of `module` at `width`: each convolution, linear and BatchNorm layer replaced by one of its
    width, holding a copy of the wide layer's slice (the same state dict names; other layers kept)."""
    narrow_module = copy.deepcopy(module)
    channels = layer_channels(module, width, keep_output)
    for path, layer in list(narrow_module.named_modules()):
        if path in channels:
            replacement = _narrowed_layer(layer, *channels[path])
        elif isinstance(layer, NORMS):
            replacement = narrowed_norm(layer, width)
        else:
            continue
        parent, _, attribute = path.rpartition(".")
        setattr(narrow_module.get_submodule(parent) if parent else narrow_module, attribute, replacement)
    return narrow_module


def _narrowed_layer(layer: nn.Conv2d | nn.Linear, size_in: int, size_out: int) -> nn.Module:
    """A convolution or linear layer like `layer` with size_in inputs and size_out outputs, holding its slice."""
    with torch.device(layer.weight.device):
        if isinstance(layer, nn.Conv2d):
            replacement = nn.Conv2d(size_in, size_out, layer.kernel_size, layer.stride, layer.padding,
                                    layer.dilation, bias=layer.bias is not None, padding_mode=layer.padding_mode)
        else:
            replacement = nn.Linear(size_in, size_out, bias=layer.bias is not None)
    with torch.no_grad():
        replacement.weight.copy_(layer.weight[:size_out, :size_in])
        if layer.bias is not None:
            replacement.bias.copy_(layer.bias[:size_out])
    return replacement.to(layer.weight.dtype)
