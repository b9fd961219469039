"""Feature-regression distillation (SimReg: Navaneet, Abbasi Koohpayegani, Tejankar & Pirsiavash, "SimReg: Regression
as a Simple Yet Effective Tool for Self-supervised Knowledge Distillation", BMVC 2021), objective: distill.

A compact student (model.arch, e.g. `scaled/resnet18` at width 0.5) learns to regress the features of one or several
frozen self-supervised teachers (any weights files the loader reads: our checkpoints and exports, torchvision, the
official MoCo's): its pooled features go through a deeper MLP head per teacher (models/regression_head.py), used
only while distilling, whose prediction p of teacher t's pooled features z is scored by the normalised squared error
||p / ||p|| - z / ||z|| ||^2 = 2 - 2 cos(p, z) (BYOL's regression loss), averaged over the images and summed over
the teachers. The heads are independent: each one's gradient comes from its own teacher's term only. Teacher and
student see the same image: both views the data path draws (weakly augmented by the recipes: crops and flips, no
colour jitter or blur) go through every teacher and through the student, as 2 B images. No momentum encoder, no
queue; the student's backbone is what checkpoints, the evaluators and `mochi-export` read (its heads and the unused
projection head are left behind).

    distill: {teachers: [runs/moco_v2/last.pth], head_layers: 4, head_hidden_dim: null, teacher_cost: 1.0}

A teacher path may name `{seed}` and `{output_dir}`, replaced by the run's seed and output_dir: a study's arm finds
its seed's teacher in a sibling arm's folder (`{output_dir}/../teacher/seed{seed}/last.pth`). Teachers are put in
eval mode (their BatchNorm running statistics) and never trained; a teacher whose file records the normalisation its
images had (our checkpoints and exports) must have the run's data.mean and data.std.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..collapse import CollapseSignal
from ..config import Config, ConfigError, ObjectiveConfig, setting
from ..methods import Method
from ..models.moco import MoCo
from ..models.regression_head import DistilledStudent, regression_head
from ..random_streams import StepRandom
from ..step import StepOutput
from ..weights.errors import CheckpointError
from ..weights.loader import exact_backbone, read_backbone_state
from .base import Objective, Step, Wrap
from .byol import regression_loss, retrieval_top1
from .registry import Forwards, Needs, register

PLACEHOLDERS = ("seed", "output_dir")


@dataclass
class DistillConfig(ObjectiveConfig):
    """Feature-regression distillation: the teachers, the regression heads, and a teacher forward's cost."""

    teachers: list[str] = setting([], "weights files of the frozen teachers, any the loader reads (objective=distill "
                                      "needs one at least); {seed} and {output_dir} are replaced by the run's")
    head_layers: int = setting(4, "linear layers of each teacher's regression head (BatchNorm and ReLU between "
                                  "them): SimReg's deeper MLP, discarded after distillation", bounds=">= 1")
    head_hidden_dim: int | None = setting(None, "the heads' hidden width; null: twice the teacher's feature width",
                                          bounds="positive")
    teacher_cost: float = setting(1.0, "one teacher forward's compute in student forwards, for compute-matched "
                                       "comparisons (compute_cost.py): about 4 for a ResNet-18 teaching one at width "
                                       "0.5", bounds="> 0")

    def teacher_paths(self, cfg: Config) -> list[str]:
        """The teachers' files, their placeholders replaced by the run's seed and output_dir."""
        return [path.format(seed=cfg.seed, output_dir=cfg.output_dir) for path in self.teachers]

    def validate(self, cfg: Config, source: str) -> None:
        """With objective=distill, a teacher at least, whose paths name no placeholder but {seed} and
        {output_dir}."""
        if cfg.objective != "distill":
            return
        self.check(bool(self.teachers), source, "distill.teachers",
                   "must name a teacher's weights file at least (objective=distill regresses their features)")
        for index, path in enumerate(self.teachers):
            try:
                path.format(**{name: "" for name in PLACEHOLDERS})
            except (KeyError, IndexError, ValueError) as err:
                raise ConfigError(f"{source}: 'distill.teachers[{index}]' may name {{seed}} and {{output_dir}} only; "
                                  f"got {path!r} ({type(err).__name__}: {err})") from err


def load_teacher(path: str, index: int, cfg: Config, device: torch.device) -> tuple[nn.Module, int]:
    """Teacher `index`: the backbone of the weights file `path`, frozen in eval mode on `device`, and its feature
    width; a CheckpointError names the setting, a ConfigError a teacher pretrained on other normalisation."""
    try:
        state, meta = read_backbone_state(path)
        backbone, width = exact_backbone(state, meta)
    except CheckpointError as err:
        raise type(err)(f"distill.teachers[{index}]: {err}") from err
    data = (meta.config or {}).get("data") or {}
    stored = [data.get("mean"), data.get("std")]
    if data and stored != [cfg.data.mean, cfg.data.std]:
        raise ConfigError(f"distill.teachers[{index}]={path} was pretrained on images normalised with data.mean="
                          f"{stored[0]} and data.std={stored[1]}; this run normalises with {cfg.data.mean} and "
                          f"{cfg.data.std}: set them to the teacher's")
    return backbone.to(device).requires_grad_(False), width


class DistillStep:
    """One step of feature-regression distillation:

        x = views 0 and 1 of each sample, as 2 B images     # teacher and student see the same images
        z_t = f_t(x) for each teacher t                      # frozen, eval mode, no gradient
        p_t = h_t(f_s(x))                                    # the student's features through teacher t's head
        loss = sum over t of mean ||p_t^ - z_t^||^2          # ^: L2-normalised; each term 2 - 2 cos
    """

    def __init__(self, student: nn.Module, teachers: list[nn.Module]) -> None:
        """student: DistilledStudent (or its DDP wrapper); teachers: frozen backbones, one per head."""
        self.student = student
        self.teachers = teachers

    def __call__(self, views: torch.Tensor, rng: StepRandom, labels: torch.Tensor | None = None,
                 boxes: torch.Tensor | None = None, epoch: int = 0, step: int = 0,
                 flips: torch.Tensor | None = None, local_views: torch.Tensor | None = None,
                 local_boxes: torch.Tensor | None = None) -> StepOutput:
        """views (B, V, C, H, W): views 0 and 1 of each sample are distilled; nothing is enqueued."""
        images = views[:, :2].flatten(0, 1)
        with torch.no_grad():
            targets = [teacher(images) for teacher in self.teachers]
        features, predictions = self.student(images)
        terms = [regression_loss(p, z).mean() for p, z in zip(predictions, targets, strict=True)]
        loss = torch.stack(terms).sum()
        metrics = {"loss": loss.detach(), "proxy_top1": retrieval_top1(predictions[0].detach(), targets[0]),
                   **{f"distill/cosine{t}": 1 - term.detach() / 2 for t, term in enumerate(terms)}}
        return StepOutput(loss=loss, keys=None, metrics=metrics,
                          signal=CollapseSignal(predictions[0].detach(), loss.detach()))


@register
class Distill(Objective):
    """objective: distill."""

    name = "distill"
    label = "distilled"
    needs = Needs(views=2, momentum_encoder=False, queue=False)
    section = DistillConfig

    def forwards(self) -> Forwards:
        """Both views through the student (trained) and through each teacher (no gradient, at distill.teacher_cost
        student forwards each)."""
        section = self.cfg.distill
        return Forwards(trained=2, target=2 * len(section.teachers) * section.teacher_cost)

    def build_step(self, model: MoCo, methods: list[Method], wrap: Wrap, num_classes: int) -> Step:
        """The teachers, loaded; one regression head per teacher added to the model (`distill_heads`: checkpointed
        and trained, left out of the exported backbone); DistillStep on the wrapped student."""
        section = self.cfg.distill
        device = next(model.parameters()).device
        teachers = [load_teacher(path, index, self.cfg, device)
                    for index, path in enumerate(section.teacher_paths(self.cfg))]
        model.distill_heads = nn.ModuleList(
            regression_head(model.feature_width, width, section.head_hidden_dim or 2 * width, section.head_layers)
            for _, width in teachers).to(device)
        student = DistilledStudent(model.encoder_q.backbone, model.distill_heads)
        return DistillStep(wrap(student), [teacher for teacher, _ in teachers])
