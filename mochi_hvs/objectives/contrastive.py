"""MoCo-v2 (He et al. 2020; Chen et al. 2020): InfoNCE of the query against its key and a queue of past keys, the
objective the methods (MoCHi, HVS, Fast-MoCo, multi-crop, LC) plug into. Its step is step.py's ContrastiveStep and
its settings are the `moco` section."""

from __future__ import annotations

from ..methods import Method
from ..models.moco import MoCo
from ..step import ContrastiveStep
from .base import Objective, Step, Wrap
from .registry import Forwards, Needs, register


@register
class MocoV2(Objective):
    """objective: contrastive."""

    name = "contrastive"
    label = "MoCo-pretrained"
    needs = Needs(views=2, momentum_encoder=True, queue=True, methods=True)
    trained_embeddings = True  # each direction's queries (ContrastiveStep)

    def forwards(self) -> Forwards:
        """A trained query and a key per direction (two with moco.symmetric); HVS scores each candidate through the
        momentum encoder, and through the query encoder too unless hvs.scorer is momentum."""
        directions = 2 if self.cfg.moco.symmetric else 1
        return Forwards(trained=directions, target=directions, candidate=1 if self.cfg.hvs.scorer == "momentum" else 2)

    def build_step(self, model: MoCo, methods: list[Method], wrap: Wrap, num_classes: int) -> Step:
        """ContrastiveStep with the enabled methods; queries through the wrapped query encoder."""
        moco = self.cfg.moco
        return ContrastiveStep(model, moco.temperature, moco.symmetric, methods, wrap(model.encoder_q))
