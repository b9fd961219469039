"""The project's ResNets at a width multiplier (model.arch `scaled/resnet18|34|50`, model.arch_kwargs `{width: 0.5,
small_stem: false}`): every layer's channels times `width`, the image's 3 input channels kept, as slimmable networks
count widths (ResNet-18 at width 0.5: 32, 64, 128 and 256 channels per stage, 256 pooled features, 2.8 M parameters
against 11.2 M). A torchvision ResNet under torchvision's names, so that everything that reads one (feature maps,
split BatchNorm, the loader, the exports) reads it; its state dict is a full-width ResNet's, sliced
(models/slimmable.py's `narrow`): what a DSPNet width exports to, and the compact student of feature-regression
distillation."""

from __future__ import annotations

import torch.nn as nn

from .resnet import build_resnet
from .slimmable import narrow


def build_scaled_resnet(arch: str, width: float = 1.0, small_stem: bool = False) -> tuple[nn.Module, int]:
    """A randomly initialised ResNet `arch` (resnet18 | resnet34 | resnet50) at `width` (whole channels: a multiple of
    1/64; ValueError otherwise), without its classifier, and its feature width. Initialised as torchvision
    initialises its ResNets: Kaiming-normal convolutions (fan out), BatchNorm at weight 1 and bias 0."""
    if not 0 < width <= 1:
        raise ValueError(f"width must be in (0, 1]; got {width}")
    wide, wide_features = build_resnet(arch, small_stem)
    net = narrow(wide, width)
    for layer in net.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
    return net, round(wide_features * width)
