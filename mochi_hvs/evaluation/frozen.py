"""kNN and the converged linear probe of one backbone from a single feature extraction of the labelled sets."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config
from ..data.datasets import labelled_splits
from ..data.loader import eval_loader
from .features import extract_features
from .knn import knn_results
from .linear import fit_probe, probe_metrics
from .logistic import LogisticFit
from .pixels import PixelFeatures, pixel_model


@dataclass
class FrozenFeatures:
    """Unnormalised features of the labelled training images and of the test images, in dataset order."""

    train: torch.Tensor
    train_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int


class FrozenEvaluation:
    """The labelled splits of a config's dataset (full sets unless eval.knn_*_subset is set), loaded once."""

    def __init__(self, cfg: Config, device: torch.device, amp_dtype: torch.dtype | None = None) -> None:
        self.cfg = cfg
        self.device = device
        self.amp_dtype = amp_dtype
        data = cfg.data
        self.train_images, self.test_images = labelled_splits(data.name, data.root, cfg.eval.knn_train_subset,
                                                              cfg.eval.knn_test_subset, cfg.seed)

    def pixels(self) -> PixelFeatures:
        """The raw-pixel 'backbone' for this dataset."""
        return pixel_model(self.train_images, self.cfg.data.mean, self.cfg.data.std).to(self.device)

    def features(self, backbone: nn.Module) -> FrozenFeatures:
        """Extract both splits once (eval mode, nothing updated)."""
        options = dict(amp_dtype=self.amp_dtype, normalize=False)
        loaders = [eval_loader(images, self.cfg.data, self.cfg.eval.batch_size, workers=0)
                   for images in (self.train_images, self.test_images)]
        train, train_labels = extract_features(backbone, loaders[0], self.device, **options)
        test, test_labels = extract_features(backbone, loaders[1], self.device, **options)
        return FrozenFeatures(train, train_labels, test, test_labels, len(self.train_images.classes))

    def knn(self, features: FrozenFeatures) -> dict[str, float]:
        """Weighted kNN top-1/top-5 for every eval.knn_k, on L2-normalised features."""
        e = self.cfg.eval
        results = knn_results(F.normalize(features.train, dim=1), features.train_labels,
                              F.normalize(features.test, dim=1), features.test_labels, features.num_classes,
                              e.knn_ks, e.knn_temperature, e.knn_backend, e.knn_fp16)
        metrics: dict[str, float] = {}
        for result in results:
            metrics[f"k{result.k}_top1"] = result.top1
            if result.top5 is not None:
                metrics[f"k{result.k}_top5"] = result.top5
        return metrics

    def linear(self, features: FrozenFeatures) -> dict[str, float]:
        """The converged linear probe (eval.linear's lbfgs settings) on the extracted features: test top-1/top-5
        and how its fit was chosen and ended."""
        return probe_metrics(features.train, features.train_labels, features.test, features.test_labels,
                             features.num_classes, self.cfg.eval.linear)

    def linear_fit(self, features: FrozenFeatures) -> LogisticFit:
        """The classifier of the same probe as `linear` (its test logits give linear's top-1)."""
        return fit_probe(features.train, features.train_labels, features.num_classes, self.cfg.eval.linear)
