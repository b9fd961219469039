"""Which network a weights file holds: the architecture its run's stored config names (any model.arch, with its
small stem and arch_kwargs), checked against a copy built on the meta device; or, for a file from elsewhere without
a config, a torchvision ResNet inferred from its keys and shapes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..models.backbone import build_backbone
from ..models.backbone_facts import first_line
from .errors import WeightsError

ARCH_OF_LAYOUT = {  # (block type, blocks per stage) -> torchvision architecture
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
}
RESNET_FAMILY = tuple(ARCH_OF_LAYOUT.values())
SHOWN_KEYS = 3  # keys named per kind of mismatch


@dataclass(frozen=True)
class Architecture:
    """A backbone as model.arch, model.small_stem and model.arch_kwargs describe it."""

    arch: str
    small_stem: bool = False
    arch_kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> tuple[nn.Module, int]:
        """The backbone, randomly initialised, and its feature width (models/backbone.py)."""
        return build_backbone(self.arch, self.small_stem, self.arch_kwargs)

    @property
    def is_resnet(self) -> bool:
        """One of the project's ResNets (resnet18 | resnet34 | resnet50), which the ResNet-only formats take."""
        return self.arch in RESNET_FAMILY

    def __str__(self) -> str:
        return (self.arch + (" (small stem)" if self.small_stem else "")
                + (f" {self.arch_kwargs}" if self.arch_kwargs else ""))


def stored_architecture(config: dict[str, Any] | None) -> Architecture | None:
    """The architecture a run's stored config names; None without a config (or one that names no model.arch)."""
    model = (config or {}).get("model")
    if not isinstance(model, dict) or not isinstance(model.get("arch"), str):
        return None
    return Architecture(model["arch"], bool(model.get("small_stem", False)), dict(model.get("arch_kwargs") or {}))


def infer_resnet(state: dict[str, torch.Tensor]) -> Architecture:
    """The torchvision ResNet of a state in its names: block type and counts, first-conv kernel (small stem)."""
    if "conv1.weight" not in state or "layer1.0.conv1.weight" not in state:
        raise WeightsError("not a ResNet backbone state (no conv1.weight / layer1.0.conv1.weight) and no run config "
                           "naming its model.arch; found keys like " + (", ".join(list(state)[:4]) or "none"))
    if state["conv1.weight"].dim() != 4:
        raise WeightsError(f"conv1.weight has shape {tuple(state['conv1.weight'].shape)}, not that of a convolution")
    blocks = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    kind = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    arch = ARCH_OF_LAYOUT.get((kind, blocks))
    if arch is None:
        raise WeightsError(f"unsupported ResNet layout: {kind} blocks {blocks}; supported: "
                           + ", ".join(f"{a} ({k} {b})" for (k, b), a in ARCH_OF_LAYOUT.items()))
    return Architecture(arch, state["conv1.weight"].shape[-1] == 3)


def _named(kind: str, keys: list[str]) -> list[str]:
    return [f"{len(keys)} {kind} ({', '.join(keys[:SHOWN_KEYS])})"] if keys else []


def fit_problems(state: dict[str, torch.Tensor], architecture: Architecture) -> list[str]:
    """What keeps `state` from being exactly that of `architecture`'s backbone (built on the meta device): tensors
    missing, unexpected or of another shape, in words; empty when it fits. An architecture that cannot be built is a
    WeightsError."""
    try:
        with torch.device("meta"):
            own = architecture.build()[0].state_dict()
    except Exception as err:  # any library's refusal (an unknown name, kwargs it does not take) is one line
        raise WeightsError(f"its config names model.arch {architecture}, which cannot be built here "
                           f"({first_line(err)})") from err
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in state.items() if k in own and v.shape != own[k].shape]
    return (_named("missing", [k for k in own if k not in state])
            + _named("unexpected", [k for k in state if k not in own]) + _named("of another shape", shapes))


def architecture_of(state: dict[str, torch.Tensor], config: dict[str, Any] | None) -> Architecture:
    """The architecture of a backbone state: its config's, checked against the state; else a ResNet inferred."""
    stored = stored_architecture(config)
    if stored is None:
        return infer_resnet(state)
    if problems := fit_problems(state, stored):
        raise WeightsError(f"does not hold the {stored} backbone its config names: {'; '.join(problems)}")
    return stored
