"""One MoCo-v2 optimisation target: keys, queries, logits against the queue, InfoNCE."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .loss import contrastive_logits, info_nce, positive_rank_top1
from .models.moco import MoCo


@dataclass
class StepOutput:
    """The loss to back-propagate, the keys to enqueue after the update, and detached metrics."""

    loss: torch.Tensor
    keys: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class MoCoStep:
    """MoCo-v2 on the first two views of each sample (optionally the symmetrised loss)."""

    def __init__(self, model: MoCo, temperature: float, symmetric: bool) -> None:
        self.model = model
        self.temperature = temperature
        self.symmetric = symmetric

    def _direction(self, x_q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.model.query(x_q)
        logits = contrastive_logits(q, k, self.model.queue.features)
        return info_nce(logits, self.temperature), logits

    def __call__(self, views: torch.Tensor, generator: torch.Generator | None = None) -> StepOutput:
        """views: (B, V, C, H, W); the pair (0, 1) is trained."""
        x1, x2 = views[:, 0], views[:, 1]
        k2 = self.model.key(x2, generator)
        loss, logits = self._direction(x1, k2)
        top1 = positive_rank_top1(logits.detach())
        keys = k2
        if self.symmetric:
            k1 = self.model.key(x1, generator)
            loss_21, logits_21 = self._direction(x2, k1)
            loss = loss + loss_21
            top1 = 0.5 * (top1 + positive_rank_top1(logits_21.detach()))
            keys = torch.cat([k2, k1], dim=0)
        return StepOutput(loss=loss, keys=keys, metrics={"loss": loss.detach(), "proxy_top1": top1})
