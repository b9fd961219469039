"""What MoCHi costs: full training-step time of MoCo-v2 vs MoCHi, and top-k retrieval torch vs Faiss.

    python benchmarks/mochi_cost.py                  # both parts, CPU-sized defaults
    python benchmarks/mochi_cost.py --part retrieval --banks 16384 65536 262144 1048576

Prints one JSON line per measurement, then a summary line. Step times are medians of interleaved
repeats (MoCo-v2 and MoCHi steps alternate, same model, batch and queue size), so the overhead
ratio is measured side by side in one run.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import benchmark_trainer, bn_splits_for, emit, interleaved_medians, synthetic_batch  # noqa: E402

from mochi_hvs.queue import MemoryQueue  # noqa: E402
from mochi_hvs.retrieval import FaissTopK, TorchTopK  # noqa: E402


def step_times(args: argparse.Namespace, device: torch.device, arch: str, size: int, queue: int) -> list[dict]:
    """Interleaved step times of MoCo-v2 and of MoCHi(N, s, s') for each s', one arch and queue size."""
    common = [f"model.arch={arch}", f"optim.batch_size={args.batch}", f"moco.queue_size={queue}",
              f"model.bn_splits={bn_splits_for(args.batch)}"]
    batch = synthetic_batch(args.batch, 2, size, device)
    trainers = {"moco_v2": benchmark_trainer(common, str(device))}
    for query_mixes in args.query_mixes:
        trainers[query_mixes] = benchmark_trainer(common + [
            "mochi.enabled=true", "mochi.warmup_epochs=0", f"mochi.num_hard={args.num_hard}",
            f"mochi.num_mix={args.num_mix}", f"mochi.num_query_mix={query_mixes}"], str(device))
    medians = interleaved_medians({name: partial(t.train_step, batch) for name, t in trainers.items()},
                                  args.repeats, args.warmup, device)
    base = medians.pop("moco_v2")
    return [{"part": "step", "arch": arch, "image_size": size, "batch": args.batch, "queue": queue,
             "N": args.num_hard, "s": args.num_mix, "s_prime": query_mixes,
             "moco_v2_step_s": round(base, 4), "mochi_step_s": round(seconds, 4),
             "mochi_overhead_pct": round(100 * (seconds / base - 1), 2)} for query_mixes, seconds in medians.items()]


def step_overhead(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Training-step time of MoCo-v2 and MoCHi (N, s, s') for each arch, queue size and s'."""
    rows = []
    for arch, size in zip(args.archs, args.image_sizes, strict=True):
        for queue in args.queues:
            for row in step_times(args, device, arch, size, queue):
                emit(row, device)
                rows.append(row)
    return rows


def clustered_embeddings(count: int, dim: int, device: torch.device, clusters: int = 1000) -> torch.Tensor:
    """Unit vectors around shared random centres (fixed seed), like a trained model's embeddings of many classes."""
    generator = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(clusters, dim, generator=generator), dim=1)
    assignment = torch.randint(clusters, (count,))  # from the global stream: queries differ from the bank
    noise = torch.randn(count, dim) / dim ** 0.5
    return F.normalize(centres[assignment] + 0.6 * noise, dim=1).to(device)


def retrieval_row(args: argparse.Namespace, device: torch.device, size: int) -> dict:
    """Interleaved top-N retrieval times for one bank size: torch (with / without logits) vs Faiss flat / IVF."""
    bank = MemoryQueue(size, args.dim).to(device)
    bank.features.copy_(clustered_embeddings(size, args.dim, device))
    queries = clustered_embeddings(args.batch, args.dim, device)
    logits = queries @ bank.features.t()
    exact = logits.topk(args.num_hard, dim=1).indices
    nlist = max(16, int(size ** 0.5))
    torch_backend = TorchTopK(bank)
    faiss_backends = {"faiss_flat": FaissTopK(bank, "flat"),
                      "faiss_ivf": FaissTopK(bank, "ivf", nlist=nlist, nprobe=args.nprobe)}
    fns = {"torch_topk_on_logits": partial(torch_backend.topk, queries, args.num_hard, logits=logits),
           "torch_matmul_topk": partial(torch_backend.topk, queries, args.num_hard)}
    for name, backend in faiss_backends.items():
        backend.refresh()
        fns[name] = partial(backend.topk, queries, args.num_hard)  # refresh (the queue changed) + search
        fns[f"{name}_search_only"] = partial(backend.index.search, queries, args.num_hard)  # a static bank
    medians = interleaved_medians(fns, args.repeats, 1, device)
    ivf_found = faiss_backends["faiss_ivf"].topk(queries, args.num_hard)[1].long()
    recall = (ivf_found.unsqueeze(2) == exact.unsqueeze(1)).any(dim=2).float().mean().item()
    return {"part": "retrieval", "bank": size, "queries": args.batch, "dim": args.dim, "k": args.num_hard,
            "ivf_nlist": nlist, "ivf_nprobe": args.nprobe, "ivf_recall": round(recall, 4),
            **{f"{name}_ms": round(1000 * seconds, 2) for name, seconds in medians.items()}}


def retrieval_cost(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Top-N retrieval for a batch of queries against banks of growing size."""
    rows = []
    for size in args.banks:
        rows.append(retrieval_row(args, device, size))
        emit(rows[-1], device)
    return rows


def summary(steps: list[dict], retrieval: list[dict]) -> dict:
    """Worst overhead per arch, and for each bank size the fastest way to get this step's top-N."""
    out: dict = {"part": "summary"}
    if steps:
        out["max_mochi_overhead_pct"] = {arch: max(r["mochi_overhead_pct"] for r in steps if r["arch"] == arch)
                                         for arch in {r["arch"] for r in steps}}
    if retrieval:
        # In the MoCo step the logits exist already, so torch's cost is the top-k alone.
        out["fastest_per_step_retrieval"] = {
            r["bank"]: min(("torch_topk_on_logits", "faiss_flat", "faiss_ivf"), key=lambda n: r[f"{n}_ms"])
            for r in retrieval}
        out["fastest_static_bank_search"] = {
            r["bank"]: min(("torch_matmul_topk", "faiss_flat_search_only", "faiss_ivf_search_only"),
                           key=lambda n: r[f"{n}_ms"]) for r in retrieval}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["all", "step", "retrieval"], default="all")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--image-sizes", nargs="+", type=int, default=None,
                        help="one per arch (default: 32 and 64 on CPU, 32 and 224 on GPU)")
    parser.add_argument("--queues", nargs="+", type=int, default=[16384, 65536])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--num-hard", type=int, default=1024)
    parser.add_argument("--num-mix", type=int, default=1024)
    parser.add_argument("--query-mixes", nargs="+", type=int, default=[128, 256])
    parser.add_argument("--banks", nargs="+", type=int, default=[16384, 65536, 262144, 1048576])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.image_sizes is None:
        args.image_sizes = [32, 224 if device.type == "cuda" else 64][: len(args.archs)]
    steps = step_overhead(args, device) if args.part in ("all", "step") else []
    retrieval = retrieval_cost(args, device) if args.part in ("all", "retrieval") else []
    emit(summary(steps, retrieval), device)


if __name__ == "__main__":
    main()
