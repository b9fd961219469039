"""DSPNet (Wang, Li, Gao, Li & Hu, "DSPNet: Towards Slimmable Pretrained Networks based on Discriminative
Self-supervised Learning", 2022), objective: dspnet. One pretraining gives networks of several widths, each a
good initialisation, by combining self-supervised learning with in-place distillation from the widest network
(slimmable networks' in-place distillation, Yu & Huang, "Universally Slimmable Networks", ICCV 2019).

The model's ResNet is slimmable (models/slimmable.py): at width w every layer uses its first w x channels (shared
weights) with BatchNorm layers of its own for that width. Each step:

- the widest network (width 1) is trained with MoCo-v2 (the `moco` section: queue, momentum encoder, temperature,
  symmetric loss, shuffle-BN), exactly MoCo-v2's step;
- each narrower width w in `dspnet.widths` encodes the same query view, and its logits over the same key and queue,
  [q_w . k, q_w . queue], are trained to give the widest network's distribution over them:
  KL(softmax(l_1 / T) || softmax(l_w / T)), averaged over the batch, where l_1 are the widest query's logits without
  gradient (the targets come from the widest network and nothing flows back into them) and T is
  `dspnet.distill_temperature` (null: moco.temperature);
- loss = MoCo-v2's loss + `dspnet.distill_weight` x the sum over narrower widths (and over both directions with the
  symmetric loss) of their distillation terms.

Our reading where the paper's text was not at hand: the distillation matches the widest network's distribution over
the MoCo key and queue (a discriminative SSL's output), every width is trained at every step (slimmable networks'
fixed widths, not universally slimmable networks' sampled ones), and the projection head is slimmed with the
backbone (its output, the embedding, keeps its size).

The checkpoint's backbone is the widest network (what the evaluators and `mochi-export` read); each width exports as
a plain `scaled/<resnet>` backbone with `python -m mochi_hvs.export`. `dspnet.deploy_width` names the
width a study evaluates of the run (Objective.deployed_backbone).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config, ObjectiveConfig, setting
from ..loss import contrastive_logits, positive_rank_top1
from ..methods import Method
from ..models.arch import RESNETS
from ..models.moco import MoCo
from ..models.slimmable import SlimmableEncoder, SwitchableNorms
from ..random_streams import StepRandom
from ..step import ContrastiveStep, StepOutput
from ..weights.width_export import width_backbone
from .base import Objective, Step, Wrap
from .registry import Forwards, Needs, register

WIDEST = 1.0
CHANNEL_UNIT = 64  # every channel count of the project's ResNets is a multiple of it


@dataclass
class DspnetConfig(ObjectiveConfig):
    """DSPNet: the widths trained together, and the in-place distillation of the narrower ones from the widest."""

    widths: list[float] = setting([0.25, 0.5, 0.75, 1.0], "the widths trained together, 1 among them (each a multiple "
                                                          "of 1/64: whole channels in every layer)")
    distill_weight: float = setting(1.0, "factor on the narrower widths' distillation terms, added to MoCo-v2's loss",
                                    bounds="> 0")
    distill_temperature: float | None = setting(None, "T of the distillation's softmaxes; null: moco.temperature",
                                                bounds="> 0")
    deploy_width: float = setting(1.0, "the width of the run a study evaluates (one of the widths); the checkpoint's "
                                       "backbone is the widest either way")

    @property
    def narrower(self) -> list[float]:
        """The widths below 1, widest first."""
        return sorted((w for w in self.widths if w != WIDEST), reverse=True)

    def validate(self, cfg: Config, source: str) -> None:
        """Distinct widths in (0, 1], 1 among them, each leaving whole channels; a deploy width among the widths; with
        objective=dspnet, one of the project's ResNets."""
        widths = self.widths
        self.check(bool(widths) and len(set(widths)) == len(widths) and all(0 < w <= 1 for w in widths)
                   and WIDEST in widths, source, "dspnet.widths",
                   f"must be distinct widths in (0, 1] with 1 (the widest network) among them; got {widths}")
        uneven = [w for w in widths if not math.isclose(w * CHANNEL_UNIT, round(w * CHANNEL_UNIT), abs_tol=1e-6)]
        self.check(not uneven, source, "dspnet.widths",
                   f"must be multiples of 1/{CHANNEL_UNIT} (whole channels in every layer); got {uneven[:1]}")
        self.check(self.deploy_width in widths, source, "dspnet.deploy_width",
                   f"must be one of dspnet.widths {widths}; got {self.deploy_width}")
        if cfg.objective == "dspnet":
            self.check(cfg.model.arch in RESNETS, source, "model.arch",
                       f"must be one of {', '.join(RESNETS)} with objective=dspnet (the slimmable network; each width "
                       f"exports as scaled/<resnet>); got {cfg.model.arch}")


def inplace_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) per row, averaged over the rows: the narrower network's
    logits (B, N) trained to the widest network's distribution over the same columns (teacher: detached)."""
    return F.kl_div(F.log_softmax(student / temperature, dim=1), F.log_softmax(teacher / temperature, dim=1),
                    log_target=True, reduction="batchmean")


class DspnetStep:
    """One DSPNet step:

        out = MoCo-v2's step on the widest network            # q_1 = f_q(x_q), k = f_k(x_k), InfoNCE, keys to enqueue
        for each direction (x_q, k) and each narrower width w:
            l_1 = [q_1 . k, q_1 . queue], without gradient     # the widest network's logits: the targets
            q_w = f_q at width w (x_q)                         # shared weights, width w's own BatchNorm
            l_w = [q_w . k, q_w . queue]
            kd_w += KL(softmax(l_1 / T) || softmax(l_w / T))
        loss = out.loss + distill_weight x sum_w kd_w
    """

    def __init__(self, model: MoCo, slim: nn.Module, section: DspnetConfig, temperature: float,
                 symmetric: bool) -> None:
        """slim: SlimmableEncoder of the model's query encoder (or its DDP wrapper under torchrun)."""
        self.model = model
        self.slim = slim
        self.widths = section.narrower
        self.weight = section.distill_weight
        self.temperature = section.distill_temperature or temperature
        self.contrastive = ContrastiveStep(model, temperature, symmetric, query_encoder=slim)

    def __call__(self, views: torch.Tensor, rng: StepRandom, labels: torch.Tensor | None = None,
                 boxes: torch.Tensor | None = None, epoch: int = 0, step: int = 0,
                 flips: torch.Tensor | None = None, local_views: torch.Tensor | None = None,
                 local_boxes: torch.Tensor | None = None) -> StepOutput:
        """views (B, V, C, H, W): MoCo-v2's step on views 0 and 1 (both ways with the symmetric loss), then the
        narrower widths' distillation on the same query views, keys and queue."""
        out = self.contrastive(views, rng, labels, boxes, epoch, step, flips=flips)
        queue, batch = self.model.queue.features, views.shape[0]
        terms: dict[float, list[torch.Tensor]] = {w: [] for w in self.widths}
        top1: dict[float, list[torch.Tensor]] = {w: [] for w in self.widths}
        for direction, query in enumerate(out.trained):
            keys = out.keys[direction * batch:(direction + 1) * batch]
            teacher = contrastive_logits(query.detach(), keys, queue)
            x_q = views[:, direction]  # the query view: 0, then 1 in the symmetric loss's second direction
            for width in self.widths:
                student = contrastive_logits(self.slim(x_q, width=width).embedding, keys, queue)
                terms[width].append(inplace_distillation(student, teacher, self.temperature))
                top1[width].append(positive_rank_top1(student.detach()))
        distillation = torch.stack([term for w in self.widths for term in terms[w]]).sum()
        loss = out.loss + self.weight * distillation
        metrics = {**out.metrics, "loss": loss.detach()}
        for width in self.widths:
            metrics[f"dspnet/kd_{width:g}"] = torch.stack(terms[width]).detach().mean()
            metrics[f"dspnet/proxy_top1_{width:g}"] = torch.stack(top1[width]).mean()
        return dataclasses.replace(out, loss=loss, metrics=metrics)


@register
class Dspnet(Objective):
    """objective: dspnet."""

    name = "dspnet"
    label = "DSPNet-pretrained"
    needs = Needs(views=2, momentum_encoder=True, queue=True)
    section = DspnetConfig
    trained_embeddings = True  # the widest network's queries (MoCo-v2's)

    def forwards(self) -> Forwards:
        """MoCo-v2's query and key per direction, and each narrower width's query at about w^2 of a full forward (a
        convolution's cost follows its input and output channels)."""
        directions = 2 if self.cfg.moco.symmetric else 1
        narrow = sum(w * w for w in self.cfg.dspnet.narrower)
        return Forwards(trained=directions * (1 + narrow), target=directions)

    def build_step(self, model: MoCo, methods: list[Method], wrap: Wrap, num_classes: int) -> Step:
        """The narrower widths' BatchNorm layers added to the model (`slim_norms`: checkpointed and trained, left out
        of the widest backbone's export); DspnetStep on the wrapped slimmable query encoder."""
        section = self.cfg.dspnet
        model.slim_norms = SwitchableNorms(model.encoder_q, section.widths)
        slim = wrap(SlimmableEncoder(model.encoder_q, model.slim_norms))
        return DspnetStep(model, slim, section, self.cfg.moco.temperature, self.cfg.moco.symmetric)

    def deployed_backbone(self, checkpoint: Path) -> tuple[nn.Module, int]:
        """The run's network at dspnet.deploy_width, a plain scaled/<resnet> backbone."""
        return width_backbone(checkpoint, self.cfg.dspnet.deploy_width)
