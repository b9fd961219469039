"""Backbone weights from every file format users bring, in torchvision ResNet names.

Formats read (by content, not by file name):
- ``mochi_hvs``: our training checkpoints (``format: mochi_hvs.checkpoint``; ``model`` holds the MoCo
  state, the backbone under ``encoder_q.backbone.``; the run's config comes along);
- ``moco``: the official MoCo ``.pth.tar`` (``state_dict`` with ``module.encoder_q.*``; its head ``fc.*``
  is dropped);
- ``safetensors``: a safetensors file of a torchvision-named ResNet, including our exports (whose metadata
  brings the run's config along);
- ``torchvision``: a plain torchvision ResNet state dict, including our torchvision exports
  (``fc.*``, when present, is dropped);
- ``detectron2``: a detectron2 backbone pickle (numpy arrays under detectron2 names), including our
  detectron2 exports; names are mapped back to torchvision's.

The architecture (resnet18/34/50) and the small stem are inferred from the keys and shapes. Files are checked
against their SHA-256 digest unless told not to (see integrity.verify_digest).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .checkpoint import FORMAT, check_layout
from .detectron2_format import from_detectron2, is_detectron2
from .errors import CheckpointError, WeightsError
from .integrity import embedded_digest, verify_digest
from .reading import SAFETENSORS, FileContent, read_file
from .safetensors_format import recorded_digest, stored_config

OUR_BACKBONE_PREFIX = "encoder_q.backbone."
MOCO_PREFIX = "module.encoder_q."
HEAD_PREFIX = "fc."
ARCH_OF_LAYOUT = {  # (block type, blocks per stage) -> torchvision architecture
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
}


@dataclass
class WeightsMeta:
    """Where backbone weights came from: the detected format, architecture, stem and run config (ours only)."""

    source: str
    path: str
    arch: str
    small_stem: bool
    config: dict[str, Any] | None = None


@dataclass
class LoadReport:
    """Keys of the backbone the state did not provide, and keys of the state the backbone does not have."""

    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: how many tensors were loaded, and which were missing or unexpected."""
        text = f"loaded {self.loaded} backbone tensors"
        if self.missing:
            text += f"; {len(self.missing)} missing (left at initialisation): {', '.join(self.missing[:5])}"
        if self.unexpected:
            text += f"; {len(self.unexpected)} unexpected (ignored): {', '.join(self.unexpected[:5])}"
        return text


def _strip(state: dict[str, Any], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}


def _drop_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not (isinstance(k, str) and k.startswith(HEAD_PREFIX))}


def infer_arch(state: dict[str, torch.Tensor]) -> tuple[str, bool]:
    """(arch, small_stem) of a torchvision-named ResNet state: block type and counts, first-conv kernel."""
    if "conv1.weight" not in state or "layer1.0.conv1.weight" not in state:
        raise WeightsError("not a ResNet backbone state (no conv1.weight / layer1.0.conv1.weight); found keys "
                           f"like {', '.join(list(state)[:4]) or 'none'}")
    if state["conv1.weight"].dim() != 4:
        raise WeightsError(f"conv1.weight has shape {tuple(state['conv1.weight'].shape)}, not that of a convolution")
    blocks = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    kind = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    arch = ARCH_OF_LAYOUT.get((kind, blocks))
    if arch is None:
        raise WeightsError(f"unsupported ResNet layout: {kind} blocks {blocks}; supported: "
                           + ", ".join(f"{a} ({k} {b})" for (k, b), a in ARCH_OF_LAYOUT.items()))
    return arch, state["conv1.weight"].shape[-1] == 3


def backbone_state_from(obj: dict[str, Any], path: str = "<state>") -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    """The torchvision-named backbone state and its metadata from a loaded checkpoint object."""
    config = None
    if obj.get("format") == FORMAT:
        source, state, config = "mochi_hvs", _strip(obj["model"], OUR_BACKBONE_PREFIX), obj.get("config")
    elif isinstance(obj.get("state_dict"), dict) and _strip(obj["state_dict"], MOCO_PREFIX):
        source, state = "moco", _drop_head(_strip(obj["state_dict"], MOCO_PREFIX))
    elif all(isinstance(v, torch.Tensor) for v in obj.values()) and "conv1.weight" in obj:
        source, state = "torchvision", _drop_head(obj)
    elif is_detectron2(obj):
        source, state = "detectron2", _drop_head(from_detectron2(obj))
    else:
        raise WeightsError(
            f"{path}: unrecognised weights format (keys like {', '.join(map(str, list(obj)[:4])) or 'none'}); expected "
            "a mochi_hvs checkpoint, an exported/torchvision ResNet state dict, a detectron2 backbone .pkl, or an "
            "official MoCo .pth.tar")
    if not state:
        raise WeightsError(f"{path}: {source} checkpoint holds no backbone weights")
    not_tensors = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise WeightsError(f"{path}: {source} checkpoint is truncated or corrupt: backbone entry {not_tensors[0]!r} "
                           "is not a tensor")
    arch, small_stem = infer_arch(state)
    return state, WeightsMeta(source, path, arch, small_stem, config)


def _safetensors_state(content: FileContent, path: str) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    """The backbone of a safetensors file (ours or any torchvision-named one) and the config an export records."""
    try:
        config = stored_config(content.metadata)
    except ValueError as err:  # json's errors are ValueErrors too
        raise CheckpointError(f"{path}: the config in its safetensors metadata cannot be read ({err})") from err
    state, meta = backbone_state_from(content.obj, path)
    return state, WeightsMeta(SAFETENSORS, path, meta.arch, meta.small_stem, config)


def read_backbone_state(path: str | Path, verify: bool = True) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    """Read a weights file of any supported format: (torchvision-named backbone state, metadata). With `verify`,
    the file must match its SHA-256 digest (see integrity.verify_digest)."""
    content = read_file(path, map_location="cpu")
    if content.kind == SAFETENSORS:
        state, meta = _safetensors_state(content, str(path))
        embedded = recorded_digest(content.obj, content.metadata)
    else:
        check_layout(content.obj, path)
        state, meta = backbone_state_from(content.obj, str(path))
        embedded = embedded_digest(content.obj)
    if verify:
        verify_digest(path, embedded)
    return state, meta


def load_backbone_weights(backbone: nn.Module, state: dict[str, torch.Tensor]) -> LoadReport:
    """Copy `state` into `backbone` (non-strict) and report; nothing matching or any shape mismatch is an error."""
    own = backbone.state_dict()
    mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and v.shape != own[k].shape]
    if mismatched:
        raise WeightsError(f"{len(mismatched)} backbone tensors have the wrong shape (another architecture or "
                           f"stem?): {'; '.join(mismatched[:3])}")
    matched = [k for k in state if k in own]
    if not matched:
        raise WeightsError("the weights match no parameter of the backbone (wrong format or prefix?); "
                           f"file keys like {', '.join(list(state)[:3])}, model keys like {', '.join(list(own)[:3])}")
    result = backbone.load_state_dict(state, strict=False)
    return LoadReport(len(matched), list(result.missing_keys), list(result.unexpected_keys))

