"""Weighted k-nearest-neighbour classification of frozen features (the InstDisc/MoCo monitor)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config, ConfigError
from ..data.datasets import labelled_splits
from ..data.loader import eval_loader
from .features import extract_features
from .pixel_cache import pixel_features
from .search import MAX_BLOCK, search


def knn_votes(
    neighbour_sims: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int, k: int, temperature: float,
) -> torch.Tensor:
    """Class scores (M, C) from the first k of each row's neighbours (sorted by similarity): sum of exp(sim / T)."""
    weights = (neighbour_sims[:, :k] / temperature).exp()
    scores = torch.zeros(neighbour_sims.shape[0], num_classes, device=neighbour_sims.device)
    return scores.scatter_add_(1, neighbour_labels[:, :k], weights)


def knn_scores_by_k(
    bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int, ks: Sequence[int],
    temperature: float, backend: str = "auto", fp16: bool = False, max_block: int = MAX_BLOCK,
) -> dict[int, torch.Tensor]:
    """Weighted-kNN class scores for every k in `ks`, from one search for the largest k."""
    sims, idx = search(bank, queries, max(ks), backend, fp16, max_block)
    neighbour_labels = bank_labels.to(idx.device)[idx]
    return {k: knn_votes(sims, neighbour_labels, num_classes, k, temperature) for k in ks}


def weighted_knn_scores(
    bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
    k: int, temperature: float, chunk: int = 1024, backend: str = "torch", fp16: bool = False,
) -> torch.Tensor:
    """Class scores (M, C): sum over the k most similar bank items of exp(sim / T), per class.

    Features are expected L2-normalised (similarity = dot product). Queries are processed in chunks
    of at most `chunk`, so memory stays O(chunk x N) rather than O(M x N).
    """
    return knn_scores_by_k(bank, bank_labels, queries, num_classes, [k], temperature, backend, fp16,
                           max_block=chunk * bank.shape[0])[k]


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


def knn_results(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
                num_classes: int, ks: Sequence[int], temperature: float, backend: str = "auto",
                fp16: bool = False) -> list[KnnResult]:
    """Weighted-kNN top-1/top-5 of labelled queries against a labelled bank (L2-normalised features), per k."""
    scores = knn_scores_by_k(bank, bank_labels, queries, num_classes, ks, temperature, backend, fp16)
    results = []
    for k, by_class in scores.items():
        acc = topk_accuracy(by_class, query_labels)
        results.append(KnnResult(k=k, top1=acc[1], top5=acc.get(5)))
    return results


class KnnMonitor:
    """kNN accuracy of a backbone: labelled training images as the bank, the test split as queries."""

    def __init__(self, cfg: Config, device: torch.device, amp_dtype: torch.dtype | None = None,
                 channels_last: bool = False) -> None:
        data = cfg.data
        bank, test = labelled_splits(data.name, data.root, cfg.eval.knn_train_subset, cfg.eval.knn_test_subset,
                                     cfg.seed)
        self.ks = cfg.eval.knn_ks
        if self.ks[-1] > len(bank):
            raise ConfigError(f"'eval.knn_k' = {self.ks[-1]} exceeds the kNN bank: {len(bank)} labelled training "
                              f"images of {data.name}; choose k <= {len(bank)}")
        self.num_classes = len(bank.classes)
        self.data = data
        self.batch_size = cfg.eval.batch_size
        self.bank_images, self.test_images = bank, test
        self.bank_loader = eval_loader(bank, data, cfg.eval.batch_size, workers=0)
        self.test_loader = eval_loader(test, data, cfg.eval.batch_size, workers=0)
        self.temperature = cfg.eval.knn_temperature
        self.backend = cfg.eval.knn_backend
        self.fp16 = cfg.eval.knn_fp16
        self.device = device
        self.amp_dtype = amp_dtype
        self.channels_last = channels_last

    def evaluate_all(self, backbone: nn.Module) -> list[KnnResult]:
        """Extract bank and test features with `backbone` and classify the test set, for every configured k."""
        options = dict(amp_dtype=self.amp_dtype, channels_last=self.channels_last)
        bank, bank_labels = extract_features(backbone, self.bank_loader, self.device, **options)
        test, test_labels = extract_features(backbone, self.test_loader, self.device, **options)
        return self._classify(bank, bank_labels, test, test_labels)

    def evaluate_pixels(self) -> list[KnnResult]:
        """The same evaluation of the raw pixels (L2-normalised), from features cached per dataset."""
        bank, bank_labels = pixel_features(self.bank_images, self.data, self.batch_size, self.device)
        test, test_labels = pixel_features(self.test_images, self.data, self.batch_size, self.device)
        return self._classify(F.normalize(bank, dim=1), bank_labels, F.normalize(test, dim=1), test_labels)

    def _classify(self, bank: torch.Tensor, bank_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor
                  ) -> list[KnnResult]:
        return knn_results(bank, bank_labels, test, test_labels, self.num_classes, self.ks, self.temperature,
                           self.backend, self.fp16)

    def evaluate(self, backbone: nn.Module) -> KnnResult:
        """The result for the largest configured k (the one monitored during training)."""
        return self.evaluate_all(backbone)[-1]
