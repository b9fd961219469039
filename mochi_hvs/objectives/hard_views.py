"""HVS for objectives without MoCo's method hooks: per sample, the pair of candidate views that the objective's own
loss finds hardest (Ferreira et al. select so for SimCLR, DINO and SimSiam too).

An objective that declares `Needs(pair_losses=True)` gives its step a `pair_losses(views, rng)`: for candidates
(B, V, C, H, W), losses (B, V, V) whose [i, a, b] is sample i's part of the step's loss with view a at position 0 and
view b at position 1 (terms of the whole batch, which rank no sample, left out). They are computed without gradient
and without side effect: BatchNorm updates no running statistics (`scoring`), and random draws come from HVS's own
stream (SCORING_STREAM) or from a fresh copy of the step's streams (MSBReg: the Brownian directions its step will
draw), never from the training streams themselves. They run the unwrapped modules (`unwrapped`: no DDP collective).

On a step where HVS selects (hvs.start_epoch, hvs.select_every), HardViewStep asks them (on views downscaled to
hvs.score_resolution when set), picks each sample's pair by hvs.mode (random: no scoring), moves the pair's views,
crop boxes and flips to positions 0 and 1 and calls the objective's step on them; its output gains HVS's analysis
(methods/hvs.view_choice: the IoUs of the chosen and of random pairs, the chosen and mean candidate losses). On other
steps the objective's step trains views 0 and 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from ..config import Config, objective_needs
from ..methods import ViewChoice, pick_view
from ..methods.hvs import HvsConfig, random_pairs, rescaled, select_pairs, selects, view_choice
from ..models.split_bn import side_effect_free_bn
from ..random_streams import StepRandom
from ..step import StepOutput

SCORING_STREAM = "hvs"  # scoring's draws (shuffle-BN permutations, random pairs): MoCo's HVS draws from it too


@runtime_checkable
class ScoredStep(Protocol):
    """An objective's step (objectives.base.Step) that scores every ordered pair of candidate views per sample."""

    def __call__(self, views: torch.Tensor, rng: StepRandom, **kwargs: Any) -> StepOutput:
        ...

    def pair_losses(self, views: torch.Tensor, rng: StepRandom) -> torch.Tensor:
        """Losses (B, V, V) of candidates (B, V, C, H, W): the module docstring's contract."""
        ...


def unwrapped(module: nn.Module) -> nn.Module:
    """The module a DistributedDataParallel wrapper holds (scoring forwards skip its collectives), or the module."""
    return module.module if isinstance(module, DistributedDataParallel) else module


@contextlib.contextmanager
def scoring(modules: list[nn.Module], view_slots: int) -> Iterator[None]:
    """No gradient, and BatchNorm in the modules with batch statistics per view slot (1: over all the views) that
    updates no running statistics (split_bn.side_effect_free_bn)."""
    with torch.no_grad(), side_effect_free_bn(modules, view_slots):
        yield


def packed(values: torch.Tensor | None, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor | None:
    """values (B, V, ...) of each sample's views with its pair (first, second) at positions 0 and 1: (B, 2, ...)."""
    if values is None:
        return None
    return torch.stack([pick_view(values, first), pick_view(values, second)], dim=1)


class HardViewStep:
    """An objective's step on each sample's hardest pair of candidate views by its own pair losses (module
    docstring)."""

    def __init__(self, step: ScoredStep, settings: HvsConfig) -> None:
        self.step = step
        self.settings = settings

    def __call__(self, views: torch.Tensor, rng: StepRandom, labels: torch.Tensor | None = None,
                 boxes: torch.Tensor | None = None, epoch: int = 0, step: int = 0,
                 flips: torch.Tensor | None = None, local_views: torch.Tensor | None = None,
                 local_boxes: torch.Tensor | None = None) -> StepOutput:
        """The objective's step on the chosen pairs, with HVS's metrics; on views 0 and 1 where HVS does not select."""
        local = {"local_views": local_views, "local_boxes": local_boxes}
        if not selects(self.settings, epoch, step):
            return self.step(views, rng, labels=labels, boxes=boxes, epoch=epoch, step=step, flips=flips, **local)
        if boxes is None:
            raise ValueError("HVS needs the crop boxes of the views")
        choice = self.choose(views, boxes, rng)
        pair = (choice.query_view, choice.key_view)
        out = self.step(packed(views, *pair), rng, labels=labels, boxes=packed(boxes, *pair), epoch=epoch, step=step,
                        flips=packed(flips, *pair), **local)
        return dataclasses.replace(out, metrics={**out.metrics, **choice.metrics},
                                   per_sample={**out.per_sample, **choice.per_sample})

    @torch.no_grad()
    def choose(self, views: torch.Tensor, boxes: torch.Tensor, rng: StepRandom) -> ViewChoice:
        """Each sample's pair (first role, second role) by hvs.mode, with HVS's analysis."""
        generator = rng(SCORING_STREAM)
        losses = None
        if self.settings.mode == "random":
            first, second = random_pairs(views.shape[0], views.shape[1], generator, views.device)
        else:
            losses = self.step.pair_losses(rescaled(views, self.settings.score_resolution), rng)
            first, second = select_pairs(losses, self.settings.mode)
        return view_choice(first, second, boxes, generator, losses=losses)


def selecting(cfg: Config, step: Callable[..., StepOutput]) -> Callable[..., StepOutput]:
    """The configured objective's step behind HardViewStep where hvs.enabled and the objective scores pairs itself
    (Needs.pair_losses); the step itself otherwise (MoCo-v2 selects on its own step's hooks)."""
    if not (cfg.hvs.enabled and objective_needs(cfg).pair_losses):
        return step
    if not isinstance(step, ScoredStep):
        raise TypeError(f"objective {cfg.objective!r} declares pair_losses but its step {type(step).__name__} has none")
    return HardViewStep(step, cfg.hvs)
