"""One width of a DSPNet run as a plain backbone: the widest network's weights sliced to that width, with the width's
own BatchNorm layers, as a `scaled/<resnet>` backbone (models/scaled_resnet.py) of the same parameter names.

`python -m mochi_hvs.export --checkpoint runs/dspnet/last.pth --width 0.5 --out dspnet_w0.5.safetensors` (any
format: weights/export.py). The safetensors export's config is the run's with model.arch `scaled/<resnet>` and
model.arch_kwargs `{width, small_stem}`: the loader reads it as that backbone (model.init_from, the evaluators). Width
1 gives the widest backbone, as the export without --width does.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import UserError
from ..models.slimmable import NORMS, norm_key, sliced_tensors, width_key
from .architecture import architecture_of
from .checkpoint import load_checkpoint
from .loader import WeightsMeta, exact_backbone, read_backbone_state

NORMS_PREFIX = "slim_norms.norms."  # where a DSPNet checkpoint keeps the narrower widths' BatchNorm layers


def width_state(checkpoint: str | Path, width: float,
                verify: bool = True) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    """The backbone state of a DSPNet checkpoint's network at `width` (copies, torchvision names) and the metadata
    the loader would read from its export: the run's config with model.arch scaled/<resnet> at that width, its record;
    a UserError when the file is not a DSPNet run's checkpoint or its run never trained that width."""
    wide_state, meta = read_backbone_state(checkpoint, verify=verify)
    config = meta.config or {}
    dspnet = meta.source == "mochi_hvs" and config.get("objective") == "dspnet"
    widths = ((config.get("dspnet") or {}).get("widths") or []) if dspnet else []
    if width not in widths:
        trained = f"objective={config.get('objective')}" + (f", widths {widths}" if dspnet else "")
        raise UserError(f"{checkpoint} holds no network of width {width:g}: it is not the checkpoint of a DSPNet run "
                        f"that trained it ({trained})")
    wide, _ = exact_backbone(wide_state, meta)
    state = {name: value.clone() for name, value in sliced_tensors(wide, width, keep_output=False).items()}
    if width != 1:  # the width's own BatchNorm layers, beside the backbone in the checkpoint
        model_state = load_checkpoint(checkpoint, verify=False)["model"]
        for layer_path, layer in wide.named_modules():
            if isinstance(layer, NORMS):
                own = f"{NORMS_PREFIX}{width_key(width)}.{norm_key('backbone.' + layer_path)}."
                state |= {layer_path + "." + name[len(own):]: value.clone()
                          for name, value in model_state.items() if name.startswith(own)}
    described = copy.deepcopy(config)
    described["model"] |= {"arch": f"scaled/{meta.arch}", "small_stem": False,
                           "arch_kwargs": {"width": width, "small_stem": meta.small_stem}}
    architecture = architecture_of(state, described)
    found = f"the width-{width:g} network of a DSPNet run: {architecture} backbone ({len(state)} tensors)"
    return state, WeightsMeta(meta.source, meta.path, architecture, described, meta.run, found, meta.digest)


def width_backbone(checkpoint: str | Path, width: float, verify: bool = True) -> tuple[nn.Module, int]:
    """The DSPNet checkpoint's network at `width` as a plain scaled/<resnet> backbone in eval mode, and its feature
    width."""
    return exact_backbone(*width_state(checkpoint, width, verify))
