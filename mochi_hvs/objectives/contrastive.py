"""MoCo-v2 (He et al. 2020; Chen et al. 2020): InfoNCE of the query against its key and a queue of past keys, the
objective the methods (MoCHi, HVS, Fast-MoCo, multi-crop, LC) plug into. Its step is step.py's ContrastiveStep and
its settings are the `moco` section (MocoConfig, registered under that key rather than the objective's name).

Other objectives share some of these keys: `moco.queue_size` sizes the queue of any objective that needs one,
`moco.shuffle_bn` shuffles the batch before any momentum encoder, and `moco.momentum` on `moco.momentum_schedule`
moves the target of an objective without a TargetEma section of its own (Objective.target_momentum).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import APPLY, Config, ObjectiveConfig, objective_needs, setting
from ..loss import batch_info_nce
from ..methods import Method
from ..models.moco import MoCo
from ..step import ContrastiveStep
from .base import Objective, Step, Wrap
from .registry import Forwards, Needs, register

MOMENTUM_SCHEDULES = ("constant", "cosine")


@dataclass
class MocoConfig(ObjectiveConfig):
    """The MoCo contrastive task."""

    queue_size: int = setting(4096, "keys in the memory queue of negatives, a multiple of optim.batch_size "
                                    "(shared: the queue of any objective that needs one)")
    momentum: float = setting(0.99, "momentum of the key encoder (shared: the target momentum of objectives without "
                                    "a TargetEma section)", bounds="[0, 1]", resume=APPLY)
    momentum_schedule: str = setting("constant", "constant, or cosine: raised towards 1.0 over training (shared as "
                                                 "moco.momentum)", MOMENTUM_SCHEDULES, resume=APPLY)
    temperature: float = setting(0.1, "temperature of the InfoNCE logits", bounds="> 0", resume=APPLY)
    symmetric: bool = setting(False, "symmetric loss: each view is the query once and the key once (two directions "
                                     "per step)")
    shuffle_bn: bool = setting(True, "shuffle the key batch before the key encoder (shared: any momentum encoder)")

    def validate(self, cfg: Config, source: str) -> None:
        """A queue that holds whole batches (two per step with the symmetric loss) where the objective has one."""
        queue, batch = objective_needs(cfg).queue, cfg.optim.batch_size
        self.check(self.queue_size > 0 and (self.queue_size % batch == 0 or not queue), source, "moco.queue_size",
                   f"must be a positive multiple of the global batch optim.batch_size={batch}; got {self.queue_size}")
        if self.symmetric and queue:  # both directions enqueue their keys
            self.check(self.queue_size >= 2 * batch, source, "moco.queue_size",
                       f"must hold the 2 x optim.batch_size={2 * batch} keys enqueued per step with moco.symmetric; "
                       f"got {self.queue_size}")


@register
class MocoV2(Objective):
    """objective: contrastive."""

    name = "contrastive"
    label = "MoCo-pretrained"
    needs = Needs(views=2, momentum_encoder=True, queue=True, methods=True)
    section = MocoConfig
    section_key = "moco"
    trained_embeddings = True  # each direction's queries (ContrastiveStep)
    distillation = "InfoNCE against the batch's other targets, at moco.temperature"

    def forwards(self) -> Forwards:
        """A trained query and a key per direction (two with moco.symmetric); HVS scores each candidate through the
        momentum encoder, and through the query encoder too unless hvs.scorer is momentum."""
        directions = 2 if self.cfg.moco.symmetric else 1
        return Forwards(trained=directions, target=directions, candidate=1 if self.cfg.hvs.scorer == "momentum" else 2)

    def build_step(self, model: MoCo, methods: list[Method], wrap: Wrap, num_classes: int) -> Step:
        """ContrastiveStep with the enabled methods; queries through the wrapped query encoder."""
        moco = self.cfg.moco
        return ContrastiveStep(model, moco.temperature, moco.symmetric, methods, wrap(model.encoder_q))

    def distillation_loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """InfoNCE of each prediction against its own target, the batch's other targets its negatives (CaSSLe's
        contrastive distillation), at moco.temperature."""
        return batch_info_nce(prediction, target, self.cfg.moco.temperature)
