"""ReLICv2 (Tomasev et al. 2022, "Pushing the limits of self-supervised ResNets: can we outperform supervised
learning without labels on ImageNet?"), objective: relicv2.

A contrastive objective plus an explicit invariance loss, between an online network and a target network that is
the online one's exponential moving average (as BYOL's; no predictor, no queue: the other images of the batch are
the negatives). On the model: f_q and its head are the online network, f_k the target, moved by the loop's EMA.

For an online view u and a target view v of the batch (o, t: L2-normalised projections, (B, D)), the logits
L = o t^T / temperature (B, B) hold, in row i, how view u of image i scores against view v of every image j, and in
column i how view v of image i is scored by view u of every image. The pair's loss:

    contrastive = mean_i -log softmax(L[i, :])[i]                             # instance discrimination
    invariance  = mean_i KL(sg(softmax(L[:, i])) || softmax(L[i, :]))         # the two views' similarity distributions
    pair(u, v)  = contrastive + alpha x invariance

The KL term asks that image i's distribution over the batch's images be the same seen from either view (ReLIC's
invariance under augmentation); sg: stop-gradient on the distribution of the view in the target's role. The step
sums pair(u, v) over every ordered pair of different large views and over every (small crop, large view) pair when
multi-crop draws small crops (multicrop.enabled: the small crops go through the online network only, as ReLICv2's),
and averages over the pairs (multicrop.weight, MoCo-v2's, must stay 1):

    relicv2: {temperature: 0.2, alpha: 1.0, momentum: 0.99, momentum_schedule: cosine}

Our reading where the paper's definition leaves a choice: the invariance term is taken between the row and the
column distributions of one pair's logits (so that every pair, small crops included, needs only its online and
target views); same-view pairs (u = v) are not scored; the paper's saliency masking and its sampling of a subset of
negatives are not implemented (the batch gives B - 1 negatives); temperature 0.2 is MoCo-v2's, so that the two
compare with everything else equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..collapse import CollapseSignal
from ..config import setting
from ..methods import Method
from ..methods.multicrop import encode_crops
from ..models.moco import MoCo
from ..random_streams import StepRandom
from ..step import StepOutput
from .base import Objective, Step, Wrap
from .ema import TargetEma
from .hard_views import SCORING_STREAM, scoring, unwrapped
from .registry import Forwards, Needs, register


@dataclass
class Relicv2Config(TargetEma):
    """ReLICv2's temperature and invariance weight, and its target network's EMA (momentum, schedule)."""

    temperature: float = setting(0.2, "temperature of the logits o t^T / temperature", bounds="> 0")
    alpha: float = setting(1.0, "the invariance (KL) term's weight", bounds=">= 0")


@dataclass(frozen=True)
class PairTerms:
    """One (online view, target view) pair's terms, scalars, and its instance-discrimination top-1."""

    contrastive: torch.Tensor
    invariance: torch.Tensor
    top1: torch.Tensor


def sample_terms(online: torch.Tensor, target: torch.Tensor,
                 temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample i, the module docstring's contrastive and invariance terms (..., B) of L2-normalised online
    (..., B, D) and target (..., B, D) embeddings of two views (leading axes broadcast), and the logits (..., B, B);
    in float32 at least."""
    logits = online.float() @ target.float().transpose(-1, -2) / temperature
    log_rows = logits.log_softmax(dim=-1)
    contrastive = -log_rows.diagonal(dim1=-2, dim2=-1)
    # row i: softmax(L[:, i]), the target view's distribution
    columns = logits.detach().transpose(-1, -2).softmax(dim=-1)
    invariance = (columns * (columns.clamp_min(1e-30).log() - log_rows)).sum(dim=-1)
    return contrastive, invariance, logits


def pair_terms(online: torch.Tensor, target: torch.Tensor, temperature: float) -> PairTerms:
    """The module docstring's contrastive and invariance terms of L2-normalised online (B, D) and target (B, D)
    embeddings of two views, in float32 at least."""
    contrastive, invariance, logits = sample_terms(online, target, temperature)
    labels = torch.arange(len(logits), device=logits.device)
    top1 = (logits.detach().argmax(dim=1) == labels).float().mean()
    return PairTerms(contrastive.mean(), invariance.mean(), top1)


class Relicv2Step:
    """ReLICv2, one step:

        o_u = normalise(g(f(v_u)))  for each large view u and each small crop   # online, trained
        t_u = normalise(g'(f'(v_u))) for each large view u                     # target (EMA), no gradient
        loss = mean over pairs (u, v), v a large view != u, of contrastive(o_u, t_v) + alpha invariance(o_u, t_v)
        # then the loop: loss.backward(); SGD on f, g; f', g' <- m f', g' + (1 - m) f, g
    """

    def __init__(self, model: MoCo, online: torch.nn.Module, settings: Relicv2Config) -> None:
        """online: the model's f_q (or its DDP wrapper under torchrun)."""
        self.model = model
        self.online = online
        self.settings = settings

    def __call__(self, views: torch.Tensor, rng: StepRandom, labels: torch.Tensor | None = None,
                 boxes: torch.Tensor | None = None, epoch: int = 0, step: int = 0,
                 flips: torch.Tensor | None = None, local_views: torch.Tensor | None = None,
                 local_boxes: torch.Tensor | None = None) -> StepOutput:
        """views (B, V, C, H, W): views 0 and 1 are the large views; local_views (B, L, C, h, w): multi-crop's small
        crops, when drawn. Nothing is enqueued."""
        large = [views[:, 0], views[:, 1]]
        online = [self.online(v).embedding for v in large]
        targets = [self.model.key(v, rng("shuffle")).embedding for v in large]
        if local_views is not None:
            online += list(encode_crops(local_views, self.online))
        pairs = [pair_terms(o, t, self.settings.temperature)
                 for u, o in enumerate(online) for v, t in enumerate(targets) if u != v]
        contrastive = torch.stack([p.contrastive for p in pairs]).mean()
        invariance = torch.stack([p.invariance for p in pairs]).mean()
        loss = contrastive + self.settings.alpha * invariance
        metrics = {"loss": loss.detach(), "proxy_top1": torch.stack([p.top1 for p in pairs]).mean(),
                   "relicv2_contrastive": contrastive.detach(), "relicv2_invariance": invariance.detach()}
        return StepOutput(loss=loss, keys=None, metrics=metrics, trained=online[:2],
                          signal=CollapseSignal(online[0].detach(), contrastive.detach(), math.log(len(views))))

    def pair_losses(self, views: torch.Tensor, rng: StepRandom) -> torch.Tensor:
        """[i, a, b] = 1/2 (l_i(a, b) + l_i(b, a)) of sample i for candidates (B, V, C, H, W), l_i(u, v) its
        contrastive + alpha invariance terms with online view u against target view v over the batch (every sample's
        views u and v): its part of the loss with views a and b, both orders averaged as the step does
        (hard_views.py). Multi-crop's small crops are not scored. Each view slot is normalised on its own, as the
        step's one-view forwards are; the target's shuffle draws from HVS's stream."""
        online = unwrapped(self.online)
        with scoring([online, self.model.encoder_k], views.shape[1]):
            o = online(views.flatten(0, 1)).embedding.unflatten(0, views.shape[:2])
            t = self.model.key(views, rng(SCORING_STREAM)).embedding
        # (V, 1, B, D) against (1, V, B, D): terms [u, v, i]
        contrastive, invariance, _ = sample_terms(o.transpose(0, 1).unsqueeze(1), t.transpose(0, 1).unsqueeze(0),
                                                  self.settings.temperature)
        losses = (contrastive + self.settings.alpha * invariance).permute(2, 0, 1)
        return (losses + losses.transpose(1, 2)) / 2


@register
class Relicv2(Objective):
    """objective: relicv2. An online network and its EMA target, no predictor, no queue; multi-crop's small crops
    are read by the step itself."""

    name, label, section = "relicv2", "ReLICv2-pretrained", Relicv2Config
    needs = Needs(views=2, momentum_encoder=True, queue=False, predictor=False, local_views=True, pair_losses=True)
    trained_embeddings = True  # the large views' online embeddings

    def forwards(self) -> Forwards:
        """Both large views through the online network (trained) and through the target (compute_cost.py adds the
        small crops, as online forwards); HVS scores each candidate through both."""
        return Forwards(trained=2, target=2, candidate=2)

    def build_step(self, model: MoCo, methods: list[Method], wrap: Wrap, num_classes: int) -> Step:
        """Relicv2Step on the wrapped online encoder."""
        return Relicv2Step(model, wrap(model.encoder_q), self.cfg.relicv2)
