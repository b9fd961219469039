"""What config validation needs to know of a backbone before anything is trained: read from a copy built on the
meta device (no memory, no arithmetic) and one forward of that copy at the run's image size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from .backbone import build_backbone, feature_map

PLAIN_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class BackboneBuildError(ValueError):
    """The library could not build the backbone with the given arch_kwargs."""


class BackboneInputError(ValueError):
    """The backbone cannot encode images of the run's size."""


@dataclass(frozen=True)
class BackboneFacts:
    """batchnorm: it has BatchNorm layers (split BatchNorm, shuffle-BN and HPT-BN
    act on them); fused_batchnorm: some carry their activation (timm's BatchNormAct2d), which SyncBatchNorm's
    conversion would drop; patch_embed: a ViT's patch projection (model.frozen_patch_embed); map_side: the side of
    its last feature map at the image size, None where it has none (a ViT's tokens)."""

    batchnorm: bool
    fused_batchnorm: bool
    patch_embed: bool
    map_side: int | None


_FACTS: dict[tuple[str, bool, str, int], BackboneFacts] = {}


def first_line(err: Exception) -> str:
    """The first line of an exception's message (library errors can run over many), with its type."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:240]


def backbone_facts(arch: str, small_stem: bool, arch_kwargs: dict[str, Any], image_size: int) -> BackboneFacts:
    """The facts of the backbone model.arch builds, encoding square images of `image_size` px (three channels, as
    the data path gives even grey images). BackboneBuildError or BackboneInputError (both ValueError) name the
    library's reason when it cannot be built or cannot encode that size. Remembered per process."""
    key = (arch, small_stem, repr(arch_kwargs), image_size)
    if key not in _FACTS:
        _FACTS[key] = _probe(arch, small_stem, arch_kwargs, image_size)
    return _FACTS[key]


def _probe(arch: str, small_stem: bool, arch_kwargs: dict[str, Any], image_size: int) -> BackboneFacts:
    with torch.device("meta"):
        try:
            net, _ = build_backbone(arch, small_stem, arch_kwargs)
        except Exception as err:  # any library's refusal of the kwargs becomes the config's error
            raise BackboneBuildError(first_line(err)) from err
        x = torch.zeros(2, 3, image_size, image_size)
        try:
            pooled = net(x)
        except Exception as err:
            raise BackboneInputError(first_line(err)) from err
        if not isinstance(pooled, torch.Tensor) or pooled.dim() != 2:
            raise BackboneInputError(f"its forward returns {type(pooled).__name__} "
                                     f"{tuple(getattr(pooled, 'shape', ()))}, not pooled features (N, width)")
        try:
            side = feature_map(net, x).shape[-1]
        except ValueError:
            side = None
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return BackboneFacts(bool(norms), any(type(m) not in PLAIN_BATCHNORM for m in norms),
                         isinstance(getattr(net, "patch_embed", None), nn.Module), side)
