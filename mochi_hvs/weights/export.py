"""Backbone export, for every place a user takes a backbone: a safetensors file (the default), a torchvision state
dict, the detectron2 pickle used for MoCo backbones, a timm folder in the Hugging Face layout, or an ONNX graph.

`python -m mochi_hvs.export --checkpoint FILE [--format safetensors|torchvision|detectron2|timm|onnx] --out PATH
[--image-size N] [--no-verify]`

The safetensors file holds the backbone under its own parameter names (torchvision's for the ResNets), with our
marker, its digest, the run's config and record in its metadata (see safetensors_format). The torchvision file is
the state dict a torchvision model loads strictly once its classifier is nn.Identity(); the detectron2 layout is
that of MoCo's `detection/convert-pretrain-to-detectron2.py` (see detectron2_format); the timm folder is described in
timm_format, the ONNX graph (checked in onnxruntime before it is written) in onnx_format. A format that cannot hold
the backbone (detectron2 and torchvision: a timm ViT; timm: the small stem) is refused in one line. Each file gets a
`sha256sum` file beside it (`<out>.sha256`; the timm folder's model.safetensors too); the input is checked against
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

from ..models.arch import library_and_name
from .atomic import write_atomic
from .detectron2_format import to_detectron2
from .errors import CheckpointError, ExportError
from .integrity import sidecar_line, sidecar_path
from .loader import WeightsMeta, exact_backbone, read_backbone_state
from .onnx_format import onnx_difference, to_onnx
from .safetensors_format import to_safetensors
from .timm_format import WEIGHTS, timm_folder

FORMATS = ("safetensors", "torchvision", "detectron2", "timm", "onnx")  # the first is the default
DEFAULT_IMAGE_SIZE = 224  # the ONNX input of a file without a run config


def save_export(path: str | Path, write: Callable[[BinaryIO], Any]) -> Path:
    """Atomically write a plain file for other tools, then its `sha256sum` sidecar `<file>.sha256` (the old sidecar
    goes first, so an interruption leaves a file without digest rather than one with a stale digest)."""
    path = Path(path)
    sidecar_path(path).unlink(missing_ok=True)
    write_atomic(path, write)
    line = sidecar_line(path).encode()
    write_atomic(sidecar_path(path), lambda handle: handle.write(line))
    return path


def _refuse_elsewhere(fmt: str, meta: WeightsMeta) -> None:
    """An ExportError where `fmt` cannot hold the backbone: detectron2 takes our ResNets, torchvision no timm model
    (timm's own refusals are timm_format's)."""
    architecture = meta.architecture
    if fmt == "detectron2" and not architecture.is_resnet:
        raise ExportError(f"detectron2 takes resnet18, resnet34 or resnet50 backbones; {meta.path} holds a "
                          f"{architecture} backbone: export it as safetensors, timm or onnx")
    if fmt == "torchvision" and library_and_name(architecture.arch)[0] == "timm":
        raise ExportError(f"{architecture.arch} is a timm model, which torchvision does not build; export it as "
                          "safetensors, timm or onnx")


def _write_timm(state: dict[str, torch.Tensor], meta: WeightsMeta, out: Path) -> str:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; the timm export is a folder")
    for name, content in timm_folder(state, meta, out).items():
        writer = save_export if name == WEIGHTS else write_atomic
        writer(out / name, lambda handle, content=content: handle.write(content))
    return f'; load it with timm.create_model("local-dir:{out}", pretrained=True)'


def _write_onnx(state: dict[str, torch.Tensor], meta: WeightsMeta, out: Path, image_size: int | None) -> str:
    size = image_size or ((meta.config or {}).get("data") or {}).get("image_size") or DEFAULT_IMAGE_SIZE
    backbone, _ = exact_backbone(state, meta)
    graph = to_onnx(backbone, size)
    difference = onnx_difference(graph, backbone, size)
    save_export(out, lambda handle: handle.write(graph))
    return f"; input (batch, 3, {size}, {size}), onnxruntime's features within {difference:.1g} of the backbone's"


def _detectron2_note(meta: WeightsMeta) -> str:
    if not meta.config:
        return ""
    data = meta.config["data"]
    return (f"; it was pretrained on inputs normalised with data.mean/std, so run detectron2 with "
            f"MODEL.PIXEL_MEAN \"{pixel_values(data['mean'])}\" MODEL.PIXEL_STD \"{pixel_values(data['std'])}\"")


def export_backbone(checkpoint: str | Path, fmt: str, out: str | Path, verify: bool = True,
                    image_size: int | None = None) -> tuple[Path, str]:
    """Write the backbone of `checkpoint` (any supported format, its digest checked with `verify`) as `fmt`, with
    `sha256sum` digests beside what it writes; returns the file (the timm folder) and a summary line. `image_size`:
    the ONNX input's side (default: the run's data.image_size, else 224)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    state, meta = read_backbone_state(checkpoint, verify=verify)
    _refuse_elsewhere(fmt, meta)
    out, note = Path(out), ""
    if fmt == "safetensors":
        save_export(out, lambda handle: handle.write(to_safetensors(state, meta.config, meta.run or None)))
    elif fmt == "torchvision":
        save_export(out, lambda handle: torch.save(state, handle))
    elif fmt == "detectron2":
        save_export(out, lambda handle: pickle.dump(to_detectron2(state), handle))
        note = _detectron2_note(meta)
    elif fmt == "timm":
        note = _write_timm(state, meta, out)
    else:
        note = _write_onnx(state, meta, out, image_size)
    return out, (f"exported {meta.architecture} backbone ({len(state)} tensors) to {out} as {fmt}, from "
                 f"{meta.summary()}{note}")


def pixel_values(values: list[float]) -> str:
    """detectron2's 0-255 scale, e.g. [0.485, 0.456, 0.406] -> '[123.675, 116.28, 103.53]'."""
    return "[" + ", ".join(f"{255 * v:.3f}".rstrip("0").rstrip(".") for v in values) + "]"


def main(argv: list[str] | None = None) -> int:
    """Command-line export; user errors print one line and exit with status 2."""
    parser = argparse.ArgumentParser(prog="python -m mochi_hvs.export", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="our checkpoint, an exported backbone, or a MoCo .pth.tar")
    parser.add_argument("--format", default=FORMATS[0], choices=FORMATS, help=f"default: {FORMATS[0]}")
    parser.add_argument("--out", required=True,
                        help="output: a file (.safetensors; .pth for torchvision, .pkl for detectron2, .onnx) or, "
                             "for timm, a folder")
    parser.add_argument("--image-size", type=int, default=None,
                        help=f"onnx: the input's side in px (default: the run's data.image_size, else "
                             f"{DEFAULT_IMAGE_SIZE})")
    parser.add_argument("--no-verify", action="store_true",
                        help="read --checkpoint even when it fails its SHA-256 digest, or is ours and has none "
                             "(files from elsewhere without a digest load anyway, with a note)")
    args = parser.parse_args(argv)
    if args.image_size is not None and args.format != "onnx":
        parser.error("--image-size applies to --format onnx only")
    try:
        _, line = export_backbone(args.checkpoint, args.format, args.out, verify=not args.no_verify,
                                  image_size=args.image_size)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
