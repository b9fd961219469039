"""One MoCo-v2 optimisation target: keys, queries, logits against the queue, optional MoCHi negatives, InfoNCE."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .data.loader import mixed_seed
from .loss import contrastive_logits, info_nce, positive_rank_top1
from .mochi import HardNegativeMixer, mixing_metrics
from .models.moco import MoCo

# Random streams of a step (0 and 1 are the data order and the views, see data/loader.py).
STREAMS = {"shuffle": 2, "mochi": 3}


class StepRandom:
    """Independent generators for one step, one per named stream, seeded by (run seed, stream, step, rank).

    A part of the step draws only from its own stream, so switching one part on or off (or running it
    more or less often) leaves every other part's randomness unchanged, and a resumed run redraws the same.
    """

    def __init__(self, seed: int, step: int, rank: int, device: torch.device) -> None:
        self.seed, self.step, self.rank, self.device = seed, step, rank, device
        self._generators: dict[str, torch.Generator] = {}

    def __call__(self, stream: str) -> torch.Generator:
        """The generator of `stream` for this step (created on first use)."""
        if stream not in self._generators:
            seed = mixed_seed(self.seed, STREAMS[stream], self.step, self.rank)
            self._generators[stream] = torch.Generator(device=self.device).manual_seed(seed)
        return self._generators[stream]


@dataclass
class StepOutput:
    """The loss to back-propagate, the keys (and their labels) to enqueue after the update, detached metrics."""

    loss: torch.Tensor
    keys: torch.Tensor
    key_labels: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


def _mean_metrics(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: 0.5 * (a[key] + b[key]) for key in a}


class ContrastiveStep:
    """MoCo-v2 InfoNCE on a pair of views per sample (optionally symmetrised), with optional MoCHi mixing."""

    def __init__(self, model: MoCo, temperature: float, symmetric: bool,
                 mixer: HardNegativeMixer | None = None) -> None:
        self.model = model
        self.temperature = temperature
        self.symmetric = symmetric
        self.mixer = mixer

    def _direction(self, x_q: torch.Tensor, k: torch.Tensor, rng: StepRandom, mix: bool,
                   labels: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        q = self.model.query(x_q)
        queue = self.model.queue
        logits = contrastive_logits(q, k, queue.features)
        metrics = {"proxy_top1": positive_rank_top1(logits.detach())}
        if mix:
            mixed = self.mixer(q, logits[:, 1:], queue.features, rng("mochi"))
            metrics.update(mixing_metrics(logits.detach(), mixed, labels, queue.labels))
            logits = torch.cat([logits, mixed.logits.to(logits.dtype)], dim=1)
        return info_nce(logits, self.temperature), metrics

    def __call__(self, views: torch.Tensor, rng: StepRandom, labels: torch.Tensor | None = None,
                 mix: bool = False) -> StepOutput:
        """views: (B, V, C, H, W), the pair (0, 1) is trained; mix: add MoCHi negatives this step.

        labels (B,), where known, travel with the keys into the queue for analysis metrics only.
        """
        if mix and self.mixer is None:
            raise ValueError("mixing requested but the step has no HardNegativeMixer")
        x1, x2 = views[:, 0], views[:, 1]
        k2 = self.model.key(x2, rng("shuffle"))
        loss, metrics = self._direction(x1, k2, rng, mix, labels)
        keys, key_labels = k2, labels
        if self.symmetric:
            k1 = self.model.key(x1, rng("shuffle"))
            loss_21, metrics_21 = self._direction(x2, k1, rng, mix, labels)
            loss = loss + loss_21
            metrics = _mean_metrics(metrics, metrics_21)
            keys = torch.cat([k2, k1], dim=0)
            key_labels = None if labels is None else torch.cat([labels, labels], dim=0)
        return StepOutput(loss=loss, keys=keys, key_labels=key_labels, metrics={"loss": loss.detach(), **metrics})
