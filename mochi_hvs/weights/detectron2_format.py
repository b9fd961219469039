"""The detectron2 checkpoint layout of a ResNet backbone, both ways.

The mapping is that of MoCo's `detection/convert-pretrain-to-detectron2.py`: non-layer keys go under `stem.`,
layerN becomes res(N+1), bnK becomes convK.norm, downsample.0/1 become shortcut/shortcut.norm, tensors become
numpy arrays, and detectron2 is told to match names heuristically.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from .safe_pickle import NUMERIC_KINDS

D2_AUTHOR = "mochi_hvs (MoCo-style backbone)"


def to_detectron2_key(key: str) -> str:
    """torchvision ResNet name -> detectron2 ResNet name (e.g. layer1.0.bn1.weight -> res2.0.conv1.norm.weight)."""
    if "layer" not in key:
        key = "stem." + key
    key = re.sub(r"layer(\d)", lambda m: f"res{int(m.group(1)) + 1}", key)
    key = re.sub(r"bn(\d)", r"conv\1.norm", key)
    return key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def from_detectron2_key(key: str) -> str:
    """detectron2 ResNet name -> torchvision ResNet name (inverse of to_detectron2_key)."""
    key = key.replace("shortcut.norm", "downsample.1").replace("shortcut", "downsample.0")
    key = re.sub(r"conv(\d)\.norm", r"bn\1", key)
    key = re.sub(r"res(\d)", lambda m: f"layer{int(m.group(1)) - 1}", key)
    return key.removeprefix("stem.")


def to_detectron2(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The detectron2 checkpoint object: numpy weights under detectron2 names, matching heuristics on."""
    model = {to_detectron2_key(k): v.detach().cpu().numpy() for k, v in state.items()}
    return {"model": model, "__author__": D2_AUTHOR, "matching_heuristics": True}


def is_detectron2(obj: dict[str, Any]) -> bool:
    """Whether a loaded object is a detectron2 checkpoint: a `model` mapping of names to numeric numpy arrays."""
    model = obj.get("model")
    return isinstance(model, dict) and bool(model) and all(
        isinstance(k, str) and isinstance(v, np.ndarray) and v.dtype.kind in NUMERIC_KINDS for k, v in model.items())


def from_detectron2(obj: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A torchvision-named state dict from a detectron2 checkpoint object (one that is_detectron2)."""
    return {from_detectron2_key(k): torch.from_numpy(np.asarray(v)) for k, v in obj["model"].items()}
