"""torchvision ResNet backbones with an optional small-image stem."""

from __future__ import annotations

import torch
import torch.nn as nn
import torchvision

ARCHS = ("resnet18", "resnet34", "resnet50")


def build_backbone(arch: str, small_stem: bool = False) -> tuple[nn.Module, int]:
    """A randomly initialised torchvision ResNet without its classifier, and its feature width.

    small_stem: 3x3 stride-1 first convolution and no max-pool, for 32 px images (as in the
    MoCo CIFAR recipe). The classifier is replaced by Identity, so the module returns pooled
    features and keeps torchvision's parameter names (export and loading stay trivial).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown backbone {arch!r}; choose one of {', '.join(ARCHS)}")
    net = getattr(torchvision.models, arch)(weights=None)
    if small_stem:
        use_small_stem(net)
    width = net.fc.in_features
    net.fc = nn.Identity()
    return net, width


def feature_map_side(image_size: int, small_stem: bool = False) -> int:
    """Side of the last feature map (layer4's output) of a ResNet of ARCHS for square images of `image_size`.

    Every stride-2 stage (3x3 or 7x7 convolution or max-pool with "same" padding) maps a side s to ceil(s / 2):
    five of them with the standard stem (conv1, max-pool, layer2-4: 28 px -> 1, 56 -> 2, 224 -> 7), three with the
    small stem (layer2-4: 28 or 32 px -> 4).
    """
    side = image_size
    for _ in range(3 if small_stem else 5):
        side = (side + 1) // 2
    return side


def feature_map(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last feature map (N, width, h, w) of a torchvision ResNet built by build_backbone: its forward up to
    layer4, the very operations of ResNet.forward before the pooling."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


def pooled_features(net: nn.Module, feature_map: torch.Tensor) -> torch.Tensor:
    """What ResNet.forward returns from its last feature map: the global average pool, flattened, through fc."""
    return net.fc(torch.flatten(net.avgpool(feature_map), 1))


def use_small_stem(net: nn.Module) -> nn.Module:
    """Replace a ResNet's 7x7 stride-2 first conv and max-pool by a 3x3 stride-1 conv and no pooling (in place)."""
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def freeze_all_but_batchnorm(module: nn.Module) -> None:
    """HPT-BN: only BatchNorm affine parameters keep requires_grad (running statistics update as usual)."""
    for layer in module.modules():
        is_bn = isinstance(layer, nn.modules.batchnorm._BatchNorm)
        for param in layer.parameters(recurse=False):
            param.requires_grad_(is_bn)
