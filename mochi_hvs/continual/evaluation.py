"""A continual run's backbones evaluated per task: kNN and the converged linear probe of one backbone on each task's
own labelled images (its classes only, relabelled 0 to C - 1), the row R[i][.] of the accuracy matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config
from ..config.continual import TaskSpec, task_specs
from ..data.datasets import ImageSet, balanced_subset
from ..data.loader import eval_loader
from ..data.tasks import task_images
from ..evaluation.features import extract_features
from ..evaluation.knn import knn_results
from ..evaluation.linear import probe_metrics
from ..weights.loader import load_backbone_weights, read_backbone_state


def relabelled(images: ImageSet, task: TaskSpec, size: int | None, seed: int) -> ImageSet:
    """A task's labelled images, a class-balanced subset of `size` where given, labels mapped to the task's class
    order (0 to C - 1)."""
    images = images.subset(np.flatnonzero(images.labels >= 0))
    if size:
        images = images.subset(balanced_subset(images.labels, size, seed))
    order = task.classes if task.classes is not None else tuple(range(len(images.classes)))
    position = {c: i for i, c in enumerate(order)}
    labels = np.array([position[int(label)] for label in images.labels], dtype=np.int64)
    return ImageSet(labels, [images.classes[c] for c in order], images.array, images.files)


def checkpoint_backbone(path: Path, device: torch.device) -> nn.Module:
    """The query backbone a checkpoint holds, on `device`."""
    state, meta = read_backbone_state(path)
    backbone, _ = meta.architecture.build()
    load_backbone_weights(backbone, state)
    return backbone.to(device)


class TaskEvaluation:
    """The labelled sets of a continual config's tasks (eval.knn_train_subset / knn_test_subset images per task),
    loaded once each, and the evaluation of a backbone on them."""

    def __init__(self, cfg: Config, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        self.tasks = task_specs(cfg)
        self._sets: dict[int, tuple[ImageSet, ImageSet]] = {}

    def sets(self, j: int) -> tuple[ImageSet, ImageSet]:
        """Task j's labelled training and test images."""
        if j not in self._sets:
            task, e = self.tasks[j], self.cfg.eval
            self._sets[j] = (relabelled(task_images(task, "train"), task, e.knn_train_subset, e.linear.seed),
                             relabelled(task_images(task, "test"), task, e.knn_test_subset, e.linear.seed))
        return self._sets[j]

    def evaluate(self, backbone: nn.Module, j: int) -> dict[str, dict[str, float]]:
        """kNN (every eval.knn_k) and the converged linear probe of `backbone` on task j: {"knn": ..., "linear":
        ...}, top-1 in percent among other figures."""
        e = self.cfg.eval
        train, test = self.sets(j)
        features = [extract_features(backbone, eval_loader(images, self.cfg.data, e.batch_size, workers=0),
                                     self.device, normalize=False) for images in (train, test)]
        (bank, bank_labels), (queries, query_labels) = features
        classes = len(train.classes)
        ks = [k for k in e.knn_ks if k <= len(bank)]
        knn = {f"k{r.k}_top1": r.top1 for r in knn_results(F.normalize(bank, dim=1), bank_labels,
                                                          F.normalize(queries, dim=1), query_labels, classes, ks,
                                                          e.knn_temperature, e.knn_backend, e.knn_fp16)}
        linear = probe_metrics(bank, bank_labels, queries, query_labels, classes, e.linear)
        linear = {key: value for key, value in linear.items() if value == value}  # no top-5 under 5 classes (NaN)
        return {"knn": {"top1": knn[f"k{ks[-1]}_top1"], **knn}, "linear": linear}
