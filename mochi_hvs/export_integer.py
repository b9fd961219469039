"""`python -m mochi_hvs.export_integer`: a compact backbone as an ONNX graph with integer convolutions that ONNX
Runtime executes (weights/integer_onnx.py): a quantized/<arch> or binary/<resnet> backbone as trained, or any
backbone quantized after training at --bits (post-training quantization)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch.nn as nn

from .errors import UserError
from .models.arch import BINARY, QUANTIZED, library_and_name
from .models.backbone import build_backbone
from .models.fake_quant import deploy_at, make_quantizable
from .weights.atomic import write_atomic
from .weights.integer_onnx import deployment_bits, integer_difference, to_integer_onnx
from .weights.loader import load_backbone_weights, read_backbone_state


def stored_arch(config: dict[str, Any] | None, inferred: str) -> tuple[str, dict[str, Any], int | None]:
    """(model.arch, model.arch_kwargs, data.image_size) of the run that wrote a weights file; the loader's inferred
    architecture and nothing else for a file without a config."""
    model, data = (config or {}).get("model") or {}, (config or {}).get("data") or {}
    return model.get("arch", inferred), dict(model.get("arch_kwargs") or {}), data.get("image_size")


def compact_backbone(path: str, bits: str | None, verify: bool = True) -> tuple[nn.Module, int | None, str]:
    """The backbone of a weights file, in eval mode, at `bits` ('w<b>a<b>': its deployment bit-widths, any arch
    quantized after training) or as trained; the image size its run trained at; what was read, in words."""
    state, meta = read_backbone_state(path, verify=verify)
    arch, kwargs, image_size = stored_arch(meta.config, meta.arch)
    backbone, _ = build_backbone(arch, meta.small_stem, kwargs)
    load_backbone_weights(backbone, state)
    if bits is not None:
        if library_and_name(arch)[0] == BINARY:
            raise UserError(f"--bits: {arch} is binary; its convolutions have no bit-widths to choose")
        try:
            chosen = deployment_bits(bits)
        except ValueError as err:
            raise UserError(f"--bits: {err}") from err
        make_quantizable(backbone)
        deploy_at(backbone, chosen)
        arch = arch if library_and_name(arch)[0] == QUANTIZED else f"{QUANTIZED}/{arch}"
    return backbone.eval(), image_size, f"{meta.summary()}; {arch}{f' at {bits}' if bits else ''}"


def main(argv: list[str] | None = None) -> int:
    """Command line; user errors print one line and exit with status 2."""
    parser = argparse.ArgumentParser(prog="python -m mochi_hvs.export_integer", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="our checkpoint or exported backbone (any format the "
                                                            "loader reads)")
    parser.add_argument("--out", required=True, help="output .onnx file")
    parser.add_argument("--bits", help="w<bits>a<bits>, e.g. w8a8 or w4a4: quantize at these bit-widths (any "
                                       "non-binary backbone; default: a quantized/<arch> backbone's own)")
    parser.add_argument("--image-size", type=int, help="side of the images the graph is checked on (default: the "
                                                       "run's data.image_size)")
    parser.add_argument("--no-verify", action="store_true", help="read --checkpoint even when it fails its SHA-256 "
                                                                 "digest")
    args = parser.parse_args(argv)
    try:
        backbone, image_size, read = compact_backbone(args.checkpoint, args.bits, verify=not args.no_verify)
        size = args.image_size or image_size
        if size is None:
            raise UserError("--image-size: the file records no run config; give the image side")
        graph = to_integer_onnx(backbone, size)
        out = write_atomic(Path(args.out), lambda handle: handle.write(graph))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{read}: wrote {out} ({len(graph) / 2 ** 20:.1f} MiB), ONNX Runtime matches the backbone within "
          f"{integer_difference(graph, backbone, size):.2g} of its features' magnitude")
    return 0


if __name__ == "__main__":
    sys.exit(main())
