"""Binary networks: `binary/resnet18` and `binary/resnet34`, the project's ResNets with every 3x3 convolution of
their residual blocks binary (what BURN trains, objectives/burn.py).

A binary convolution convolves sign(x) with alpha_c sign(w_c): activations and weights are +-1 (sign(0) = +1), and
each output channel's weights are scaled by alpha_c = mean |w_c| (XNOR-Net's scaling), so that a deployed layer
stores one bit per weight and a float per output channel. Backward goes straight through both signs: the gradient of
sign(x) is 1 where |x| <= 1 and 0 beyond (the clipped straight-through estimator); that of sign(w) is 1 (latent
weights stay small), and alpha_c's own gradient flows to the weights it averages. The latent full-precision weights
are what is trained and stored, under the ResNet's own parameter names.

The blocks follow Bi-Real Net (Liu et al., ECCV 2018), the usual binary ResNet: a real-valued shortcut around each
binary convolution, out = bn1(conv1(x)) + shortcut(x), then bn2(conv2(out)) + out, with no ReLU (a ReLU before a
sign would make every input +1); the shortcut is the block's downsample where it has one (a full-precision 1x1
convolution and BatchNorm), the identity otherwise. The stem convolution stays full precision and loses its ReLU
for the same reason; pooling is unchanged. Bottleneck blocks (resnet50) have no such form and are refused.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torchvision
from torchvision.models.resnet import BasicBlock

from .arch import BINARY_RESNETS


class _SignStraightThrough(torch.autograd.Function):
    """sign(x) with sign(0) = +1 forward; backward the gradient where |x| <= clip, 0 beyond."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, clip: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.clip = clip
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= ctx.clip).to(grad.dtype), None


def binary_activation(x: torch.Tensor) -> torch.Tensor:
    """sign(x) in {-1, +1}, gradient straight through where |x| <= 1."""
    return _SignStraightThrough.apply(x, 1.0)


def weight_alpha(weight: torch.Tensor) -> torch.Tensor:
    """alpha_c = mean |w_c| per output channel, shaped to broadcast against the weight (C, 1, 1, 1)."""
    return weight.abs().mean(dim=tuple(range(1, weight.dim())), keepdim=True)


def binary_weight(weight: torch.Tensor) -> torch.Tensor:
    """alpha_c sign(w_c): the sign straight through (unclipped), alpha_c with its own gradient."""
    return weight_alpha(weight) * _SignStraightThrough.apply(weight, float("inf"))


class BinaryConv2d(nn.Conv2d):
    """A convolution of sign(x) with alpha sign(w). `binary_weights` False keeps the weights real (BURN's first
    stage trains binary activations with real weights)."""

    binary_weights: bool = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = binary_weight(self.weight) if self.binary_weights else self.weight
        return self._conv_forward(binary_activation(x), weight, self.bias)


class BinaryBasicBlock(nn.Module):
    """Bi-Real Net's block on a torchvision BasicBlock's own modules (conv1, bn1, conv2, bn2, downsample): a
    real-valued shortcut around each binary convolution, no ReLU."""

    def __init__(self, block: BasicBlock) -> None:
        super().__init__()
        self.conv1, self.bn1 = _binary_copy(block.conv1), block.bn1
        self.conv2, self.bn2 = _binary_copy(block.conv2), block.bn2
        self.downsample = block.downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.bn1(self.conv1(x)) + shortcut
        return self.bn2(self.conv2(out)) + out


def _binary_copy(conv: nn.Conv2d) -> BinaryConv2d:
    """A BinaryConv2d holding the convolution's own parameters."""
    copy = BinaryConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                        conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, device="meta")
    copy.weight, copy.bias = conv.weight, conv.bias
    return copy


def binarise_resnet(net: torchvision.models.ResNet) -> torchvision.models.ResNet:
    """Make a torchvision ResNet of BasicBlocks binary in place: each block Bi-Real's, the stem without its ReLU.
    Parameter names (and the state dict) are unchanged."""
    net.relu = nn.Identity()
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        for index, block in enumerate(stage):
            if not isinstance(block, BasicBlock):
                raise ValueError(f"binary backbones have BasicBlocks ({', '.join(BINARY_RESNETS)}); this one has "
                                 f"{type(block).__name__}")
            stage[index] = BinaryBasicBlock(block)
    return net


def binary_convolutions(module: nn.Module) -> list[BinaryConv2d]:
    """The binary convolutions of a module, in registration order."""
    return [layer for layer in module.modules() if isinstance(layer, BinaryConv2d)]
