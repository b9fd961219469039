"""The converged linear probe against scikit-learn's logistic regression on the same wide features.

`python benchmarks/linear_probe.py [--dim 2048] [--train 60000] [--test 10000] [--device cpu]`

Features: random ReLU features of Fashion-MNIST's raw pixels, relu(pixels @ R) with a seeded Gaussian R of width
--dim (a stand-in with real labels for a ResNet-50's 2,048 features of the 60,000 training images). Measured side by
side in one run: the probe's whole protocol (the L2 grid on a validation split, then the refit), one probe fit at the
strength it chose, and scikit-learn's LogisticRegression (lbfgs, its default tolerance) at the same strength
(C = 1 / (lambda * rows)) on StandardScaler output. Prints one JSON object: times, ratios, objectives, test top-1
and how often the two classifiers predict the same class.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mochi_hvs.config.evaluators import L2_GRID  # noqa: E402
from mochi_hvs.data.datasets import labelled_splits  # noqa: E402
from mochi_hvs.evaluation.logistic import fit_logistic  # noqa: E402
from mochi_hvs.machine import machine_info  # noqa: E402
from mochi_hvs.provenance import provenance  # noqa: E402


def random_relu_features(dim: int, train: int, test: int, seed: int) -> tuple[torch.Tensor, ...]:
    """(train features, train labels, test features, test labels): relu(pixels @ R), R ~ N(0, 1/784)."""
    train_images, test_images = labelled_splits("fashion_mnist", None, train, test, seed)
    projection = torch.randn(28 * 28, dim, generator=torch.Generator().manual_seed(seed)) / 28

    def features(images) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = torch.from_numpy(images.array.reshape(len(images), -1).astype(np.float32) / 255)
        return F.relu(pixels @ projection), torch.from_numpy(images.labels.astype(np.int64))

    return (*features(train_images), *features(test_images))


def timed(fn):
    """(result, wall seconds)."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    """Run the comparison and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--train", type=int, default=60000)
    parser.add_argument("--test", type=int, default=10000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    device = torch.device(args.device)
    train, train_labels, test, test_labels = random_relu_features(args.dim, args.train, args.test, args.seed)
    train, train_labels = train.to(device), train_labels.to(device)
    protocol, protocol_s = timed(lambda: fit_logistic(train, train_labels, 10, L2_GRID, 0.1, args.seed))
    single, single_s = timed(lambda: fit_logistic(train, train_labels, 10, [protocol.l2], 0.1, args.seed))
    scaler = StandardScaler().fit(train.cpu().numpy())
    standardised = scaler.transform(train.cpu().numpy())
    reference = LogisticRegression(C=1 / (protocol.l2 * len(train)), max_iter=1000)
    _, sklearn_s = timed(lambda: reference.fit(standardised, train_labels.cpu().numpy()))
    coef = torch.from_numpy(reference.coef_)
    objective = float(F.cross_entropy(torch.from_numpy(standardised) @ coef.T + torch.from_numpy(reference.intercept_),
                                      train_labels.cpu()) + protocol.l2 / 2 * (coef ** 2).sum())
    ours = single.logits(test.to(device)).argmax(dim=1).cpu()
    theirs = torch.from_numpy(reference.predict(scaler.transform(test.numpy())))
    result = {
        "benchmark": "linear_probe", "features": f"relu(pixels @ R), R ~ N(0, 1/784), width {args.dim}",
        "train": len(train), "test": len(test), "classes": 10, "device": str(device),
        "probe_protocol_s": round(protocol_s, 2), "probe_fit_s": round(single_s, 2),
        "sklearn_fit_s": round(sklearn_s, 2), "sklearn_over_probe_fit": round(sklearn_s / single_s, 2),
        "chosen_l2": protocol.l2, "path": [vars(point) for point in protocol.path],
        "probe_top1": round(float((ours == test_labels).double().mean() * 100), 2),
        "sklearn_top1": round(float((theirs == test_labels).double().mean() * 100), 2),
        "same_prediction_pct": round(float((ours == theirs).double().mean() * 100), 2),
        "probe_objective": single.objective, "sklearn_objective": objective, "probe_converged": single.converged,
        "probe_iterations": single.iterations, "sklearn_iterations": int(reference.n_iter_.max()),
        "machine_info": machine_info(device), **provenance(device),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
