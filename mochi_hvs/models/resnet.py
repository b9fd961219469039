"""The project's torchvision ResNets (model.arch resnet18 | resnet34 | resnet50), with an optional small-image stem,
and the split of any torchvision ResNet's forward into its last feature map and its pooling."""

from __future__ import annotations

import torch
import torch.nn as nn
import torchvision


def build_resnet(arch: str, small_stem: bool = False) -> tuple[nn.Module, int]:
    """A randomly initialised torchvision ResNet without its classifier, and its feature width.

    small_stem: 3x3 stride-1 first convolution and no max-pool, for 32 px images (as in the
    MoCo CIFAR recipe). The classifier is replaced by Identity, so the module returns pooled
    features and keeps torchvision's parameter names (export and loading stay trivial).
    """
    net = getattr(torchvision.models, arch)(weights=None)
    if small_stem:
        use_small_stem(net)
    width = net.fc.in_features
    net.fc = nn.Identity()
    return net, width


def feature_map_side(image_size: int, small_stem: bool = False) -> int:
    """Side of the last feature map (layer4's output) of a torchvision ResNet for square images of `image_size`.

    Every stride-2 stage (3x3 or 7x7 convolution or max-pool with "same" padding) maps a side s to ceil(s / 2):
    five of them with the standard stem (conv1, max-pool, layer2-4: 28 px -> 1, 56 -> 2, 224 -> 7), three with the
    small stem (layer2-4: 28 or 32 px -> 4).
    """
    side = image_size
    for _ in range(3 if small_stem else 5):
        side = (side + 1) // 2
    return side


def resnet_feature_map(net: torchvision.models.ResNet, x: torch.Tensor) -> torch.Tensor:
    """The last feature map (N, width, h, w) of a torchvision ResNet: its forward up to layer4, the very operations
    of ResNet.forward before the pooling."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


def resnet_pooled(net: torchvision.models.ResNet, feature_map: torch.Tensor) -> torch.Tensor:
    """What ResNet.forward returns from its last feature map: the global average pool, flattened, through fc."""
    return net.fc(torch.flatten(net.avgpool(feature_map), 1))


def use_small_stem(net: nn.Module) -> nn.Module:
    """Replace a ResNet's 7x7 stride-2 first conv and max-pool by a 3x3 stride-1 conv and no pooling (in place)."""
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net
