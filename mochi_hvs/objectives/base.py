"""The objective seam: an objective builds the step the training loop calls, and says how its target encoder moves.

A step is called with a batch of views and returns a StepOutput (the loss, keys to enqueue where the objective has
a queue, metrics with at least `loss` and `proxy_top1`, the collapse monitor's signal, and its trained embeddings
where it declares `trained_embeddings`). An objective that scores pairs of views itself (Needs.pair_losses) has its
step wrapped by HVS's view selection when hvs.enabled (hard_views.py), and every registered objective may wrap the
configured one's step (Objective.wrap_step: a regulariser's terms added to any objective's). The loop runs the
momentum update before the step (so that keys a method computes while scoring views are the step's keys), then
backward, the optimiser and the enqueue; it never learns which objective runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
import torch.nn as nn

from ..config import Config
from ..data.datasets import ImageSet
from ..methods import Method
from ..models.moco import MoCo
from ..random_streams import StepRandom
from ..schedule import momentum_at
from ..step import StepOutput
from ..weights.loader import load_backbone_weights, read_backbone_state
from .distillation import distilling
from .ema import TargetEma
from .hard_views import selecting
from .registry import OBJECTIVES, Declared, Forwards, declared

Wrap = Callable[[nn.Module], nn.Module]  # a trained module -> what its forward goes through (DDP under torchrun)


class Step(Protocol):
    """One training step of an objective."""

    def __call__(self, views: torch.Tensor, rng: StepRandom, labels: torch.Tensor | None = None,
                 boxes: torch.Tensor | None = None, epoch: int = 0, step: int = 0,
                 flips: torch.Tensor | None = None, local_views: torch.Tensor | None = None,
                 local_boxes: torch.Tensor | None = None) -> StepOutput:
        """views (B, V, C, H, W) with crop boxes (B, V, 4) and flips (B, V); labels (B,) where known; multi-crop's
        small crops (B, L, C, h, w) and their boxes where drawn."""
        ...


class Objective(Declared):
    """A registered objective (registry.register), built for one run's config."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def target_momentum(self, step: int, total_steps: int) -> float | None:
        """The momentum of the target encoder's update before `step` (None: no momentum encoder): the momentum and
        schedule of the objective's own section where it is a TargetEma (BYOL's `byol`), else of the shared `moco`
        section (contrastive's)."""
        if not self.needs_for(self.cfg).momentum_encoder:
            return None
        own = self.section if self.section is not None and issubclass(self.section, TargetEma) else None
        ema = self.cfg.moco if own is None else getattr(self.cfg, own.name)
        return momentum_at(step, total_steps, ema.momentum, ema.momentum_schedule)

    def forwards(self) -> Forwards:
        """Encoder image-forwards of one step per image (compute_cost.py adds the methods')."""
        raise NotImplementedError

    def check_images(self, images: ImageSet) -> None:
        """Refuse pretraining images the objective cannot train on (ConfigError); any, by default."""

    def build_step(self, model: MoCo, methods: list[Method], wrap: Wrap, num_classes: int) -> Step:
        """The step, on `model` (built from the needs, on its device; a module added here is checkpointed and
        optimised with it). Trained forwards go through wrap(module); num_classes: the pretraining images'."""
        raise NotImplementedError

    def deployed_backbone(self, checkpoint: Path) -> tuple[nn.Module, int]:
        """The backbone a finished run of this objective deploys, read from its checkpoint (what a study evaluates),
        and its feature width: the query backbone, as the evaluators and `mochi-export` read it, by default (DSPNet's:
        its network at dspnet.deploy_width)."""
        state, meta = read_backbone_state(checkpoint)
        backbone, width = meta.architecture.build()
        load_backbone_weights(backbone, state)
        return backbone, width

    def distillation_loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The objective's own loss between predictions (B, D) and frozen targets (B, D), a scalar: what predictor
        distillation scores (objectives/distillation.py; declared by `distillation`)."""
        raise NotImplementedError

    @classmethod
    def wrap_step(cls, cfg: Config, step: Step) -> Step:
        """The configured objective's step, wrapped where this objective adds terms to any objective's as a
        regulariser (MSBReg's `msbreg.regularise`); the step itself by default. Called for every registered
        objective, whichever is configured."""
        return step


def wrapped_step(cfg: Config, step: Step, model: MoCo) -> Step:
    """The configured objective's step as the loop calls it: behind HVS's view selection where the objective scores
    pairs itself (hard_views.selecting; first, as it asks the objective's own step), then passed through every
    registered objective's wrap_step in turn, and last behind predictor distillation where continual.distill is on
    (distillation.distilling: it reads every trained forward of the steps inside)."""
    step = selecting(cfg, step)
    for cls in OBJECTIVES.values():
        if issubclass(cls, Objective):
            step = cls.wrap_step(cfg, step)
    objective = objective_of(cfg)
    return distilling(cfg, step, model, objective.distillation_loss if objective.distillation else None)


def objective_of(cfg: Config) -> Objective:
    """The configured objective, built for cfg."""
    cls = declared(cfg.objective)
    if not issubclass(cls, Objective):
        raise TypeError(f"objective {cfg.objective!r} is registered without a step (an objectives.base.Objective)")
    return cls(cfg)
