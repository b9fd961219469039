"""Linear probe of a frozen backbone: the converged probe on cached features (logistic.py), MoCo's classic protocol
(augmented images), or scikit-learn's logistic regression."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn

from ..config import Config
from ..config.evaluators import LinearSettings
from ..data.datasets import ImageSet, labelled_splits
from ..data.loader import eval_loader, supervised_loader
from ..errors import UserError
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
from .logistic import INIT_STD, LogisticFit, fit_logistic
from .pixel_cache import pixel_features
from .pixels import pixel_model, pixel_width

PROTOCOL = "lbfgs"  # the frozen-feature probe's name in result records; lines without one came from the old probe
OLD_PROTOCOL = "sgd-lr30"  # the cached SGD probe (lr 30, 100 epochs, unnormalised features) it replaced


class BackboneChanged(UserError, RuntimeError):
    """A frozen backbone's weights or BatchNorm statistics changed during a linear probe."""


def new_head(width: int, num_classes: int, device: torch.device, seed: int) -> nn.Linear:
    """A linear classifier initialised as in MoCo's linear probe, from `seed`: weights N(0, 0.01), bias 0."""
    head = nn.Linear(width, num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(seed)) * INIT_STD)
        head.bias.zero_()
    return head.to(device)


def fit_head(forward_features: Callable[[torch.Tensor], torch.Tensor], epoch_batches: Callable[[int], Iterable],
             steps_per_epoch: int, width: int, num_classes: int, settings: LinearSettings,
             device: torch.device) -> nn.Linear:
    """A new linear head trained with SGD on (inputs, labels) batches mapped through `forward_features`."""
    s = settings
    head = new_head(width, num_classes, device, s.seed)
    optimizer, scheduler = sgd_with_schedule([{"params": head.parameters(), "lr": s.lr}], s.momentum,
                                             s.weight_decay, s.schedule, s.epochs * steps_per_epoch)
    train_classifier(lambda x: head(forward_features(x)), epoch_batches, optimizer, scheduler, s.epochs, device,
                     f"linear ({s.mode})")
    return head


def fit_probe(train: torch.Tensor, train_labels: torch.Tensor, num_classes: int,
              settings: LinearSettings) -> LogisticFit:
    """The converged probe (lbfgs protocol) on frozen training features, with the eval.linear settings."""
    s = settings
    return fit_logistic(train, train_labels, num_classes, s.l2_grid, s.val_fraction, s.seed, s.max_iter,
                        s.tolerance)


def probe_metrics(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor,
                  num_classes: int, settings: LinearSettings) -> dict[str, float]:
    """Top-1/top-5 on the test features of the converged probe, and how its fit was chosen and ended."""
    fit = fit_probe(train, train_labels, num_classes, settings)
    if not fit.converged:
        print(f"warning: the linear probe did not reach eval.linear.tolerance {settings.tolerance} in "
              f"{settings.max_iter} iterations (largest gradient entry {fit.gradient:.2g}); raise "
              f"eval.linear.max_iter", file=sys.stderr)
    return {**classification_accuracy(fit.logits, [(test, test_labels)], train.device), **fit.summary()}


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
        """The probe on the raw pixels: through the classic protocol's augmented images, or (lbfgs, sklearn) on
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
        """The lbfgs or sklearn protocol on extracted (unnormalised) features."""
        if self.settings.mode == "lbfgs":
            return probe_metrics(train, train_labels, test, test_labels, self.num_classes, self.settings)
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
