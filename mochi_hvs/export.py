"""Backbone export: a torchvision ResNet state dict, or the detectron2 pickle used for MoCo backbones.

`python -m mochi_hvs.export --checkpoint FILE --format torchvision|detectron2 --out FILE`

The detectron2 mapping is that of MoCo's `detection/convert-pretrain-to-detectron2.py`: non-layer keys go
under `stem.`, layerN becomes res(N+1), bnK becomes convK.norm, downsample.0/1 become shortcut/shortcut.norm,
tensors become numpy arrays, and detectron2 is told to match names heuristically.
"""

from __future__ import annotations

import argparse
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CheckpointError, save_atomic
from .weights import read_backbone_state

FORMATS = ("torchvision", "detectron2")
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


def to_detectron2(state: dict[str, torch.Tensor]) -> dict:
    """The detectron2 checkpoint object: numpy weights under detectron2 names, matching heuristics on."""
    model = {to_detectron2_key(k): v.detach().cpu().numpy() for k, v in state.items()}
    return {"model": model, "__author__": D2_AUTHOR, "matching_heuristics": True}


def from_detectron2(obj: dict) -> dict[str, torch.Tensor]:
    """A torchvision-named state dict from a detectron2 checkpoint object made by to_detectron2."""
    return {from_detectron2_key(k): torch.from_numpy(np.asarray(v)) for k, v in obj["model"].items()}


def export_backbone(checkpoint: str | Path, fmt: str, out: str | Path) -> tuple[Path, str]:
    """Write the backbone of `checkpoint` (any supported format) as `fmt`; returns the file and a summary line."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    state, meta = read_backbone_state(checkpoint)
    out = Path(out)
    if fmt == "torchvision":
        save_atomic(state, out)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "wb") as handle:
            pickle.dump(to_detectron2(state), handle)
    line = f"exported {meta.arch} backbone ({len(state)} tensors, from a {meta.source} file) to {out} as {fmt}"
    if fmt == "detectron2" and meta.config:
        data = meta.config["data"]
        line += (f"; it was pretrained on inputs normalised with data.mean/std, so run detectron2 with "
                 f"MODEL.PIXEL_MEAN \"{pixel_values(data['mean'])}\" MODEL.PIXEL_STD \"{pixel_values(data['std'])}\"")
    return out, line


def pixel_values(values: list[float]) -> str:
    """detectron2's 0-255 scale, e.g. [0.485, 0.456, 0.406] -> '[123.675, 116.28, 103.53]'."""
    return "[" + ", ".join(f"{255 * v:.3f}".rstrip("0").rstrip(".") for v in values) + "]"


def main(argv: list[str] | None = None) -> int:
    """Command-line export; user errors print one line and exit with status 2."""
    parser = argparse.ArgumentParser(prog="python -m mochi_hvs.export", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="our checkpoint, an exported backbone, or a MoCo .pth.tar")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", required=True, help="output file (.pth for torchvision, .pkl for detectron2)")
    args = parser.parse_args(argv)
    try:
        _, line = export_backbone(args.checkpoint, args.format, args.out)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
