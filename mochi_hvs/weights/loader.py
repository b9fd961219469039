"""Backbone weights from every file format users bring, under the backbone's own parameter names (torchvision's for
the ResNets): the one loader of init_from, HPT stages, the evaluators, studies, export and hubconf.py.

Formats read (by content, not by file name; see reading.py, nothing read runs code):
- ``mochi_hvs``: our training checkpoints (``format: mochi_hvs.checkpoint``; ``model`` holds the MoCo
  state, the backbone under ``encoder_q.backbone.``; the run's config comes along);
- ``moco``: the official MoCo ``.pth.tar`` (``state_dict`` with ``module.encoder_q.*``; its head ``fc.*``
  is dropped);
- ``safetensors``: a safetensors file of a torchvision-named ResNet, or our export of any backbone (whose
  metadata brings the run's config along);
- ``torchvision``: a plain torchvision ResNet state dict, including our torchvision exports
  (``fc.*``, when present, is dropped);
- ``detectron2``: a detectron2 backbone pickle (numpy arrays under detectron2 names), including our
  detectron2 exports; names are mapped back to torchvision's.

Where the state dict and the backbone sit in a file (containers, key prefixes such as `module.` or `backbone.`) is
found by layouts.py. The architecture is the one the run's stored config names (our checkpoints and safetensors
exports: any model.arch, with its small stem and arch_kwargs), checked against the state; a file without a config
holds a ResNet (resnet18/34/50), its small stem inferred from the keys and shapes (architecture.py).
Files are checked against every SHA-256 digest they carry unless told not to; ours must carry one, a file from
elsewhere without one loads with a note (see integrity.verify_digest). WeightsMeta.summary says in one line what
was found, what was ignored and what was checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .architecture import Architecture, architecture_of, fit_problems
from .checkpoint import FORMAT, check_layout
from .errors import CheckpointError, WeightsError
from .integrity import NOT_CHECKED, embedded_digest, verify_digest
from .layouts import Layout, find_backbone
from .reading import SAFETENSORS, FileContent, read_file
from .safetensors_format import EXPORT_FORMAT, recorded_digest, stored_mapping

DESCRIPTIONS = {"mochi_hvs": "our training checkpoint", "moco": "an official MoCo checkpoint",
                "torchvision": "a torch state dict", "detectron2": "a detectron2 pickle",
                "safetensors": "a safetensors file"}


@dataclass
class WeightsMeta:
    """Where backbone weights came from: the detected format, architecture and run config (ours only); what the
    loader found and ignored, and what it checked, in words."""

    source: str
    path: str
    architecture: Architecture
    config: dict[str, Any] | None = None
    run: dict[str, Any] = field(default_factory=dict)  # what the file records of its run: steps, commit
    found: str = ""
    digest: str = ""

    @property
    def arch(self) -> str:
        """model.arch of the backbone (resnet18, timm/<name>, ...)."""
        return self.architecture.arch

    @property
    def small_stem(self) -> bool:
        """Whether the ResNet has the small-image stem."""
        return self.architecture.small_stem

    def summary(self) -> str:
        """One line: the file, what was found in it and ignored, and its digest check."""
        return "; ".join(part for part in (f"{self.path}: {self.found or self.source}", self.digest) if part)


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


def _found(description: str, layout: Layout, architecture: Architecture) -> str:
    """What the loader found and ignored, e.g. 'an official MoCo checkpoint: resnet50 backbone (318 tensors) under
    module.encoder_q.* in 'state_dict'; ignored module.encoder_k.* (322), module.queue'."""
    where = (f" under {layout.prefix}*" if layout.prefix else "") + (
        f" in '{layout.container}'" if layout.container else "")
    text = f"{description}: {architecture} backbone ({len(layout.state)} tensors){where}"
    return text + (f"; ignored {layout.ignored_summary()}" if layout.ignored else "")


def _export_mapping(metadata: dict[str, str], key: str, path: str) -> dict[str, Any] | None:
    """The run's `config` or `run` record a safetensors export holds (None without one); unreadable JSON is a
    CheckpointError."""
    try:
        return stored_mapping(metadata, key)
    except ValueError as err:  # json's errors are ValueErrors too
        raise CheckpointError(f"{path}: the {key} in its safetensors metadata cannot be read ({err})") from err


def _checkpoint_run(obj: dict[str, Any]) -> dict[str, Any]:
    """What our training checkpoint records of its run: the steps trained and the code's commit (where kept)."""
    return {key: obj[entry] for key, entry in (("steps", "global_step"), ("commit", "commit")) if entry in obj}


def _backbone_state(content: FileContent, path: str, ours: bool) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    """The torchvision-named backbone state of a file's content, and its metadata (the run's config: from our
    checkpoints and safetensors exports)."""
    layout = find_backbone(content.obj, path)
    run: dict[str, Any] | None = None
    if content.kind == SAFETENSORS:
        source, config = SAFETENSORS, _export_mapping(content.metadata, "config", path)
        run = _export_mapping(content.metadata, "run", path)
        description = "our safetensors export" if ours else DESCRIPTIONS[SAFETENSORS]
    else:
        source, description = layout.source, DESCRIPTIONS[layout.source]
        config = content.obj.get("config") if source == "mochi_hvs" else None
        run = _checkpoint_run(content.obj) if source == "mochi_hvs" else None
    try:
        architecture = architecture_of(layout.state, config)
    except WeightsError as err:
        raise WeightsError(f"{path}: {err}") from err
    found = _found(description, layout, architecture)
    return layout.state, WeightsMeta(source, path, architecture, config, run or {}, found)


def read_backbone_state(path: str | Path, verify: bool = True) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    """Read a weights file of any supported format: (torchvision-named backbone state, metadata). With `verify`,
    the file must match every SHA-256 digest it has, and ours must have one; a file from elsewhere without any
    loads with a note in the metadata's summary (see integrity.verify_digest)."""
    content = read_file(path, map_location="cpu")
    if content.kind == SAFETENSORS:
        embedded = recorded_digest(content.obj, content.metadata)
        ours = content.metadata.get("format") == EXPORT_FORMAT
    else:
        check_layout(content.obj, path)
        embedded = embedded_digest(content.obj)
        ours = content.obj.get("format") == FORMAT
    digest = verify_digest(path, embedded, ours) if verify else NOT_CHECKED
    state, meta = _backbone_state(content, str(path), ours)
    meta.digest = digest
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


def exact_backbone(state: dict[str, torch.Tensor], meta: WeightsMeta) -> tuple[nn.Module, int]:
    """The backbone `meta` describes holding exactly `state` (no tensor missing, extra or of another shape: else a
    WeightsError naming them), in eval mode, and its feature width: what export and hubconf.py hand over."""
    if problems := fit_problems(state, meta.architecture):
        raise WeightsError(f"{meta.path}: does not hold exactly the {meta.architecture} backbone: "
                           f"{'; '.join(problems)}")
    module, width = meta.architecture.build()
    module.load_state_dict(state)
    return module.eval(), width
