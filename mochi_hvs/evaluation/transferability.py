"""Transferability estimates of one backbone from a source task to each target task (the `mochi-transferability`
command): PGE (pge.py) and, as a cheap baseline, LogME (logme.py).

Every task (NAME or NAME=ROOT, read with the evaluated checkpoint's data settings like the transfer suite's tasks)
draws two disjoint seeded class-balanced sets of eval.transferability.batches x batch_size labelled training images.
The frozen features of the first give the task's head, the converged linear probe of eval.linear fitted on them
(the probe the transfer suite measures), and its LogME score. The gradients of that head's cross-entropy w.r.t. the
backbone parameters named by eval.transferability.parameters, on the mini-batches of the second set, give its
principal gradient: images the head was not fitted on, so that a head which fits its own images perfectly does not
leave a vanishing gradient. The PGE distance of a target is the distance of its principal gradient to the source's
(none when either gradient is exactly zero). A target whose data is missing or damaged is skipped, with the reason;
a missing source is an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from ..config import Config
from ..data.datasets import DatasetError, balanced_subset, labelled_training_images
from ..data.loader import eval_loader
from .features import extract_features
from .linear import fit_probe
from .logme import logme
from .pge import chosen_parameters, expected_gradient, pge_distance
from .transfer import markdown_row, number, table_head, task_config


@dataclass
class TaskSignature:
    """What one task contributes: its expected gradient (not yet normalised) and its LogME score."""

    gradient: torch.Tensor
    logme: float


@dataclass
class TaskEstimate:
    """The estimates of one target task, or why it was skipped."""

    task: str  # as listed: NAME or NAME=ROOT
    cfg: Config  # the evaluation config with the task's dataset
    pge_distance: float | None = None  # None also when a gradient is exactly zero
    logme: float | None = None
    skipped: str | None = None

    def metrics(self) -> dict[str, float]:
        """The estimates as a result line's metrics (none for a skipped task)."""
        if self.skipped is not None:
            return {}
        return {"pge_distance": self.pge_distance, "logme": self.logme}


def task_signature(cfg: Config, backbone: nn.Module, device: torch.device) -> TaskSignature:
    """The expected gradient and LogME of `cfg`'s dataset (a task config) for `backbone`; DatasetError when its
    data is missing."""
    s = cfg.eval.transferability
    images = labelled_training_images(cfg.data.name, cfg.data.root)
    size = s.batches * s.batch_size
    fit = balanced_subset(images.labels, size, s.seed)
    rest = np.setdiff1d(np.arange(len(images)), fit)
    held_out = rest[balanced_subset(images.labels[rest], size, s.seed)]
    if len(held_out) == 0:
        raise DatasetError(f"{cfg.data.name}: {len(images)} labelled training images leave none for the gradients "
                           f"after the {len(fit)} the head is fitted on; lower eval.transferability.batches")
    fit_features, fit_labels = extract_features(
        backbone, eval_loader(images.subset(fit), cfg.data, s.batch_size, workers=0), device, normalize=False)
    head = fit_probe(fit_features, fit_labels, len(images.classes), cfg.eval.linear).logits
    parameters = [p for _, p in chosen_parameters(backbone, s.parameters)]
    loader = eval_loader(images.subset(held_out), cfg.data, s.batch_size, workers=0)
    batches = ((batch.images.to(device), batch.labels.to(device)) for batch in loader)
    gradient = expected_gradient(backbone, head, batches, parameters)
    return TaskSignature(gradient, logme(fit_features.cpu().numpy(), fit_labels.cpu().numpy()))


def estimate_transferability(cfg: Config, backbone: nn.Module, device: torch.device) -> list[TaskEstimate]:
    """PGE distance from eval.transferability.source and LogME of every target of eval.transferability.tasks."""
    s = cfg.eval.transferability
    source = task_signature(task_config(cfg, s.source), backbone, device)
    estimates = []
    for task in s.tasks:
        estimate = TaskEstimate(task, task_config(cfg, task))
        try:
            target = source if task == s.source else task_signature(estimate.cfg, backbone, device)
        except DatasetError as err:
            estimate.skipped = str(err)
        else:
            estimate.pge_distance, estimate.logme = pge_distance(source.gradient, target.gradient), target.logme
        estimates.append(estimate)
    return estimates


def estimates_table(estimates: list[TaskEstimate], source: str) -> str:
    """Markdown rows = targets: PGE distance from the source (smaller: better transfer) and LogME (larger: better)."""
    lines = table_head([f"target (source: {source})", "PGE distance", "LogME"])
    for e in estimates:
        cells = ([f"skipped: {e.skipped}", ""] if e.skipped is not None
                 else [number(e.pge_distance, digits=4), number(e.logme, digits=4)])
        lines.append(markdown_row([e.task, *cells]))
    return "\n".join(lines)
