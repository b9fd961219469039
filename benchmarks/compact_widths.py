"""What a compact backbone saves on a CPU: size and latency of the ResNet-18 at widths 0.75, 0.5 and 0.25 (DSPNet's
exported widths; width 0.5 is the distilled student of configs/compact/distill_fmnist.yaml) against the full
ResNet-18, as exported files and in two runtimes.

    OMP_NUM_THREADS=1 python benchmarks/compact_widths.py                  # 28 and 224 px, batches 1 and 32
    python benchmarks/compact_widths.py --sizes 28 --batches 1 --repeats 50

Each backbone is randomly initialised (size and latency do not depend on the weights), exported as the toolkit's
safetensors file and as an ONNX graph (torch.onnx.export), and timed in eval mode on random images: PyTorch eager and
ONNX Runtime (CPU execution provider, as many threads as torch uses), every model's call interleaved with the others'
so that drift hits all alike; medians over the repeats. One JSON line per (model, image size, batch), with its ratios
to the full ResNet-18 and the machine it was measured on.
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
from mochi_hvs.weights.safetensors_format import to_safetensors  # noqa: E402

MODELS = {"resnet18": ("resnet18", None), "resnet18_w0.75": ("scaled/resnet18", {"width": 0.75}),
          "resnet18_w0.5": ("scaled/resnet18", {"width": 0.5}), "resnet18_w0.25": ("scaled/resnet18", {"width": 0.25})}
FULL = "resnet18"


def onnx_session(backbone: torch.nn.Module, size: int) -> tuple[onnxruntime.InferenceSession, int]:
    """An ONNX Runtime session of the backbone's graph (a dynamic batch axis) and the graph's size in bytes."""
    program = torch.onnx.export(backbone, (torch.zeros(2, 3, size, size),), input_names=["images"],
                                output_names=["features"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                dynamo=True, verbose=False)
    graph = program.model_proto.SerializeToString()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"]), len(graph)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[28, 224])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    backbones = {name: build_backbone(arch, arch_kwargs=kwargs)[0].eval() for name, (arch, kwargs) in MODELS.items()}
    parameters = {name: sum(p.numel() for p in net.parameters()) for name, net in backbones.items()}
    file_bytes = {name: len(to_safetensors(net.state_dict())) for name, net in backbones.items()}
    for size in args.sizes:
        sessions = {name: onnx_session(net, size) for name, net in backbones.items()}
        for batch in args.batches:
            images = torch.randn(batch, 3, size, size)
            feed = {"images": images.numpy()}
            calls = {}
            for name, net in backbones.items():
                calls[f"torch/{name}"] = lambda net=net, images=images: net(images)
                calls[f"onnxruntime/{name}"] = lambda session=sessions[name][0], feed=feed: session.run(None, feed)
            with torch.inference_mode():
                seconds = interleaved_medians(calls, args.repeats, args.warmup, torch.device("cpu"))
            for name in backbones:
                torch_ms, ort_ms = 1e3 * seconds[f"torch/{name}"], 1e3 * seconds[f"onnxruntime/{name}"]
                emit({"benchmark": "compact_widths", "model": name, "arch": MODELS[name][0],
                      "arch_kwargs": MODELS[name][1] or {}, "image_size": size, "batch": batch,
                      "parameters": parameters[name], "safetensors_bytes": file_bytes[name],
                      "onnx_bytes": sessions[name][1], "torch_ms": round(torch_ms, 3),
                      "onnxruntime_ms": round(ort_ms, 3),
                      "size_ratio": round(file_bytes[name] / file_bytes[FULL], 4),
                      "torch_latency_ratio": round(seconds[f"torch/{name}"] / seconds[f"torch/{FULL}"], 4),
                      "onnxruntime_latency_ratio": round(seconds[f"onnxruntime/{name}"]
                                                         / seconds[f"onnxruntime/{FULL}"], 4),
                      "repeats": args.repeats}, "cpu")


if __name__ == "__main__":
    main()
