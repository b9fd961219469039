"""Where the backbone sits in a loaded weights file, and what is left out.

The state dict is the file's own mapping when every value is a tensor, else the one under `state_dict` or `model`
(official MoCo, Lightning and torchvision's reference scripts); our checkpoints keep it under `model`, detectron2
files under `model` with detectron2 names (mapped back to torchvision's). In it, the backbone is under the longest
chain of the prefixes users meet, `module.` (DataParallel), `encoder_q.` (MoCo's query encoder), `backbone.` and
`model.`, in any order (`module.encoder_q.`, `encoder_q.backbone.`, `model.backbone.`, ...); a classifier or MLP
head `fc.*` in it is dropped. Every key outside it (the momentum encoder `encoder_k.*`, the queue, heads) is
ignored, and listed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from .checkpoint import FORMAT
from .detectron2_format import from_detectron2, is_detectron2
from .errors import WeightsError

PREFIX_PARTS = ("module.", "encoder_q.", "backbone.", "model.")
CONTAINERS = ("state_dict", "model")  # where checkpoints from elsewhere keep their state dict
HEAD_PREFIX = "fc."
MOCO_PREFIX = "module.encoder_q."
SHOWN_GROUPS = 4  # groups of ignored keys named in the summary


@dataclass(frozen=True)
class Layout:
    """The backbone found in a file: torchvision-named `state`, where it was and which keys were ignored."""

    source: str  # mochi_hvs, moco, torchvision or detectron2
    state: dict[str, Any]
    container: str | None = None  # the entry that held the state dict
    prefix: str = ""
    ignored: list[str] = field(default_factory=list)

    def ignored_summary(self) -> str:
        """The ignored keys in groups, e.g. 'module.encoder_k.* (320), module.queue', or ''."""
        groups = Counter(_group(key) for key in self.ignored)
        shown = [f"{name} ({count})" if count > 1 else name for name, count in list(groups.items())[:SHOWN_GROUPS]]
        more = len(groups) - SHOWN_GROUPS
        return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _group(key: str) -> str:
    """A key's group: its leading prefix parts and the next name, e.g. module.encoder_k.conv1.weight ->
    module.encoder_k.*; a key with nothing below that name stands alone."""
    parts = key.split(".")
    depth = next((i for i, part in enumerate(parts) if f"{part}." not in PREFIX_PARTS), len(parts) - 1)
    return key if depth >= len(parts) - 1 else ".".join(parts[:depth + 1]) + ".*"


def _holds_tensors(value: Any) -> bool:
    return isinstance(value, dict) and any(isinstance(v, torch.Tensor) for v in value.values())


def _state_dict(obj: dict[str, Any], path: str) -> tuple[str, dict[str, Any], str | None]:
    """(source, state dict, the entry it was under) of a loaded file."""
    if obj.get("format") == FORMAT:
        return "mochi_hvs", obj["model"], "model"
    if is_detectron2(obj):
        return "detectron2", from_detectron2(obj), "model"
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return "torchvision", obj, None
    for name in CONTAINERS:
        if _holds_tensors(obj.get(name)):
            return "torchvision", obj[name], name
    raise WeightsError(
        f"{path}: unrecognised weights format (keys like {', '.join(map(str, list(obj)[:4])) or 'none'}); expected "
        "a state dict of tensors (itself or under 'state_dict' or 'model': our checkpoints and exports, torchvision, "
        "official MoCo .pth.tar), a safetensors file or a detectron2 backbone .pkl")


def backbone_prefix(keys: list[str], path: str) -> str:
    """The longest chain of PREFIX_PARTS the keys lead with; two parts side by side are ambiguous."""
    prefix = ""
    while parts := [part for part in PREFIX_PARTS if any(key.startswith(prefix + part) for key in keys)]:
        if len(parts) > 1:
            raise WeightsError(f"{path}: keys under both {', '.join(prefix + p for p in parts)}: cannot tell which "
                               "holds the backbone; save that one's state dict alone")
        prefix += parts[0]
    return prefix


def find_backbone(obj: dict[str, Any], path: str) -> Layout:
    """The backbone of a loaded file (see the module's docstring); a WeightsError when there is none."""
    source, tensors, container = _state_dict(obj, path)
    keys = [key for key in tensors if isinstance(key, str)]
    prefix = backbone_prefix(keys, path)
    inside = [key for key in keys if key.startswith(prefix)]
    head = [key for key in inside if key[len(prefix):].startswith(HEAD_PREFIX)]
    state = {key[len(prefix):]: tensors[key] for key in inside if key not in head}
    if source == "torchvision" and container == "state_dict" and prefix.startswith(MOCO_PREFIX):
        source = "moco"
    if not state:
        raise WeightsError(f"{path}: {source} file holds no backbone weights")
    not_tensors = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise WeightsError(f"{path}: {source} file is truncated or corrupt: backbone entry {not_tensors[0]!r} "
                           "is not a tensor")
    ignored = [key for key in keys if not key.startswith(prefix)] + head
    return Layout(source, state, container, prefix, ignored)
