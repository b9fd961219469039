"""`python -m mochi_hvs.export_integer`: a compact backbone as an ONNX graph with integer convolutions that ONNX
Runtime executes (weights/integer_onnx.py): a quantized/<arch> or binary/<resnet> backbone as trained, or any
backbone quantized after training at --bits (post-training quantization)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch.nn as nn

from .errors import UserError
from .models.arch import BINARY, QUANTIZED, library_and_name
from .models.fake_quant import deploy_at, make_quantizable
from .weights.export import DEFAULT_IMAGE_SIZE, save_export
from .weights.integer_onnx import deployment_bits, to_integer_onnx
from .weights.loader import exact_backbone, read_backbone_state


def compact_backbone(path: str, bits: str | None, verify: bool = True) -> tuple[nn.Module, int, str]:
    """The backbone of a weights file, in eval mode, at `bits` ('w<b>a<b>': its deployment bit-widths, any arch
    quantized after training) or as trained; the image size its run trained at (224 without a run config); what
    was read, in words."""
    state, meta = read_backbone_state(path, verify=verify)
    backbone, _ = exact_backbone(state, meta)
    arch = meta.architecture.arch
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
    size = ((meta.config or {}).get("data") or {}).get("image_size") or DEFAULT_IMAGE_SIZE
    return backbone.eval(), size, f"{meta.summary()}; {arch}{f' at {bits}' if bits else ''}"


def main(argv: list[str] | None = None) -> int:
    """Command line; user errors print one line and exit with status 2."""
    parser = argparse.ArgumentParser(prog="python -m mochi_hvs.export_integer", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="our checkpoint or exported backbone (any format the "
                                                            "loader reads)")
    parser.add_argument("--out", required=True, help="output .onnx file (its SHA-256 digest is written beside it)")
    parser.add_argument("--bits", help="w<bits>a<bits>, e.g. w8a8 or w4a4: quantize at these bit-widths (any "
                                       "non-binary backbone; default: a quantized/<arch> backbone's own)")
    parser.add_argument("--image-size", type=int, help="side of the images the graph is checked on (default: the "
                                                       f"run's data.image_size, else {DEFAULT_IMAGE_SIZE})")
    parser.add_argument("--no-verify", action="store_true", help="read --checkpoint even when it fails its SHA-256 "
                                                                 "digest")
    args = parser.parse_args(argv)
    try:
        backbone, image_size, read = compact_backbone(args.checkpoint, args.bits, verify=not args.no_verify)
        size = args.image_size or image_size
        graph, difference = to_integer_onnx(backbone, size)
        out = save_export(Path(args.out), lambda handle: handle.write(graph))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{read}: wrote {out} ({len(graph) / 2 ** 20:.1f} MiB), ONNX Runtime matches the backbone within "
          f"{difference:.2g} of its features' magnitude")
    return 0


if __name__ == "__main__":
    sys.exit(main())
