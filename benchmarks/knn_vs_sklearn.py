"""Our weighted kNN (Faiss and torch search) against scikit-learn's KNeighborsClassifier on the same features.

`python benchmarks/knn_vs_sklearn.py [--bank 60000] [--queries 10000] [--dim 512] [--k 200] [--repeats 3]`

Features: L2-normalised points around one random centre per class (the shape of a kNN monitor's bank:
Fashion-MNIST's 60k training images through a ResNet-18 by default). scikit-learn gets the same weighting
(exp(similarity / T), with similarity = 1 - d^2 / 2 for unit vectors under its Euclidean distance), so the
predictions must agree; the script prints one JSON object with the agreement and the times (best of
--repeats, measured side by side in this run) and their ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.neighbors import KNeighborsClassifier

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mochi_hvs.evaluation.knn import knn_scores_by_k  # noqa: E402
from mochi_hvs.machine import machine_info  # noqa: E402


def clustered_features(size: int, centres: torch.Tensor, spread: float, generator: torch.Generator
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit vectors scattered around the class centres, and their labels."""
    labels = torch.randint(0, len(centres), (size,), generator=generator)
    points = centres[labels] + spread * torch.randn(size, centres.shape[1], generator=generator) / centres.shape[1]**0.5
    return F.normalize(points, dim=1), labels


def best_time(fn, repeats: int):
    """(result of the last call, fastest wall time in seconds)."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, min(times)


def main() -> None:
    """Run the comparison and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", type=int, default=60000)
    parser.add_argument("--queries", type=int, default=10000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--spread", type=float, default=7.0, help="within-class noise (larger: harder)")
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(args.seed)
    centres = F.normalize(torch.randn(args.classes, args.dim, generator=generator), dim=1)
    bank, bank_labels = clustered_features(args.bank, centres, args.spread, generator)
    queries, query_labels = clustered_features(args.queries, centres, args.spread, generator)
    temperature = args.temperature

    def ours(backend: str):
        return lambda: knn_scores_by_k(bank, bank_labels, queries, args.classes, [args.k], temperature,
                                       backend=backend)[args.k].argmax(1)

    def sklearn_knn():
        model = KNeighborsClassifier(n_neighbors=args.k, algorithm="brute", metric="euclidean",
                                     weights=lambda d: np.exp((1.0 - d**2 / 2.0) / temperature))
        model.fit(bank.numpy(), bank_labels.numpy())
        return torch.from_numpy(model.predict(queries.numpy()))

    timings, predictions = {}, {}
    for name, fn in (("faiss", ours("faiss")), ("torch", ours("torch")), ("sklearn", sklearn_knn)):
        predictions[name], timings[name] = best_time(fn, args.repeats)
    reference = predictions["sklearn"]
    print(json.dumps({
        "benchmark": "knn_vs_sklearn",
        "setup": vars(args),
        "machine": machine_info("cpu"),
        "top1_percent": {n: round(100 * float((p == query_labels).float().mean()), 3) for n, p in predictions.items()},
        "agreement_with_sklearn": {n: float((predictions[n] == reference).float().mean()) for n in ("faiss", "torch")},
        "seconds": {n: round(t, 4) for n, t in timings.items()},
        "speedup_vs_sklearn": {n: round(timings["sklearn"] / timings[n], 2) for n in ("faiss", "torch")},
        "faiss_vs_torch": round(timings["torch"] / timings["faiss"], 2),
    }, indent=2))


if __name__ == "__main__":
    main()
