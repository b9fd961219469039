"""Weighted k-nearest-neighbour classification of frozen features (the InstDisc/MoCo monitor)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from ..config import Config
from ..data.datasets import balanced_subset, load_images
from ..data.loader import eval_loader
from .features import extract_features


def weighted_knn_scores(
    bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
    k: int, temperature: float, chunk: int = 1024,
) -> torch.Tensor:
    """Class scores (M, C): sum over the k most similar bank items of exp(sim / T), per class.

    Features are expected L2-normalised (similarity = dot product). Queries are processed in chunks
    so memory stays O(chunk x N) rather than O(M x N).
    """
    k = min(k, bank.shape[0])
    scores = torch.zeros(queries.shape[0], num_classes, device=queries.device)
    for start in range(0, queries.shape[0], chunk):
        sim = queries[start:start + chunk] @ bank.t()
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        scores[start:start + chunk].scatter_add_(1, bank_labels[top_idx], weights)
    return scores


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Percentage of rows whose label is among the top-k scored classes, for each k."""
    ranked = scores.argsort(dim=1, descending=True)
    hits = ranked == labels[:, None]
    return {k: 100.0 * hits[:, :k].any(dim=1).float().mean().item() for k in ks if k <= scores.shape[1]}


@dataclass
class KnnResult:
    """Top-1 and top-5 (percent) for one k."""

    k: int
    top1: float
    top5: float | None


class KnnMonitor:
    """kNN accuracy of a backbone: labelled training images as the bank, the test split as queries."""

    def __init__(self, cfg: Config, device: torch.device, amp_dtype: torch.dtype | None = None,
                 channels_last: bool = False) -> None:
        data = cfg.data
        bank = load_images(data.name, data.root, "train")
        test = load_images(data.name, data.root, "test")
        labelled = np.flatnonzero(bank.labels >= 0)
        bank = bank.subset(labelled)
        if cfg.eval.knn_train_subset:
            bank = bank.subset(balanced_subset(bank.labels, cfg.eval.knn_train_subset, cfg.seed))
        if cfg.eval.knn_test_subset:
            test = test.subset(balanced_subset(test.labels, cfg.eval.knn_test_subset, cfg.seed))
        self.num_classes = len(bank.classes)
        self.bank_loader = eval_loader(bank, data, cfg.eval.batch_size, workers=0)
        self.test_loader = eval_loader(test, data, cfg.eval.batch_size, workers=0)
        self.k = cfg.eval.knn_k
        self.temperature = cfg.eval.knn_temperature
        self.device = device
        self.amp_dtype = amp_dtype
        self.channels_last = channels_last

    def evaluate(self, backbone: nn.Module) -> KnnResult:
        """Extract bank and test features with `backbone` and classify the test set."""
        options = dict(amp_dtype=self.amp_dtype, channels_last=self.channels_last)
        bank, bank_labels = extract_features(backbone, self.bank_loader, self.device, **options)
        test, test_labels = extract_features(backbone, self.test_loader, self.device, **options)
        scores = weighted_knn_scores(bank, bank_labels, test, self.num_classes, self.k, self.temperature)
        acc = topk_accuracy(scores, test_labels)
        return KnnResult(k=self.k, top1=acc[1], top5=acc.get(5))
