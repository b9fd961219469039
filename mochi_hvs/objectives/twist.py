"""TWIST (Wang et al. 2021, "Self-Supervised Learning by Estimating Twin Class Distributions"), objective: twist.

One network, no momentum encoder, no stop-gradient, no queue: the backbone and projection head map each view to C
logits ("twin classes", C = model.feature_dim), a BatchNorm without affine parameters normalises each logit over the
batch (the paper's head ends so), and a softmax gives each view's class distribution. For the two views' distributions
p1, p2 (B, C), with H(p) = -sum_c p_c log(p_c + eps) and KL(p||q) = sum_c p_c (log(p_c + eps) - log(q_c + eps)):

    kl  = 1/2 (mean_i KL(p1_i || p2_i) + mean_i KL(p2_i || p1_i))        # consistency of the twins
    eh  = 1/2 (mean_i H(s1_i) + mean_i H(s2_i))                          # per-sample entropy: sharp (minimised)
    he  = 1/2 (H(mean_i s1_i) + H(mean_i s2_i))                          # batch-mean entropy: diverse (maximised)
    loss = kl + (1 + lam1) eh - lam2 he

s = softmax(logits / tau), the distributions sharpened by tau (s = p at tau = 1). This is the official code's
EntLoss (github.com/bytedance/TWIST, objective.py; defaults lam1 = 0, lam2 = 1, tau = 1, eps = 1e-5), which is
the paper's eq. (the consistency term plus the sharpness and diversity terms, all with weight 1). Its minimum,
-lam2 log C at the defaults, is reached by consistent one-hot distributions spread evenly over the C classes; a
representation collapsed to one point gives all-zero normalised logits, uniform distributions and the loss
(1 + lam1 - lam2) (-log(1/C + eps)): the collapse monitor's uniform value.

    twist: {lam1: 0.0, lam2: 1.0, tau: 1.0, eps: 1.0e-5}

With multi-crop (multicrop.enabled: L small crops per image, Needs.local_views), the step follows the official code's
multi-crop (engine.py, crops_interact_style "sparse", no momentum encoder): the backbone encodes the two large views
together and the L small crops together (one batch per resolution, as its DINO-style forward), the projection head and
the logits' BatchNorm then see every view of the batch at once, and the loss is the mean of the two-view loss above
over the pairs (1, 2), (1, s) and (2, s) for every small crop s: each large view with every other view, the small
crops never with each other; 1 + 2 L pairs, each term (kl, eh, he) averaged over them alike. Without small crops
that is the loss above (multicrop.weight, MoCo-v2's, must stay 1).

Differences from the paper: the projection head is model.head (configs/twist.yaml: mlp_bn, one hidden layer; the
paper's has two, and C up to 4096 for ImageNet); under torchrun the batch mean and the logit BatchNorm are each
process's own (the paper all-reduces the batch mean and normalises over groups of processes); multi-crop's defaults
are SwAV's (6 crops of 5-14% of the area; the official code: 12 crops of 5-40%, its large views 40-100%).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..collapse import CollapseSignal
from ..config import Config, ObjectiveConfig, setting
from ..methods import Method
from ..methods.multicrop import crop_major
from ..models.moco import MoCo
from ..random_streams import StepRandom
from ..step import StepOutput
from .base import Objective, Step, Wrap
from .hard_views import scoring, unwrapped
from .registry import Forwards, Needs, register

LOGIT_BN = "twist_logit_bn"  # the model attribute of the BatchNorm on the logits (checkpointed with the model)


@dataclass
class TwistConfig(ObjectiveConfig):
    """TWIST's loss weights, sharpening temperature and the epsilon inside its logarithms."""

    lam1: float = setting(0.0, "the per-sample entropy's weight is 1 + lam1", bounds="> -1")
    lam2: float = setting(1.0, "the batch-mean entropy's weight", bounds=">= 0")
    tau: float = setting(1.0, "the entropy terms read softmax(logits / tau)", bounds="> 0")
    eps: float = setting(1e-5, "added inside every log, as in the official code", bounds="(0, 1)")

    def validate(self, cfg: Config, source: str) -> None:
        """At least two twin classes."""
        self.check(cfg.model.feature_dim >= 2, source, "model.feature_dim",
                   f"is TWIST's number of twin classes and must be >= 2; got {cfg.model.feature_dim}")


@dataclass(frozen=True)
class TwistTerms:
    """The loss and its three terms, scalars."""

    loss: torch.Tensor
    kl: torch.Tensor
    sample_entropy: torch.Tensor
    batch_entropy: torch.Tensor

    @staticmethod
    def mean(pairs: list[TwistTerms]) -> TwistTerms:
        """Each term averaged over pairs of views (the official code's multi-crop loss); one pair's own terms."""
        return TwistTerms(*(torch.stack([getattr(pair, field.name) for pair in pairs]).mean()
                            for field in dataclasses.fields(TwistTerms)))


def entropy(p: torch.Tensor, eps: float) -> torch.Tensor:
    """-sum_c p_c log(p_c + eps) over the last axis."""
    return -(p * (p + eps).log()).sum(dim=-1)


def sample_terms(logits1: torch.Tensor, logits2: torch.Tensor,
                 settings: TwistConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the symmetric KL 1/2 (KL(p1 || p2) + KL(p2 || p1)) and the entropy 1/2 (H(s1) + H(s2)) of the two
    views' normalised logits (..., C), broadcast, in float32 at least."""
    eps = settings.eps
    z1, z2 = logits1.float(), logits2.float()
    p1, p2 = z1.softmax(dim=-1), z2.softmax(dim=-1)
    log1, log2 = (p1 + eps).log(), (p2 + eps).log()
    kl = 0.5 * ((p1 * (log1 - log2)).sum(dim=-1) + (p2 * (log2 - log1)).sum(dim=-1))
    s1, s2 = (z1 / settings.tau).softmax(dim=-1), (z2 / settings.tau).softmax(dim=-1)
    return kl, 0.5 * (entropy(s1, eps) + entropy(s2, eps))


def twist_terms(logits1: torch.Tensor, logits2: torch.Tensor, settings: TwistConfig) -> TwistTerms:
    """TWIST's loss for the normalised logits (B, C) of the two views (the module docstring's formula), in float32
    at least."""
    kl, sample = (term.mean() for term in sample_terms(logits1, logits2, settings))
    s1, s2 = (logits1.float() / settings.tau).softmax(dim=1), (logits2.float() / settings.tau).softmax(dim=1)
    batch = 0.5 * (entropy(s1.mean(dim=0), settings.eps) + entropy(s2.mean(dim=0), settings.eps))
    loss = kl + (1 + settings.lam1) * sample - settings.lam2 * batch
    return TwistTerms(loss, kl, sample, batch)


def uniform_loss(classes: int, settings: TwistConfig) -> float:
    """The loss when every logit is equal (uniform distributions: kl 0, both entropies -log(1/C + eps))."""
    return (1 + settings.lam1 - settings.lam2) * -math.log(1 / classes + settings.eps)


class TwinNetwork(nn.Module):
    """The encoder, then the BatchNorm (no affine parameters) of its logits: one module, so that one DDP wrapper
    averages every trained gradient."""

    def __init__(self, encoder: nn.Module, logit_bn: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.logit_bn = logit_bn

    def forward(self, *batches: torch.Tensor) -> torch.Tensor:
        """The normalised logits (N_1 + N_2 + ..., C) of the batches (N_k, C_in, H_k, W_k), in order: each batch
        through the backbone on its own (one resolution each, its own BatchNorm statistics), then the projection head
        and the logits' BatchNorm over all of them at once (the unnormalised projection), as the official code's
        multi-crop forward."""
        features = torch.cat([self.encoder.features(x) for x in batches])
        return self.logit_bn(self.encoder.head(features))


class TwistStep:
    """TWIST, one step (with multi-crop's small crops s_1..s_L where drawn):

        z1, z2, z_s1, ..., z_sL = BN(g(cat(f(cat(v1, v2)), f(cat(s_1..s_L)))))
            # the two views in one forward, as the paper (BatchNorm over 2B); the small crops in another (their own
            # resolution); the head and the logits' BatchNorm over all (2 + L) B rows, as the official code
        loss = mean over pairs (a, b) = (z1, z2), (z1, z_s), (z2, z_s) of kl(p_a, p_b) + (1 + lam1) eh - lam2 he
            # p = softmax(z); twist_terms, each term averaged over the pairs; without small crops, (z1, z2) alone
        # then the loop: loss.backward(); SGD on f, g (gradient through every view); no momentum update
    """

    def __init__(self, network: nn.Module, settings: TwistConfig) -> None:
        """network: TwinNetwork of the model's f_q and logit BatchNorm (or its DDP wrapper under torchrun)."""
        self.network = network
        self.settings = settings

    def __call__(self, views: torch.Tensor, rng: StepRandom, labels: torch.Tensor | None = None,
                 boxes: torch.Tensor | None = None, epoch: int = 0, step: int = 0,
                 flips: torch.Tensor | None = None, local_views: torch.Tensor | None = None,
                 local_boxes: torch.Tensor | None = None) -> StepOutput:
        """views (B, V, C, H, W): views 0 and 1 of each sample; local_views (B, L, C, h, w): multi-crop's small crops,
        when drawn (flips are not read). Nothing is enqueued; the trained embeddings are the large views' normalised
        logits z1, z2."""
        small = [] if local_views is None else [crop_major(local_views)]
        z = self.network(torch.cat([views[:, 0], views[:, 1]]), *small).split(len(views))  # z1, z2, z_s1, ...
        terms = TwistTerms.mean([twist_terms(z[a], z[b], self.settings) for a in (0, 1) for b in range(a + 1, len(z))])
        z1, z2 = z[0], z[1]
        p1, p2 = z1.detach().float().softmax(dim=1), z2.detach().float().softmax(dim=1)
        metrics = {"loss": terms.loss.detach(), "proxy_top1": (p1.argmax(dim=1) == p2.argmax(dim=1)).float().mean(),
                   "twist_kl": terms.kl.detach(), "twist_sample_entropy": terms.sample_entropy.detach(),
                   "twist_batch_entropy": terms.batch_entropy.detach()}
        return StepOutput(loss=terms.loss, keys=None, metrics=metrics, trained=[z1, z2],
                          signal=CollapseSignal(p1, terms.loss.detach(), uniform_loss(p1.shape[1], self.settings)))

    def pair_losses(self, views: torch.Tensor, rng: StepRandom) -> torch.Tensor:
        """[i, a, b] = 1/2 (KL(p_a || p_b) + KL(p_b || p_a)) + (1 + lam1) 1/2 (H(s_a) + H(s_b)) of sample i for
        candidates (B, V, C, H, W): its part of the loss with views a and b (hard_views.py). The batch-mean entropy
        is a term of the whole batch and ranks no sample. All candidates are normalised together, as the step's one
        forward normalises both views (at V = 2 and without small crops, the very logits of the step). Multi-crop's
        small crops are neither scored nor normalised with the candidates: the pair the step trains is chosen among
        the large views, and the crops' pairs ride along with it."""
        network = unwrapped(self.network)
        batch, num_views = views.shape[:2]
        with scoring([network], view_slots=1):
            logits = network(views.transpose(0, 1).flatten(0, 1)).unflatten(0, (num_views, batch)).transpose(0, 1)
        kl, sample = sample_terms(logits.unsqueeze(2), logits.unsqueeze(1), self.settings)
        return kl + (1 + self.settings.lam1) * sample


@register
class Twist(Objective):
    """objective: twist. One trained network for every view: no momentum encoder, queue or predictor; multi-crop's
    small crops are read by the step itself."""

    name, label, section = "twist", "TWIST-pretrained", TwistConfig
    needs = Needs(views=2, momentum_encoder=False, queue=False, predictor=False, local_views=True, pair_losses=True)
    trained_embeddings = True  # the normalised logits z1, z2

    def forwards(self) -> Forwards:
        """Both views through the one trained network (compute_cost.py adds multi-crop's small crops, one trained
        forward each); HVS scores each candidate through it."""
        return Forwards(trained=2, target=0, candidate=1)

    def build_step(self, model: MoCo, methods: list[Method], wrap: Wrap, num_classes: int) -> Step:
        """TwistStep on the wrapped network; the logit BatchNorm is added to the model (its running statistics are
        checkpointed with it)."""
        device = next(model.encoder_q.parameters()).device
        logit_bn = nn.BatchNorm1d(self.cfg.model.feature_dim, affine=False).to(device)
        model.add_module(LOGIT_BN, logit_bn)
        return TwistStep(wrap(TwinNetwork(model.encoder_q, logit_bn)), self.cfg.twist)
