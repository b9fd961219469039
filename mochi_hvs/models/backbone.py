"""An encoder's backbone, built from model.arch (models/arch.py): randomly initialised, without its classifier (its
forward returns pooled features), under its library's own parameter names; and where it has one, its last feature
map and the pooling that follows it, the two halves of its forward."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torchvision

from .arch import BINARY, QUANTIZED, arch_problem, library_and_name
from .binary import binarise_resnet
from .fake_quant import BitWidths, check_bits, deploy_at, make_quantizable
from .resnet import build_resnet, resnet_feature_map, resnet_pooled
from .scaled_resnet import build_scaled_resnet


def build_backbone(arch: str, small_stem: bool = False,
                   arch_kwargs: dict[str, Any] | None = None) -> tuple[nn.Module, int]:
    """The backbone of `arch` and its feature width (what its forward returns per image).

    small_stem: the project's ResNets' small-image stem (models/resnet.py). arch_kwargs: keyword arguments of
    timm.create_model or torchvision.models.get_model (e.g. a ViT's img_size and patch_size), or of
    build_scaled_resnet (width, small_stem) for `scaled/<resnet>`; for quantized/<arch>, its deployment bit-widths
    (weight_bits, act_bits) and the wrapped arch's own.
    """
    problem = arch_problem(arch)
    if problem is not None:
        raise ValueError(f"model.arch {problem}")
    library, name = library_and_name(arch)
    if library == QUANTIZED:
        return quantized_backbone(name, small_stem, arch_kwargs or {})
    if library == BINARY:
        if arch_kwargs:
            raise ValueError(f"binary/{name} takes no arch_kwargs; got {arch_kwargs}")
        net, width = build_resnet(name, small_stem)
        return binarise_resnet(net), width
    if library is None:
        return build_resnet(name, small_stem)
    if library == "timm":
        return timm_backbone(name, arch_kwargs or {})
    if library == "scaled":
        return build_scaled_resnet(name, **(arch_kwargs or {}))
    return torchvision_backbone(name, arch_kwargs or {})


def quantized_backbone(inner: str, small_stem: bool, kwargs: dict[str, Any]) -> tuple[nn.Module, int]:
    """The backbone of arch `inner` with its convolutions and linear layers quantizable, deployed (in eval mode) at
    kwargs' weight_bits and act_bits (8 each by default); the other kwargs are the inner arch's."""
    kwargs = dict(kwargs)
    bits = BitWidths(check_bits(kwargs.pop("weight_bits", 8), "weight_bits"),
                     check_bits(kwargs.pop("act_bits", 8), "act_bits"))
    net, width = build_backbone(inner, small_stem, kwargs)
    make_quantizable(net)
    deploy_at(net, bits)
    return net, width


def timm_backbone(name: str, kwargs: dict[str, Any]) -> tuple[nn.Module, int]:
    """timm's model `name` with no classifier (num_classes=0: its forward ends at the pooled, pre-logits features)."""
    import timm

    net = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    return net, getattr(net, "head_hidden_size", None) or net.num_features


def torchvision_backbone(name: str, kwargs: dict[str, Any]) -> tuple[nn.Module, int]:
    """torchvision's model `name` with its last linear layer (the classifier) replaced by Identity, and the dropout
    beside it in its Sequential too: its forward returns the features that layer read."""
    net = torchvision.models.get_model(name, weights=None, **kwargs)
    linears = [path for path, module in net.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"torchvision/{name} has no linear classifier to remove")
    parent_path, _, attribute = linears[-1].rpartition(".")
    parent = net.get_submodule(parent_path)
    width = getattr(parent, attribute).in_features
    setattr(parent, attribute, nn.Identity())
    if isinstance(parent, nn.Sequential):
        for index, module in enumerate(parent):
            if isinstance(module, nn.Dropout):
                parent[index] = nn.Identity()
    return net, width


def spatial_output(net: nn.Module) -> bool:
    """Whether forward_features of a timm model gives a (N, C, h, w) map (its output_fmt; ViTs give tokens and are
    caught by their shape)."""
    return getattr(net, "output_fmt", "NCHW") == "NCHW"


def feature_map(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last feature map (N, width, h, w) of a backbone built by build_backbone: a ResNet's layer4 output, a
    timm model's forward_features where that is a map. A backbone without one (a ViT's tokens) is a ValueError."""
    if isinstance(net, torchvision.models.ResNet):
        return resnet_feature_map(net, x)
    if hasattr(net, "forward_features") and hasattr(net, "forward_head") and spatial_output(net):
        features = net.forward_features(x)
        if features.dim() == 4:
            return features
    raise ValueError(f"the {type(net).__name__} backbone has no spatial feature map (a dense map needs a "
                     "convolutional backbone)")


def feature_map_channels(net: nn.Module, width: int) -> int:
    """Channels of feature_map's output for a backbone of pooled `width`: a timm model's num_features (its pooled
    width may be a wider pre-logits layer after the pooling, as MobileNetV3's), a ResNet's width."""
    return getattr(net, "num_features", width)


def pooled_features(net: nn.Module, feature_map: torch.Tensor) -> torch.Tensor:
    """What the backbone's forward returns from its last feature map (feature_map's): a ResNet's pooling and fc,
    a timm model's forward_head."""
    if isinstance(net, torchvision.models.ResNet):
        return resnet_pooled(net, feature_map)
    return net.forward_head(feature_map)


def freeze_all_but_batchnorm(module: nn.Module) -> None:
    """HPT-BN: only BatchNorm affine parameters keep requires_grad (running statistics update as usual)."""
    for layer in module.modules():
        is_bn = isinstance(layer, nn.modules.batchnorm._BatchNorm)
        for param in layer.parameters(recurse=False):
            param.requires_grad_(is_bn)


def freeze_patch_embed(module: nn.Module) -> None:
    """MoCo v3's frozen random patch projection: a ViT's patch embedding keeps its random initialisation."""
    module.patch_embed.requires_grad_(False)
