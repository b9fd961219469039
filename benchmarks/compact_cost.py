"""What the low-bit compact backbones cost to deploy: CPU latency and file size of their integer ONNX graphs in ONNX
Runtime against the full-precision ResNet-18's float graph, side by side.

    OMP_NUM_THREADS=1 python benchmarks/compact_cost.py                 # 28 px (the embedded data) and 224 px
    python benchmarks/compact_cost.py --sizes 28 --repeats 21 --threads 2

Graphs (weights/integer_onnx.py; random weights with settled BatchNorm statistics, which latency and size do not
depend on): `full` the float graph of resnet18 (onnx_format.to_onnx), `w8a8` and `w4a4` the integer graphs of
quantized/resnet18 at those bit-widths (SSQL's, or post-training quantization's), `binary` binary/resnet18's (BURN's).
One image per call (the batch size at which the integer graphs compute their trained activation grid), calls
interleaved (full w8a8 w4a4 binary full ...) so that clock drift hits all alike; medians of the repeats. Each line
names the machine; ratios are against `full`. Sizes are the serialised graphs' bytes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnxruntime
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import emit, interleaved_medians  # noqa: E402

from mochi_hvs.models.backbone import build_backbone  # noqa: E402
from mochi_hvs.weights.integer_onnx import INPUT, OUTPUT, to_integer_onnx  # noqa: E402
from mochi_hvs.weights.onnx_format import to_onnx  # noqa: E402

GRAPHS = {"w8a8": ("quantized/resnet18", {"weight_bits": 8, "act_bits": 8}),
          "w4a4": ("quantized/resnet18", {"weight_bits": 4, "act_bits": 4}),
          "binary": ("binary/resnet18", {})}


def settled(arch: str, kwargs: dict, size: int) -> torch.nn.Module:
    """A seeded backbone whose BatchNorm running statistics moved off their initial values, in eval mode."""
    torch.manual_seed(0)
    net = build_backbone(arch, False, kwargs)[0].train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(8, 3, size, size))
    return net.eval()


def graphs(size: int) -> dict[str, bytes]:
    """The float graph of resnet18 and the integer graphs of the compact backbones at `size` px."""
    out = {"full": to_onnx(settled("resnet18", {}, size), size)}
    for name, (arch, kwargs) in GRAPHS.items():
        out[name] = to_integer_onnx(settled(arch, kwargs, size), size)[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[28, 224])
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    args = parser.parse_args()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = args.threads
    for size in args.sizes:
        built = graphs(size)
        image = torch.randn(1, 3, size, size).numpy()
        sessions = {name: onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
                    for name, graph in built.items()}
        calls = {name: (lambda session=session, image=image: session.run([OUTPUT], {INPUT: image})) for name, session in
                 sessions.items()}
        seconds = interleaved_medians(calls, args.repeats, args.warmup, torch.device("cpu"))
        for name in built:
            emit({"benchmark": "compact_cost", "graph": name, "image_size": size, "batch": 1,
                  "threads": args.threads, "repeats": args.repeats, "median_ms": round(1000 * seconds[name], 3),
                  "latency_ratio": round(seconds[name] / seconds["full"], 3), "bytes": len(built[name]),
                  "size_ratio": round(len(built[name]) / len(built["full"]), 3),
                  "onnxruntime": onnxruntime.__version__}, "cpu")


if __name__ == "__main__":
    main()
