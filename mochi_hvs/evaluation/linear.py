"""Linear probe of a frozen backbone: the classic protocol (augmented images), or fast on cached features."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn as nn

from ..config import Config
from ..data.datasets import ImageSet, labelled_splits
from ..data.loader import eval_loader, supervised_loader
from ..errors import UserError
from ..evaluator_settings import LinearSettings
from ..runtime import autocast
from .classifier_training import (
    changed_tensors,
    classification_accuracy,
    image_batches,
    sgd_with_schedule,
    snapshot,
    train_classifier,
)
from .features import extract_features
from .knn import topk_accuracy
from .pixel_cache import pixel_features
from .pixels import pixel_model, pixel_width


class BackboneChanged(UserError, RuntimeError):
    """A frozen backbone's weights or BatchNorm statistics changed during a linear probe."""


def new_head(width: int, num_classes: int, device: torch.device) -> nn.Linear:
    """A linear classifier initialised as in MoCo's linear probe: weights N(0, 0.01), bias 0."""
    head = nn.Linear(width, num_classes).to(device)
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    return head


def _feature_batches(features: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int, epoch: int
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled mini-batches of cached features (one batch of everything when batch_size is 0)."""
    size = batch_size or len(labels)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    order = order.to(features.device)
    for start in range(0, len(labels), size):
        rows = order[start:start + size]
        yield features[rows], labels[rows]


def fit_head(forward_features: Callable[[torch.Tensor], torch.Tensor], epoch_batches: Callable[[int], Iterable],
             steps_per_epoch: int, width: int, num_classes: int, settings: LinearSettings,
             device: torch.device) -> nn.Linear:
    """A new linear head trained with SGD on (inputs, labels) batches mapped through `forward_features`."""
    s = settings
    head = new_head(width, num_classes, device)
    optimizer, scheduler = sgd_with_schedule([{"params": head.parameters(), "lr": s.lr}], s.momentum,
                                             s.weight_decay, s.schedule, s.epochs * steps_per_epoch)
    train_classifier(lambda x: head(forward_features(x)), epoch_batches, optimizer, scheduler, s.epochs, device,
                     f"linear ({s.mode})")
    return head


STD_FLOOR = 1e-6  # features constant over the training set (e.g. always-zero ReLU outputs) are only centred


def cached_settings(settings: LinearSettings) -> LinearSettings:
    """The linear-probe settings in cached mode (what the frozen-feature evaluators train on extracted features)."""
    return dataclasses.replace(settings, mode="cached")


def cached_classifier(train: torch.Tensor, train_labels: torch.Tensor, num_classes: int, settings: LinearSettings,
                      device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The cached protocol's classifier, features -> logits: a linear head trained on features extracted once
    (unnormalised, dataset order); with `standardize`, each feature is first shifted and scaled by its mean and
    standard deviation over the training set, so that one learning rate fits raw pixels, random and trained
    backbones alike."""
    s = settings
    if s.standardize:
        mean, std = train.mean(dim=0), train.std(dim=0).clamp_min(STD_FLOOR)
        train = (train - mean) / std
    steps = -(-len(train_labels) // (s.batch_size or len(train_labels)))
    head = fit_head(lambda x: x, lambda epoch: _feature_batches(train, train_labels, s.batch_size, s.seed, epoch),
                    steps, train.shape[1], num_classes, settings, device)
    return (lambda x: head((x - mean) / std)) if s.standardize else head


def cached_probe(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor,
                 num_classes: int, settings: LinearSettings, device: torch.device) -> dict[str, float]:
    """Top-1/top-5 on the test features of the cached protocol's classifier (cached_classifier)."""
    classifier = cached_classifier(train, train_labels, num_classes, settings, device)
    return classification_accuracy(classifier, [(test, test_labels)], device)


class LinearProbe:
    """Trains a linear classifier on a frozen backbone and reports top-1/top-5 on the test split."""

    def __init__(self, cfg: Config, settings: LinearSettings, device: torch.device,
                 amp_dtype: torch.dtype | None = None) -> None:
        self.cfg = cfg
        self.settings = settings
        self.device = device
        self.amp_dtype = amp_dtype
        self.train, self.test = labelled_splits(cfg.data.name, cfg.data.root, settings.train_subset,
                                                settings.test_subset, settings.seed)
        self.num_classes = len(self.train.classes)

    def evaluate(self, backbone: nn.Module, width: int) -> dict[str, float]:
        """Top-1/top-5 of the probe; raises BackboneChanged if any backbone tensor moved."""
        backbone = backbone.to(self.device).eval().requires_grad_(False)
        before = snapshot(backbone)
        if self.settings.mode == "classic":
            metrics = self._classic(backbone, width)
        else:
            metrics = self._on_features(*self._features(backbone))
        changed = changed_tensors(backbone, before)
        if changed:
            raise BackboneChanged(f"linear probe changed {len(changed)} backbone tensors, e.g. {changed[:3]}")
        return metrics

    def evaluate_pixels(self) -> dict[str, float]:
        """The probe on the raw pixels: through the classic protocol's augmented images, or (cached, sklearn) on
        pixel features cached per dataset."""
        if self.settings.mode == "classic":
            pixels = pixel_model(self.train, self.cfg.data.mean, self.cfg.data.std)
            return self.evaluate(pixels, pixel_width(self.cfg.data.image_size, pixels.channels))
        batch = self.cfg.eval.batch_size
        return self._on_features(*pixel_features(self.train, self.cfg.data, batch, self.device),
                                 *pixel_features(self.test, self.cfg.data, batch, self.device))

    def _loader(self, images: ImageSet):
        return eval_loader(images, self.cfg.data, self.cfg.eval.batch_size)

    def _classic(self, backbone: nn.Module, width: int) -> dict[str, float]:
        loader = supervised_loader(self.train, self.cfg.data, self.settings.batch_size, self.settings.seed)

        def frozen_features(images: torch.Tensor) -> torch.Tensor:
            with torch.no_grad(), autocast(self.device, self.amp_dtype):
                return backbone(images).float()

        head = fit_head(frozen_features, lambda _: image_batches(loader), len(loader), width, self.num_classes,
                        self.settings, self.device)
        test_batches = image_batches(self._loader(self.test))
        return classification_accuracy(lambda x: head(frozen_features(x)), test_batches, self.device)

    def _features(self, backbone: nn.Module) -> tuple[torch.Tensor, ...]:
        options = dict(amp_dtype=self.amp_dtype, normalize=False)
        train = extract_features(backbone, self._loader(self.train), self.device, **options)
        test = extract_features(backbone, self._loader(self.test), self.device, **options)
        return (*train, *test)

    def _on_features(self, train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor,
                     test_labels: torch.Tensor) -> dict[str, float]:
        """The cached or sklearn protocol on extracted (unnormalised) features."""
        if self.settings.mode == "cached":
            return cached_probe(train, train_labels, test, test_labels, self.num_classes, self.settings, self.device)
        return self._sklearn(train, train_labels, test, test_labels)

    def _sklearn(self, train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor,
                 test_labels: torch.Tensor) -> dict[str, float]:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        model = make_pipeline(StandardScaler(), LogisticRegression(C=self.settings.sklearn_c,
                                                                   max_iter=self.settings.sklearn_max_iter))
        model.fit(train.cpu().numpy(), train_labels.cpu().numpy())
        scores = np.zeros((len(test_labels), self.num_classes), dtype=np.float32)
        scores[:, model.classes_] = model.predict_proba(test.cpu().numpy())
        acc = topk_accuracy(torch.from_numpy(scores), test_labels.cpu())
        return {"top1": acc[1], "top5": acc.get(5, float("nan"))}
