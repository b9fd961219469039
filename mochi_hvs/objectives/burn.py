"""BURN (Kim & Choi, "Unsupervised Representation Learning for Binary Networks by Joint Classifier Learning", CVPR
2022), objective: burn.

A binary network (the trained encoder: model.arch binary/resnet18 or binary/resnet34, models/binary.py, and its
projection head) learns against a moving target: a randomly initialised classifier g attached to a pretrained
floating-point feature extractor F (`burn.teacher`, frozen, in eval mode), trained jointly with it. For views v, v'
of an image, z = head(f_b(v)) the binary network's output and t' = g(F(v')) the target's:

    L(z, t') = (1 - lambda) ||z / ||z|| - t' / ||t'|| ||^2 + lambda KL(softmax(t' / T) || softmax(z / T))
    loss = mean over the batch of L(z, t') + L(z', t)

the feature similarity term (cosine distance, stable while the classifier is still random) and the KL term of the
classifier's soft assignments; both reach the binary network and the classifier g (the moving target), neither F.
The dynamic balance moves lambda from `lambda_start` to `lambda_end` on a cosine over the run,
lambda(t) = end - (end - start) (1 + cos(pi t / T)) / 2 at step t of T (the official code's BURNHook), so the
feature similarity term leads while g is young.

The modified multi-stage schedule: binary activations with real weights first, then binary weights, the second
stage starting from the first's binary network and also from its classifier g and projection head (the
modification: both the target and the binary network get their initial point from the first stage). In one run, the
first `burn.real_weights_until` of its steps keep the weights real and the rest binarise them, the optimiser and
the learning-rate schedule running on across the switch (configs/compact/burn_fmnist.yaml, and a study's arm). As a
staged run (`stages:`), the paper's form with a schedule per stage: a first stage with real_weights_until 1, a second
with 0, initialised from the first (model.init_from, chained by the stages); where model.init_from is a BURN
checkpoint, the classifier and the projection head start from it too, not only the backbone
(configs/compact/burn_imagenet.yaml).

Our reading: g is the project's projection head (model.head at model.feature_dim, on F's features) followed by a
BatchNorm without affine parameters, which keeps each of its outputs at unit variance over the batch: without it the
jointly trained target and the binary network collapsed to one output within 60 steps on the embedded data. The
paper's ReActNet and 2000-way classifier are replaced by Bi-Real binary ResNets and model.feature_dim.
"""

from __future__ import annotations

import math
import string
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..collapse import CollapseSignal
from ..config import Config, ConfigError, ObjectiveConfig, setting
from ..loss import full_precision
from ..methods import Method
from ..models.backbone_facts import first_line
from ..models.binary import BinaryConv2d, binary_convolutions
from ..models.head import projection_head
from ..models.moco import EncoderOutput, MoCo
from ..random_streams import StepRandom
from ..step import StepOutput
from ..weights.checkpoint import FORMAT
from ..weights.errors import WeightsError
from ..weights.loader import load_backbone_weights, read_backbone_state
from ..weights.reading import read_file
from .base import Objective, Step, Wrap
from .byol import regression_loss, retrieval_top1
from .registry import Forwards, Needs, register

TEACHER, CLASSIFIER = "burn_teacher", "burn_classifier"  # the modules BURN adds to the model (and its checkpoint)
STUDENT_HEAD = "encoder_q.head."  # the binary network's projection head in the model's state


@dataclass
class BurnConfig(ObjectiveConfig):
    """BURN's target (the pretrained feature extractor and the temperature of its classifier's soft assignments),
    the dynamic loss balance and the first stage's share of the run."""

    teacher: str | None = setting(None, "weights file of the pretrained floating-point feature extractor (any format "
                                        "the loader reads); {seed} and {output_dir} are replaced by the run's (a "
                                        "study's arm finds its seed's teacher in a sibling arm's folder)")
    temperature: float = setting(0.2, "T of the soft assignments softmax(z / T) the KL term compares (the paper: "
                                      "0.2)", bounds="> 0")
    lambda_start: float = setting(0.1, "weight lambda of the KL term at the first step (1 - lambda: the feature "
                                       "similarity term's; the paper: 0.1)", bounds="[0, 1]")
    lambda_end: float = setting(0.3, "lambda at the last step, reached on a cosine (the paper: 0.3)", bounds="[0, 1]")
    real_weights_until: float = setting(0.5, "share of the run's steps trained with real weights and binary "
                                             "activations (the first stage); its other steps binarise the weights "
                                             "too. 0: binary weights from the start; 1: the first stage alone",
                                        bounds="[0, 1]")

    def validate(self, cfg: Config, source: str) -> None:
        """For objective=burn: a teacher, naming no placeholder but {seed} and {output_dir}."""
        if cfg.objective != "burn":
            return
        self.check(bool(self.teacher), source, "burn.teacher",
                   "must name the pretrained floating-point feature extractor's weights (objective=burn)")
        named = [field for _, field, _, _ in string.Formatter().parse(str(self.teacher)) if field is not None]
        self.check(set(named) <= {"seed", "output_dir"}, source, "burn.teacher",
                   f"may name {{seed}} and {{output_dir}} only; got {self.teacher!r}")

    def teacher_path(self, cfg: Config) -> Path:
        """The teacher's file, its placeholders replaced by the run's seed and output_dir."""
        return Path(str(self.teacher).format(seed=cfg.seed, output_dir=cfg.output_dir)).expanduser()


def loss_balance(step: int, total_steps: int, start: float, end: float) -> float:
    """lambda(t) = end - (end - start) (1 + cos(pi t / T)) / 2: start at t = 0, end at t = T."""
    return end - (end - start) * (1 + math.cos(math.pi * step / max(total_steps, 1))) / 2


def burn_loss(student: torch.Tensor, target: torch.Tensor, lam: float, temperature: float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of outputs (N, D): (1 - lam) x the feature similarity term + lam x the KL term, and the two terms
    (each (N,)): ||z^ - t^||^2 = 2 - 2 cos(z, t), and KL(softmax(t / T) || softmax(z / T)); in at least float32."""
    similarity = regression_loss(student, target)
    student, target = full_precision(student, target)
    target_log = F.log_softmax(target / temperature, dim=-1)
    divergence = (target_log.exp() * (target_log - F.log_softmax(student / temperature, dim=-1))).sum(-1)
    return (1 - lam) * similarity + lam * divergence, similarity, divergence


class FrozenNetwork(nn.Module):
    """A network kept in eval mode (its BatchNorm on running statistics) whatever mode its parent is put in."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> FrozenNetwork:
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


class BurnNetworks(nn.Module):
    """The trained networks, one module (one DDP wrapper averages every trained gradient): the binary encoder and
    the classifier g on the teacher's features."""

    def __init__(self, student: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.classifier = classifier

    def forward(self, x: torch.Tensor, teacher_features: torch.Tensor) -> tuple[EncoderOutput, torch.Tensor]:
        """The binary network's output for x and the classifier's output t = g(F(x')) of the teacher's features."""
        return self.student(x), self.classifier(teacher_features)


class BurnStep:
    """One BURN step (see the module docstring):

        binary weights from step real_weights_until x T on
        z, z' = head(f_b(v)), head(f_b(v'))     # the binary network, both views
        t, t' = g(F(v)), g(F(v'))               # F frozen (no gradient), g trained: the moving target
        lam = lambda(step)                      # the dynamic balance
        loss = mean(L(z, t') + L(z', t))        # feature similarity and KL, both directions
    """

    def __init__(self, networks: nn.Module, teacher: nn.Module, binary: list[BinaryConv2d], cfg: BurnConfig,
                 schedule: Objective) -> None:
        """networks: BurnNetworks (or its DDP wrapper); binary: the binary network's binary convolutions; schedule:
        the objective, which knows the run's length."""
        self.networks = networks
        self.teacher = teacher
        self.binary = binary
        self.cfg = cfg
        self.schedule = schedule

    def __call__(self, views: torch.Tensor, rng: StepRandom, labels: torch.Tensor | None = None,
                 boxes: torch.Tensor | None = None, epoch: int = 0, step: int = 0,
                 flips: torch.Tensor | None = None) -> StepOutput:
        """views (B, V, C, H, W): views 0 and 1 of each sample. Nothing is enqueued; the trained embeddings are the
        binary network's outputs z, z'."""
        v, v_prime = views[:, 0], views[:, 1]
        binary_weights = step >= self.cfg.real_weights_until * self.schedule.total_steps
        for conv in self.binary:
            conv.binary_weights = binary_weights
        with torch.no_grad():
            features, features_prime = self.teacher(v), self.teacher(v_prime)
        student, target = self.networks(v, features)
        student_prime, target_prime = self.networks(v_prime, features_prime)
        lam = loss_balance(step, self.schedule.total_steps, self.cfg.lambda_start, self.cfg.lambda_end)
        z, z_prime = student.projection, student_prime.projection  # the binary network's outputs
        first, sim_a, kl_a = burn_loss(z, target_prime, lam, self.cfg.temperature)
        second, sim_b, kl_b = burn_loss(z_prime, target, lam, self.cfg.temperature)
        loss = (first + second).mean()
        metrics = {"loss": loss.detach(), "proxy_top1": retrieval_top1(z.detach(), target_prime.detach()),
                   "lambda": torch.tensor(lam), "binary_weights": torch.tensor(float(binary_weights)),
                   "similarity": (sim_a + sim_b).mean().detach() / 2, "kl": (kl_a + kl_b).mean().detach() / 2}
        return StepOutput(loss=loss, keys=None, metrics=metrics,
                          signal=CollapseSignal(student.embedding.detach(), loss.detach()), trained=[z, z_prime])


def load_teacher(path: Path, announce: bool) -> tuple[nn.Module, int]:
    """The teacher's backbone from a weights file of any supported format, and its feature width."""
    if not path.is_file():
        raise ConfigError(f"burn.teacher: no weights file at {path} (train the teacher first, e.g. configs/"
                          "moco_v2.yaml, or give its path)")
    state, meta = read_backbone_state(path)
    teacher, width = meta.architecture.build()
    report = load_backbone_weights(teacher, state)
    if announce:
        print(f"burn.teacher {meta.summary()}; {report.summary()}", file=sys.stderr)
    return teacher, width


def carried_state(path: str) -> dict[str, torch.Tensor]:
    """What a BURN checkpoint at `path` (model.init_from) passes to the next stage: its classifier's and its binary
    network's projection head's state, by their keys in the model; empty for any other file."""
    obj = read_file(path).obj
    model = obj.get("model") if obj.get("format") == FORMAT else None
    if not isinstance(model, dict) or not any(key.startswith(CLASSIFIER + ".") for key in model):
        return {}
    return {key: value for key, value in model.items() if key.startswith((CLASSIFIER + ".", STUDENT_HEAD))}


@register
class Burn(Objective):
    """objective: burn."""

    name = "burn"
    label = "BURN-pretrained"
    needs = Needs(views=2, momentum_encoder=False, queue=False, predictor=False)
    section = BurnConfig
    trained_embeddings = True  # the binary network's outputs z, z'
    total_steps = 1  # the run's length, from the loop (target_momentum)

    def target_momentum(self, step: int, total_steps: int) -> float | None:
        """BURN's target moves by its gradient, not by momentum: None. The loop calls this before every step with
        the run's length, which the dynamic balance reads."""
        self.total_steps = total_steps
        return None

    def forwards(self) -> Forwards:
        """Both views through the binary network (trained) and through the frozen teacher."""
        return Forwards(trained=2, target=2)

    def build_step(self, model: MoCo, methods: list[Method], wrap: Wrap, num_classes: int) -> Step:
        """The teacher F (frozen) and the classifier g added to the model, what a previous BURN stage carries
        loaded; BurnStep on the wrapped networks."""
        burn, device = self.cfg.burn, next(model.encoder_q.parameters()).device
        teacher, width = load_teacher(burn.teacher_path(self.cfg), announce=True)
        model.add_module(TEACHER, FrozenNetwork(teacher).to(device))
        model_cfg = self.cfg.model
        classifier = nn.Sequential(projection_head(width, model_cfg.feature_dim, model_cfg.head,
                                                   model_cfg.head_hidden_dim),
                                   nn.BatchNorm1d(model_cfg.feature_dim, affine=False)).to(device)
        model.add_module(CLASSIFIER, classifier)
        if self.cfg.model.init_from and (carried := carried_state(self.cfg.model.init_from)):
            try:
                model.load_state_dict(carried, strict=False)
            except RuntimeError as err:
                mismatch = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line),
                                first_line(err))
                raise WeightsError(f"model.init_from={self.cfg.model.init_from}: its BURN classifier and head do not "
                                   f"fit this run's (model.head, model.feature_dim): {mismatch}") from err
        return BurnStep(wrap(BurnNetworks(model.encoder_q, classifier)), getattr(model, TEACHER),
                        binary_convolutions(model.encoder_q.backbone), burn, self)
