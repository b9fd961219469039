"""BYOL (Grill et al., "Bootstrap your own latent", NeurIPS 2020), objective: byol.

An online network (encoder f, projector g, predictor q) predicts the target network's projection of another view of
the same image; the target is an exponential moving average of the online encoder and projector (no predictor) and
receives no gradient. No queue, no negatives. On the model: f_q and its head are the online f and g, f_k the target,
`MoCo.predictor` q (mlp_bn, the projector's hidden width); the loop's momentum update is the EMA.

    byol: {momentum: 0.99, momentum_schedule: cosine, predictor: true}

`momentum` is tau_base; the paper raises tau to 1 over training on a cosine (tau = 1 - (1 - tau_base)
(cos(pi k / K) + 1) / 2) from 0.996 over hundreds of epochs; the embedded recipe's few epochs start at 0.99.
`predictor: false` removes the asymmetric predictor (q is the identity: the online projection regresses the
target's), the ablation of the MoCo-v2 vs BYOL benchmark; the model then has no predictor.

With multi-crop (multicrop.enabled: L small crops per image, Needs.local_views), the small crops go through the online
network and its predictor only, and each regresses the target projections of both large views; the target never
sees a small crop. This is solo-learn's multi-crop BYOL (solo/methods/byol.py; ReLICv2 treats its small views so
too): the loss sums the regression loss of every (online view a, target view b != a) pair, a over the two large
views and the L small crops, b over the two large views, so 2 + 2 L pairs, each averaged over the batch; without
small crops these are the two terms of the symmetrised loss. The global views' own term is unchanged by the crops,
whose pairs add to it; each pair weighs 1, as solo-learn's (multicrop.weight, MoCo-v2's, must stay 1).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..collapse import CollapseSignal
from ..config import Config, setting
from ..loss import full_precision
from ..methods import Method
from ..methods.multicrop import crop_major
from ..models.moco import EncoderOutput, MoCo
from ..random_streams import StepRandom
from ..step import StepOutput
from .base import Objective, Step, Wrap
from .ema import TargetEma
from .hard_views import SCORING_STREAM, scoring, unwrapped
from .registry import Forwards, Needs, register


@dataclass
class ByolConfig(TargetEma):
    """BYOL's target network (the EMA momentum tau_base, the paper: 0.996, and its schedule), and whether the online
    side has its predictor (false: the symmetric network of the MoCo-v2 vs BYOL benchmark's ablation)."""

    predictor: bool = setting(True, "the online side's predictor head (false: the online projection regresses the "
                                    "target's)")


def regression_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL's normalised mean squared error per row (the last axis, broadcast): ||p / ||p|| - z / ||z|| ||^2 =
    2 - 2 cos(p, z), in at least float32."""
    p, z = (F.normalize(t, dim=-1) for t in full_precision(prediction, target))
    return 2 - 2 * (p * z).sum(dim=-1)


def retrieval_top1(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Share of predictions whose nearest target (cosine) in the batch is their own sample's: the pretext accuracy."""
    similarity = F.normalize(prediction.float(), dim=1) @ F.normalize(target.float(), dim=1).T
    return (similarity.argmax(dim=1) == torch.arange(len(similarity), device=similarity.device)).float().mean()


class OnlineNetwork(nn.Module):
    """The online encoder and projector, then the predictor: one module, so that one DDP wrapper averages every
    trained gradient."""

    def __init__(self, encoder: nn.Module, predictor: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.predictor = predictor

    def forward(self, x: torch.Tensor) -> tuple[EncoderOutput, torch.Tensor]:
        """The online output for x (N, C, H, W) and its prediction q(g(f(x))) (N, D), from the unnormalised
        projection."""
        out = self.encoder(x)
        return out, self.predictor(out.projection)


def crop_predictions(online: nn.Module, crops: torch.Tensor) -> list[torch.Tensor]:
    """The online predictions q_theta(g_theta(f_theta(s_l))) of the small crops (B, L, C, h, w): L tensors (B, D),
    from one crop-major forward (methods.multicrop.crop_major) of `online` (an OnlineNetwork or its DDP wrapper)."""
    _, q = online(crop_major(crops))
    return list(q.unflatten(0, (crops.shape[1], crops.shape[0])))


class ByolStep:
    """BYOL's Algorithm 1, one step (with multi-crop's small crops s_1..s_L where drawn):

        v, v' = t(x), t'(x)                           # views 0 and 1
        q, q' = q_theta(g_theta(f_theta(v))), ...(v')  # online predictions of both views
        q_l = q_theta(g_theta(f_theta(s_l)))           # and of each small crop: one crop-major forward
        z, z' = g_xi(f_xi(v)), g_xi(f_xi(v'))          # target projections, no gradient (shuffle-BN, as MoCo's keys),
                                                       # of the large views only: the target never sees a small crop
        loss = sum over (a, b), a in [q, q', q_1..q_L], b in [z, z'], not the same view, of mean ||a^ - b^||^2
             = mean(||q^ - z'^||^2 + ||q'^ - z^||^2) without small crops  # ^: L2-normalised, each term 2 - 2 cos
        # then the loop: loss.backward(); SGD on theta (f, g, q); xi <- tau xi + (1 - tau) theta (f, g only)
    """

    def __init__(self, model: MoCo, online: nn.Module) -> None:
        """online: OnlineNetwork of the model's f_q and predictor (or its DDP wrapper under torchrun)."""
        self.model = model
        self.online = online

    def __call__(self, views: torch.Tensor, rng: StepRandom, labels: torch.Tensor | None = None,
                 boxes: torch.Tensor | None = None, epoch: int = 0, step: int = 0,
                 flips: torch.Tensor | None = None, local_views: torch.Tensor | None = None,
                 local_boxes: torch.Tensor | None = None) -> StepOutput:
        """views (B, V, C, H, W): views 0 and 1 of each sample; local_views (B, L, C, h, w): multi-crop's small crops,
        when drawn. Nothing is enqueued; the trained embeddings are the large views' predictions q, q'
        (unnormalised)."""
        v, v_prime = views[:, 0], views[:, 1]
        online, q = self.online(v)
        _, q_prime = self.online(v_prime)
        predictions = [q, q_prime] + ([] if local_views is None else crop_predictions(self.online, local_views))
        z = self.model.key(v, rng("shuffle")).embedding
        z_prime = self.model.key(v_prime, rng("shuffle")).embedding
        targets = [z, z_prime]
        loss = sum(regression_loss(p, t).mean()
                   for a, p in enumerate(predictions) for b, t in enumerate(targets) if a != b)
        metrics = {"loss": loss.detach(), "proxy_top1": retrieval_top1(q.detach(), z_prime)}
        return StepOutput(loss=loss, keys=None, metrics=metrics,
                          signal=CollapseSignal(online.embedding.detach(), loss.detach()), trained=[q, q_prime])

    def pair_losses(self, views: torch.Tensor, rng: StepRandom) -> torch.Tensor:
        """[i, a, b] = ||q_a^ - z_b^||^2 + ||q_b^ - z_a^||^2 of sample i for candidates (B, V, C, H, W): its term of
        the loss with views a and b (hard_views.py). Multi-crop's small crops are not scored: the pair the step
        trains is chosen among the large views, and the crops' terms ride along with it. Each view slot is
        normalised on its own, as the step's one-view forwards are; the target's shuffle draws from HVS's stream."""
        online = unwrapped(self.online)
        with scoring([online, self.model.encoder_k], views.shape[1]):
            q = online(views.flatten(0, 1))[1].unflatten(0, views.shape[:2])
            z = self.model.key(views, rng(SCORING_STREAM)).embedding
        losses = regression_loss(q.unsqueeze(2), z.unsqueeze(1))  # [i, a, b]: q_a against z_b
        return losses + losses.transpose(1, 2)


@register
class Byol(Objective):
    """objective: byol. Multi-crop's small crops are read by the step itself."""

    name = "byol"
    label = "BYOL-pretrained"
    needs = Needs(views=2, momentum_encoder=True, queue=False, predictor=True, local_views=True, pair_losses=True)
    section = ByolConfig
    trained_embeddings = True  # the predictions q, q' (what its loss compares with the target)
    distillation = "the regression 2 - 2 cos(prediction, target)"

    @classmethod
    def needs_for(cls, cfg: Config) -> Needs:
        """A predictor unless byol.predictor is false."""
        return replace(cls.needs, predictor=cfg.byol.predictor)

    def forwards(self) -> Forwards:
        """Both views through the online network (trained) and through the target (compute_cost.py adds multi-crop's
        small crops, as online forwards: the target never sees them); HVS scores each candidate through both."""
        return Forwards(trained=2, target=2, candidate=2)

    def distillation_loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """BYOL's regression loss between each prediction and its target, averaged over the batch."""
        return regression_loss(prediction, target).mean()

    def build_step(self, model: MoCo, methods: list[Method], wrap: Wrap, num_classes: int) -> Step:
        """ByolStep on the wrapped online network."""
        predictor = model.predictor if model.predictor is not None else nn.Identity()
        return ByolStep(model, wrap(OnlineNetwork(model.encoder_q, predictor)))
