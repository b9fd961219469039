"""Supervised training pieces shared by the linear probe and semi-supervised fine-tuning."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ..config.evaluators import SCHEDULES
from ..data.records import ImageBatch
from ..errors import TrainingDiverged
from ..schedule import lr_multiplier
from .knn import topk_accuracy

STEP_MILESTONES = (0.6, 0.8)  # fractions of training where step decay divides the lr by 10 (MoCo: epochs 60, 80 of 100)


def sgd_with_schedule(
    groups: list[dict], momentum: float, weight_decay: float, schedule: str, total_steps: int, warmup_steps: int = 0,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD over parameter groups (each with its own lr) and a per-step schedule: linear warm-up over
    `warmup_steps`, then step decay or cosine."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    optimizer = torch.optim.SGD(groups, momentum=momentum, weight_decay=weight_decay)
    milestones = [int(f * total_steps) for f in STEP_MILESTONES]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, total_steps, warmup_steps, schedule, milestones))
    return optimizer, scheduler


def train_classifier(
    forward: Callable[[torch.Tensor], torch.Tensor], epoch_batches: Callable[[int], Iterable],
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, epochs: int,
    device: torch.device, desc: str,
) -> float:
    """Cross-entropy training, one step per (inputs, labels) batch of each epoch; returns the last epoch's mean loss."""
    mean_loss = float("nan")
    bar = tqdm(range(epochs), desc=desc, leave=False)
    for epoch in bar:
        total, count = torch.zeros((), device=device), 0
        for inputs, labels in epoch_batches(epoch):
            labels = labels.to(device, non_blocking=True)
            loss = F.cross_entropy(forward(inputs.to(device, non_blocking=True)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.detach() * len(labels)
            count += len(labels)
        mean_loss = float(total) / max(1, count)
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(f"{desc}: loss became non-finite in epoch {epoch + 1} (learning rate too high?)")
        bar.set_postfix(loss=f"{mean_loss:.3f}", refresh=False)
    return mean_loss


@torch.no_grad()
def classification_accuracy(
    forward: Callable[[torch.Tensor], torch.Tensor], batches: Iterable, device: torch.device,
) -> dict[str, float]:
    """Top-1 and top-5 (percent) of `forward` over (inputs, labels) batches."""
    scores, labels = [], []
    for inputs, target in batches:
        scores.append(forward(inputs.to(device, non_blocking=True)).float())
        labels.append(target.to(device))
    acc = topk_accuracy(torch.cat(scores), torch.cat(labels))
    return {"top1": acc[1], "top5": acc.get(5, float("nan"))}


def image_batches(loader: Iterable[ImageBatch]) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) pairs from a loader of ImageBatch records."""
    return ((batch.images, batch.labels) for batch in loader)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter and buffer."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed_tensors(module: nn.Module, before: dict[str, torch.Tensor]) -> list[str]:
    """Names of parameters/buffers of `module` that differ from the snapshot `before`."""
    return [k for k, v in module.state_dict().items() if not torch.equal(v, before[k])]
