"""One MoCo-v2 optimisation target: the view pair (HVS-selected or not), keys, queries, logits against the
queue, optional MoCHi negatives, InfoNCE."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .data.loader import mixed_seed
from .hvs import HardViewSelector, ViewSelection
from .loss import contrastive_logits, info_nce, positive_rank_top1
from .mochi import HardNegativeMixer, mixing_metrics
from .models.moco import MoCo

# Random streams of a step (0 and 1 are the data order and the views, see data/loader.py).
STREAMS = {"shuffle": 2, "mochi": 3, "hvs": 4}


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
    per_sample: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. HVS IoUs, for histograms


def _mean_metrics(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: 0.5 * (a[key] + b[key]) for key in a}


def _view(views: torch.Tensor, index: torch.Tensor | int) -> torch.Tensor:
    """views[:, index] for one fixed view, or views[i, index[i]] for a view chosen per sample."""
    if isinstance(index, int):
        return views[:, index]
    return views[torch.arange(views.shape[0], device=views.device), index]


class ContrastiveStep:
    """MoCo-v2 InfoNCE on a pair of views per sample (optionally symmetrised), with optional MoCHi mixing
    and HVS pair selection."""

    def __init__(self, model: MoCo, temperature: float, symmetric: bool, mixer: HardNegativeMixer | None = None,
                 selector: HardViewSelector | None = None, score_with_mochi: bool = False,
                 query_encoder: nn.Module | None = None) -> None:
        """query_encoder: what trained queries go through (the DDP wrapper of model.encoder_q under torchrun)."""
        self.model = model
        self.query_encoder = query_encoder or model.encoder_q
        self.temperature = temperature
        self.symmetric = symmetric
        self.mixer = mixer
        self.selector = selector
        self.score_with_mochi = score_with_mochi

    def _keys(self, views: torch.Tensor, view: torch.Tensor | int, selection: ViewSelection | None,
              rng: StepRandom) -> torch.Tensor:
        """Keys of the given view of each sample: reused from HVS scoring when it computed them, else f_k."""
        if selection is not None and selection.keys is not None:
            return _view(selection.keys, view)
        return self.model.key(_view(views, view), rng("shuffle"))

    def _direction(self, x_q: torch.Tensor, k: torch.Tensor, rng: StepRandom, mix: bool,
                   labels: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        q = self.query_encoder(x_q)
        queue = self.model.queue
        logits = contrastive_logits(q, k, queue.features)
        metrics = {"proxy_top1": positive_rank_top1(logits.detach())}
        if mix:
            mixed = self.mixer(q, logits[:, 1:], queue.features, rng("mochi"))
            metrics.update(mixing_metrics(logits.detach(), mixed, labels, queue.labels))
            logits = torch.cat([logits, mixed.logits.to(logits.dtype)], dim=1)
        return info_nce(logits, self.temperature), metrics

    def __call__(self, views: torch.Tensor, rng: StepRandom, labels: torch.Tensor | None = None,
                 mix: bool = False, boxes: torch.Tensor | None = None, select: bool = False) -> StepOutput:
        """views: (B, V, C, H, W). Trains the pair (0, 1), or with select=True the pair HVS picks per sample.

        mix: add MoCHi negatives this step. boxes (B, V, 4): crop boxes, for HVS's IoU analysis.
        labels (B,), where known, travel with the keys into the queue for analysis metrics only.
        """
        if mix and self.mixer is None:
            raise ValueError("mixing requested but the step has no HardNegativeMixer")
        if select and (self.selector is None or boxes is None):
            raise ValueError("view selection needs a HardViewSelector and the crop boxes")
        selection, query_view, key_view = None, 0, 1
        if select:
            selection = self.selector(views, boxes, rng("hvs"), mix=mix and self.score_with_mochi)
            query_view, key_view = selection.query_view, selection.key_view
        k = self._keys(views, key_view, selection, rng)
        loss, metrics = self._direction(_view(views, query_view), k, rng, mix, labels)
        keys, key_labels = k, labels
        if self.symmetric:
            k_reverse = self._keys(views, query_view, selection, rng)
            loss_reverse, metrics_reverse = self._direction(_view(views, key_view), k_reverse, rng, mix, labels)
            loss = loss + loss_reverse
            metrics = _mean_metrics(metrics, metrics_reverse)
            keys = torch.cat([k, k_reverse], dim=0)
            key_labels = None if labels is None else torch.cat([labels, labels], dim=0)
        if selection is not None:
            metrics.update(selection.metrics)
        return StepOutput(loss=loss, keys=keys, key_labels=key_labels, metrics={"loss": loss.detach(), **metrics},
                          per_sample={} if selection is None else selection.per_sample)
