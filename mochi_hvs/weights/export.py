"""Backbone export, for every place a user takes a backbone: a safetensors file (the default), a torchvision state
dict, the detectron2 pickle used for MoCo backbones, a timm folder in the Hugging Face layout, an ONNX graph, or an
ONNX graph whose convolutions run in integers (onnx-int: compact backbones, or any backbone quantized at --bits).

`python -m mochi_hvs.export --checkpoint FILE [--format safetensors|torchvision|detectron2|timm|onnx|onnx-int]
--out PATH [--width W] [--bits w<b>a<b>] [--image-size N] [--no-verify]`

The safetensors file holds the backbone under its own parameter names (torchvision's for the ResNets), with our
marker, its digest, the run's config and record in its metadata (see safetensors_format). The torchvision file is
the state dict a torchvision model loads strictly once its classifier is nn.Identity(); the detectron2 layout is
that of MoCo's `detection/convert-pretrain-to-detectron2.py` (see detectron2_format); the timm folder is described in
timm_format, the ONNX graph (checked in onnxruntime before it is written) in onnx_format, the integer graph in
integer_onnx. --width exports one width of a DSPNet run (width_export). A format that cannot hold the backbone
(detectron2: all but our ResNets; torchvision: what it does not build, such as a timm ViT or a ResNet at a width;
timm: the small stem) is refused in one line. Each file gets a
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

from ..errors import UserError
from ..models.arch import QUANTIZED, library_and_name
from .atomic import write_atomic
from .detectron2_format import to_detectron2
from .errors import ExportError
from .integer_onnx import quantized_at, to_integer_onnx
from .integrity import sidecar_line, sidecar_path
from .loader import WeightsMeta, exact_backbone, read_backbone_state
from .onnx_format import onnx_difference, to_onnx
from .safetensors_format import to_safetensors
from .timm_format import WEIGHTS, timm_folder
from .width_export import width_state

FORMATS = ("safetensors", "torchvision", "detectron2", "timm", "onnx", "onnx-int")  # the first is the default
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


def torchvision_builds(arch: str) -> bool:
    """Whether torchvision builds the model.arch `arch`: our ResNets and its own models, and the quantized/ form of
    those (as their float weights)."""
    library, name = library_and_name(arch)
    return torchvision_builds(name) if library == QUANTIZED else library in (None, "torchvision")


def _refuse_elsewhere(fmt: str, meta: WeightsMeta) -> None:
    """An ExportError where `fmt` cannot hold the backbone: detectron2 takes our ResNets, torchvision what it builds
    (timm's own refusals are timm_format's)."""
    architecture = meta.architecture
    if fmt == "detectron2" and not architecture.is_resnet:
        raise ExportError(f"detectron2 takes resnet18, resnet34 or resnet50 backbones; {meta.path} holds a "
                          f"{architecture} backbone: export it as safetensors, timm or onnx")
    if fmt == "torchvision" and library_and_name(architecture.arch)[0] == "timm":
        raise ExportError(f"{architecture.arch} is a timm model, which torchvision does not build; export it as "
                          "safetensors, timm or onnx")
    if fmt == "torchvision" and not torchvision_builds(architecture.arch):
        raise ExportError(f"torchvision does not build {architecture.arch}; export it as safetensors or onnx")


def _write_timm(state: dict[str, torch.Tensor], meta: WeightsMeta, out: Path) -> str:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; the timm export is a folder")
    for name, content in timm_folder(state, meta, out).items():
        writer = save_export if name == WEIGHTS else write_atomic
        writer(out / name, lambda handle, content=content: handle.write(content))
    return f'; load it with timm.create_model("local-dir:{out}", pretrained=True)'


def _image_size(meta: WeightsMeta, image_size: int | None) -> int:
    """The side of an ONNX graph's input: the one asked for, else the run's data.image_size, else 224."""
    return image_size or ((meta.config or {}).get("data") or {}).get("image_size") or DEFAULT_IMAGE_SIZE


def _write_onnx(state: dict[str, torch.Tensor], meta: WeightsMeta, out: Path, image_size: int | None) -> str:
    size = _image_size(meta, image_size)
    backbone, _ = exact_backbone(state, meta)
    graph = to_onnx(backbone, size)
    difference = onnx_difference(graph, backbone, size)
    save_export(out, lambda handle: handle.write(graph))
    return f"; input (batch, 3, {size}, {size}), onnxruntime's features within {difference:.1g} of the backbone's"


def _write_integer_onnx(state: dict[str, torch.Tensor], meta: WeightsMeta, out: Path, image_size: int | None,
                        bits: str | None) -> str:
    size = _image_size(meta, image_size)
    backbone, _ = exact_backbone(state, meta)
    deployed = meta.arch
    if bits is not None:
        backbone = quantized_at(backbone, meta.arch, bits)
        deployed = meta.arch if library_and_name(meta.arch)[0] == QUANTIZED else f"{QUANTIZED}/{meta.arch}"
        deployed += f" at {bits}"
    graph, difference = to_integer_onnx(backbone, size)
    save_export(out, lambda handle: handle.write(graph))
    return (f"; {deployed} in integer convolutions, input (1, 3, {size}, {size}), ONNX Runtime's features within "
            f"{difference:.2g} of the backbone's")


def _detectron2_note(meta: WeightsMeta) -> str:
    if not meta.config:
        return ""
    data = meta.config["data"]
    return (f"; it was pretrained on inputs normalised with data.mean/std, so run detectron2 with "
            f"MODEL.PIXEL_MEAN \"{pixel_values(data['mean'])}\" MODEL.PIXEL_STD \"{pixel_values(data['std'])}\"")


def export_backbone(checkpoint: str | Path, fmt: str, out: str | Path, verify: bool = True,
                    image_size: int | None = None, width: float | None = None,
                    bits: str | None = None) -> tuple[Path, str]:
    """Write the backbone of `checkpoint` (any supported format, its digest checked with `verify`; with `width`, that
    width of a DSPNet run) as `fmt`, with `sha256sum` digests beside what it writes; returns the file (the timm
    folder) and a summary line. `image_size`: the ONNX input's side (default: the run's data.image_size, else 224);
    `bits`: onnx-int's bit-widths ('w<b>a<b>', default: a quantized backbone's own)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if bits is not None and fmt != "onnx-int":
        raise ExportError(f"--bits applies to --format onnx-int only; got --format {fmt}")
    state, meta = (read_backbone_state(checkpoint, verify=verify) if width is None
                   else width_state(checkpoint, width, verify=verify))
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
    elif fmt == "onnx":
        note = _write_onnx(state, meta, out, image_size)
    else:
        note = _write_integer_onnx(state, meta, out, image_size, bits)
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
    parser.add_argument("--width", type=float, default=None,
                        help="a DSPNet run's checkpoint: export its network at this width (one of its dspnet.widths) "
                             "as a scaled/<resnet> backbone")
    parser.add_argument("--bits", default=None,
                        help="onnx-int: w<bits>a<bits>, e.g. w8a8 or w4a4: quantize at these bit-widths (any "
                             "non-binary backbone; default: a quantized/<arch> backbone's own)")
    parser.add_argument("--image-size", type=int, default=None,
                        help=f"onnx, onnx-int: the input's side in px (default: the run's data.image_size, else "
                             f"{DEFAULT_IMAGE_SIZE})")
    parser.add_argument("--no-verify", action="store_true",
                        help="read --checkpoint even when it fails its SHA-256 digest, or is ours and has none "
                             "(files from elsewhere without a digest load anyway, with a note)")
    args = parser.parse_args(argv)
    if args.image_size is not None and args.format not in ("onnx", "onnx-int"):
        parser.error("--image-size applies to --format onnx and onnx-int only")
    if args.bits is not None and args.format != "onnx-int":
        parser.error("--bits applies to --format onnx-int only")
    try:
        _, line = export_backbone(args.checkpoint, args.format, args.out, verify=not args.no_verify,
                                  image_size=args.image_size, width=args.width, bits=args.bits)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
