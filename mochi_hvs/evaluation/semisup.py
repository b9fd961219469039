"""Semi-supervised evaluation: fine-tune backbone + a new linear head on a small labelled subset."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn as nn

from ..config import Config, ConfigError
from ..config.evaluators import LABEL_SOURCES, SemisupSettings
from ..data.datasets import ImageSet, labelled_splits
from ..data.loader import eval_loader, supervised_loader
from ..data.subsets import fraction_subset, per_class_subset, random_subset, split_file_subset
from ..runtime import autocast
from .classifier_training import classification_accuracy, image_batches, sgd_with_schedule, train_classifier
from .linear import new_head


def labelled_subset(images: ImageSet, settings: SemisupSettings) -> np.ndarray:
    """Indices of the labelled images to fine-tune on, from exactly one of fraction, per-class count, split file or
    random count."""
    given = settings.label_sources()
    if len(given) != 1:
        keys = ", ".join(f"'eval.semisup.{name}'" for name in LABEL_SOURCES)
        raise ConfigError(f"semi-supervised evaluation needs exactly one of {keys}"
                          + (f" (got {', '.join(given)})" if given else
                             ", e.g. --set eval.semisup.label_fraction=0.01"))
    if settings.label_fraction is not None:
        return fraction_subset(images.labels, settings.label_fraction, settings.seed)
    if settings.labels_per_class is not None:
        return per_class_subset(images.labels, settings.labels_per_class, settings.seed)
    if settings.split_file is not None:
        return split_file_subset(images, settings.split_file)
    if settings.random_labels > len(images):
        raise ConfigError(f"'eval.semisup.random_labels' = {settings.random_labels} exceeds the {len(images)} labelled "
                          "training images")
    return random_subset(len(images), settings.random_labels, settings.seed)


def subset_fingerprint(indices: np.ndarray) -> str:
    """A short hash of the chosen indices, recorded with the results so subsets can be compared across runs."""
    return hashlib.sha1(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()[:12]


class SemisupFinetune:
    """Fine-tunes the backbone (in place) with a new head on the labelled subset; top-1/top-5 on the test split."""

    def __init__(self, cfg: Config, settings: SemisupSettings, device: torch.device,
                 amp_dtype: torch.dtype | None = None) -> None:
        self.cfg = cfg
        self.settings = settings
        self.device = device
        self.amp_dtype = amp_dtype
        train, self.test = labelled_splits(cfg.data.name, cfg.data.root, None, settings.test_subset, settings.seed)
        self.indices = labelled_subset(train, settings)
        self.train = train.subset(self.indices)
        self.num_classes = len(train.classes)

    def evaluate(self, backbone: nn.Module, width: int) -> dict[str, float]:
        """Fine-tune (this changes `backbone`) and return top-1/top-5 plus the subset size."""
        s = self.settings
        backbone = backbone.to(self.device).requires_grad_(True)
        head = new_head(width, self.num_classes, self.device, s.seed)
        model = nn.Sequential(backbone, head)
        loader = supervised_loader(self.train, self.cfg.data, min(s.batch_size, len(self.train)), s.seed)
        groups = [{"params": backbone.parameters(), "lr": s.lr_backbone},
                  {"params": head.parameters(), "lr": s.lr_head}]
        optimizer, scheduler = sgd_with_schedule(groups, s.momentum, s.weight_decay, s.schedule, s.epochs * len(loader),
                                                 round(s.warmup_epochs * len(loader)))

        def forward(images: torch.Tensor) -> torch.Tensor:
            with autocast(self.device, self.amp_dtype):
                return model(images).float()

        model.train()
        train_classifier(forward, lambda _: image_batches(loader), optimizer, scheduler, s.epochs, self.device,
                         "semi-supervised")
        model.eval()
        test_batches = image_batches(eval_loader(self.test, self.cfg.data, self.cfg.eval.batch_size))
        metrics = classification_accuracy(forward, test_batches, self.device)
        return {**metrics, "labelled_images": len(self.indices)}
