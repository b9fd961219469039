"""The torch.hub entry point of hubconf.py: `torch.hub.load(CHECKOUT, "backbone", source="local", weights=FILE)`
gives the backbone a weights file holds (any file the loader reads; the architecture is the file's), with every
tensor loaded and none missing or extra, in eval mode; without weights, a randomly initialised backbone."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from .architecture import Architecture
from .errors import WeightsError
from .loader import exact_backbone, read_backbone_state


def backbone(weights: str | None = None, arch: str | None = None, small_stem: bool | None = None,
             arch_kwargs: dict[str, Any] | None = None, verify: bool = True) -> nn.Module:
    """The backbone of `weights` (its SHA-256 digests checked with `verify`); arch, small_stem and arch_kwargs,
    where given, must be the file's. Without weights: `arch` (default resnet18) at random initialisation."""
    if weights is None:
        return Architecture(arch or "resnet18", bool(small_stem), arch_kwargs or {}).build()[0].eval()
    state, meta = read_backbone_state(weights, verify=verify)
    held = meta.architecture
    asked = {"arch": (arch, held.arch), "small_stem": (small_stem, held.small_stem),
             "arch_kwargs": (arch_kwargs, held.arch_kwargs)}
    differ = [f"{name}={value!r}" for name, (value, own) in asked.items() if value is not None and value != own]
    if differ:
        raise WeightsError(f"{weights} holds a {held} backbone, not the one asked for ({', '.join(differ)})")
    return exact_backbone(state, meta)[0]
