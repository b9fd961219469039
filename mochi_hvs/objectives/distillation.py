"""Predictor distillation across tasks (CaSSLe: Fini et al., "Self-Supervised Models are Continual Learners", CVPR
2022), continual.distill: any objective with a distillation loss, MoCo-v2's and BYOL's.

At the first step of task t >= 1 the current encoder (backbone and projector, f_q) is copied and frozen as the
previous one; from then on, every image forward the objective's step makes through f_q with gradient (views
x: z_t = g(f(x)), the unnormalised projection) is also passed through the frozen copy (z_{t-1}, eval mode, no
gradient), and a predictor h (mlp_bn, D -> continual.predictor_hidden -> D) maps z_t to it:

    loss = step loss + continual.distill_weight x mean over the step's f_q forwards of L(h(z_t), z_{t-1})

with L the objective's own loss (Objective.distillation_loss): for MoCo-v2 InfoNCE of h(z_t) against z_{t-1} with
the batch's other z_{t-1} as negatives, at moco.temperature; for BYOL the regression 2 - 2 cos(h(z_t), z_{t-1}).
Gradients reach h and f_q; the frozen copy gets none. The copy, h and the task the copy was taken at live on the
model (`MoCo.distillation`), so that checkpoints carry them and a resume continues exactly. During task 0 there is
nothing to distil from and the term is absent (h stays at its initialisation).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn

from ..config import Config
from ..models.head import projection_head
from ..models.moco import EncoderOutput, MoCo
from ..random_streams import StepRandom
from ..step import StepOutput

Step = Callable[..., StepOutput]  # an objective's step (objectives/base.Step)

DistillationLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (h(z_t), z_{t-1}) -> scalar


class Distillation(nn.Module):
    """The frozen previous encoder, the predictor h, and `task`: the task the copy was taken at (0: none yet)."""

    def __init__(self, encoder: nn.Module, dim: int, hidden: int) -> None:
        super().__init__()
        self.previous = copy.deepcopy(encoder).requires_grad_(False)
        self.predictor = projection_head(dim, dim, "mlp_bn", hidden)
        self.register_buffer("task", torch.zeros((), dtype=torch.long))

    def freeze_current(self, encoder: nn.Module, task: int) -> None:
        """Copy the current encoder's weights and buffers into the frozen one, taken at `task`."""
        self.previous.load_state_dict(encoder.state_dict())
        self.task.fill_(task)

    @torch.no_grad()
    def target(self, x: torch.Tensor) -> torch.Tensor:
        """z_{t-1}: the frozen encoder's projection of x (eval mode: its BatchNorm statistics stay as taken)."""
        self.previous.eval()
        return self.previous(x).projection


@contextlib.contextmanager
def recording(encoder: nn.Module) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Within the block, every forward of `encoder` with gradient appends (input x, its projection z) to the list."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: EncoderOutput) -> None:
        if out.projection is not None and out.projection.requires_grad and kwargs.get("combine") is None:
            seen.append((args[0], out.projection))

    handle = encoder.register_forward_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


class DistillingStep:
    """An objective's step with the distillation term (module docstring) added from task 1 on."""

    def __init__(self, step: Step, model: MoCo, loss: DistillationLoss, steps_per_task: int, weight: float) -> None:
        self.step = step
        self.model = model
        self.loss = loss
        self.steps_per_task = steps_per_task
        self.weight = weight

    def __call__(self, views: torch.Tensor, rng: StepRandom, *args: Any, **kwargs: Any) -> StepOutput:
        """The wrapped step's output; from task 1 on its loss (and `loss` metric) with the weighted term added and the
        term as the `distill` metric."""
        distillation: Distillation = self.model.distillation
        task = kwargs.get("step", args[3] if len(args) > 3 else 0) // self.steps_per_task
        if task > int(distillation.task):  # the first step of a task: the encoder as it ended the last one
            distillation.freeze_current(self.model.encoder_q, task)
        if task == 0:
            return self.step(views, rng, *args, **kwargs)
        with recording(self.model.encoder_q) as seen:
            out = self.step(views, rng, *args, **kwargs)
        term = torch.stack([self.loss(distillation.predictor(z), distillation.target(x)) for x, z in seen]).mean()
        loss = out.loss + self.weight * term
        return dataclasses.replace(out, loss=loss, metrics={**out.metrics, "loss": loss.detach(),
                                                            "distill": term.detach()})


def distilling(cfg: Config, step: Step, model: MoCo, loss: DistillationLoss | None) -> Step:
    """The step behind predictor distillation where continual.distill is on (the model gets its `distillation`:
    optimised and checkpointed with it); the step itself otherwise. loss: the objective's distillation loss."""
    c = cfg.continual
    if not (c.enabled and c.distill):
        return step
    if loss is None:
        raise ValueError(f"objective {cfg.objective} has no distillation loss")  # config validation refuses it
    device = next(model.parameters()).device
    model.distillation = Distillation(model.encoder_q, cfg.model.feature_dim, c.predictor_hidden).to(device)
    return DistillingStep(step, model, loss, c.steps_per_task, c.distill_weight)
