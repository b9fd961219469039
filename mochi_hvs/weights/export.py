"""Backbone export: a safetensors file (the default), a torchvision ResNet state dict, or the detectron2 pickle used
for MoCo backbones.

`python -m mochi_hvs.export --checkpoint FILE [--format safetensors|torchvision|detectron2] --out FILE [--no-verify]`

The safetensors file holds the torchvision-named backbone, with our marker, its digest and the run's config in its
metadata (see safetensors_format). The detectron2 layout is that of MoCo's `detection/convert-pretrain-to-detectron2.py`
(see detectron2_format). Each export gets a `sha256sum` file beside it (`<out>.sha256`); the input is checked against
its own digest unless --no-verify is given.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .atomic import write_atomic
from .detectron2_format import to_detectron2
from .errors import CheckpointError
from .integrity import sidecar_line, sidecar_path
from .loader import read_backbone_state
from .safetensors_format import to_safetensors

FORMATS = ("safetensors", "torchvision", "detectron2")  # the first is the default


def save_export(path: str | Path, write: Callable[[BinaryIO], Any]) -> Path:
    """Atomically write a plain file for other tools, then its `sha256sum` sidecar `<file>.sha256` (the old sidecar
    goes first, so an interruption leaves a file without digest rather than one with a stale digest)."""
    path = Path(path)
    sidecar_path(path).unlink(missing_ok=True)
    write_atomic(path, write)
    line = sidecar_line(path).encode()
    write_atomic(sidecar_path(path), lambda handle: handle.write(line))
    return path


def export_backbone(checkpoint: str | Path, fmt: str, out: str | Path, verify: bool = True) -> tuple[Path, str]:
    """Write the backbone of `checkpoint` (any supported format, its digest checked with `verify`) as `fmt`, with a
    `<out>.sha256` digest beside it; returns the file and a summary line."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    state, meta = read_backbone_state(checkpoint, verify=verify)
    if fmt == "safetensors":
        out = save_export(out, lambda handle: handle.write(to_safetensors(state, meta.config, meta.run or None)))
    elif fmt == "torchvision":
        out = save_export(out, lambda handle: torch.save(state, handle))
    else:
        out = save_export(out, lambda handle: pickle.dump(to_detectron2(state), handle))
    line = f"exported {meta.arch} backbone ({len(state)} tensors) to {out} as {fmt}, from {meta.summary()}"
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
    parser.add_argument("--format", default=FORMATS[0], choices=FORMATS, help=f"default: {FORMATS[0]}")
    parser.add_argument("--out", required=True,
                        help="output file (.safetensors; .pth for torchvision, .pkl for detectron2)")
    parser.add_argument("--no-verify", action="store_true",
                        help="read --checkpoint even when it fails its SHA-256 digest, or is ours and has none "
                             "(files from elsewhere without a digest load anyway, with a note)")
    args = parser.parse_args(argv)
    try:
        _, line = export_backbone(args.checkpoint, args.format, args.out, verify=not args.no_verify)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
