"""One width of a DSPNet run as a plain backbone: the widest network's weights sliced to that width, with the width's
own BatchNorm layers, as a `scaled/<resnet>` backbone (models/scaled_resnet.py) of the same parameter names.

`python -m mochi_hvs.weights.width_export --checkpoint runs/dspnet/last.pth --width 0.5 --out dspnet_w0.5.safetensors
[--no-verify]`

The safetensors file is the toolkit's export (safetensors_format), its config the run's with model.arch
`scaled/<resnet>` and model.arch_kwargs `{width, small_stem}`: the loader reads it as that backbone (model.init_from,
the evaluators), and `mochi-export` turns it into the other formats. Width 1 gives the widest backbone, as
`mochi-export` does from the checkpoint.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import UserError
from ..models.backbone import build_backbone
from ..models.slimmable import NORMS, norm_key, sliced_tensors, width_key
from .checkpoint import load_checkpoint
from .export import save_export
from .loader import exact_backbone, read_backbone_state
from .safetensors_format import to_safetensors

NORMS_PREFIX = "slim_norms.norms."  # where a DSPNet checkpoint keeps the narrower widths' BatchNorm layers


def width_state(checkpoint: str | Path, width: float,
                verify: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """The backbone state of a DSPNet checkpoint's network at `width` (copies, torchvision names), the config that
    describes it (model.arch scaled/<resnet> at that width) and the run's record; a UserError when the file is not
    a DSPNet run's checkpoint or its run never trained that width."""
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
    return state, described, meta.run


def width_backbone(checkpoint: str | Path, width: float, verify: bool = True) -> tuple[nn.Module, int]:
    """The DSPNet checkpoint's network at `width` as a plain scaled/<resnet> backbone in eval mode, and its feature
    width."""
    state, config, _ = width_state(checkpoint, width, verify)
    backbone, features = build_backbone(config["model"]["arch"], arch_kwargs=config["model"]["arch_kwargs"])
    backbone.load_state_dict(state)
    return backbone.eval(), features


def export_width(checkpoint: str | Path, width: float, out: str | Path, verify: bool = True) -> tuple[Path, str]:
    """Write the DSPNet checkpoint's network at `width` as our safetensors export (its digest beside it); returns the
    file and a summary line."""
    state, config, run = width_state(checkpoint, width, verify)
    out = save_export(out, lambda handle: handle.write(to_safetensors(state, config, run or None)))
    parameters = sum(value.numel() for name, value in state.items()
                     if not name.endswith(("running_mean", "running_var", "num_batches_tracked")))
    arch = config["model"]["arch"]
    return out, (f"exported the width-{width:g} network of {checkpoint} ({arch}, {parameters / 1e6:.2f} M parameters) "
                 f"to {out} as safetensors")


def main(argv: list[str] | None = None) -> int:
    """Command-line export of one width; user errors print one line and exit with status 2."""
    parser = argparse.ArgumentParser(prog="python -m mochi_hvs.weights.width_export",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a DSPNet run's training checkpoint (last.pth)")
    parser.add_argument("--width", required=True, type=float, help="one of the run's dspnet.widths")
    parser.add_argument("--out", required=True, help="output file (.safetensors)")
    parser.add_argument("--no-verify", action="store_true", help="read --checkpoint even when it fails its digest")
    args = parser.parse_args(argv)
    try:
        _, line = export_width(args.checkpoint, args.width, args.out, verify=not args.no_verify)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
