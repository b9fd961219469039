"""MSBReg (Kim, Canny et al. 2022), objective: msbreg, and the same terms as a regulariser of any objective
(msbreg.regularise).

The paper treats embeddings as particles moved by three forces: a multi-view centroid loss pulling the online
network's embeddings of an image's views toward a lagged (EMA) target network's, a singular value loss pushing the
particle system toward a spatially uniform density, and a Brownian diffusive loss, a random force on each embedding
that needs no knowledge of the other particles. Its exact equations were not at hand; the formulas below are our
reading of its abstract.

The objective has BYOL's architecture (byol.py: online encoder, projector and predictor; an EMA target without the
predictor, no gradient). For the views v of sample i, o_v,i = normalize(q(g(f(v)))) are the online predictions and
t_v,i = normalize(g_xi(f_xi(v))) the target's projections. The online views are the two large views and, with
multi-crop (multicrop.enabled, Needs.local_views), the L small crops: V = 2 + L, as the paper's multi-view centroid
takes several views of an image; the target sees the two large views only (as BYOL's and ReLICv2's multi-crop):

    centroid  = mean_i (2 - 2 c_o,i . c_t,i),   c_o,i = normalize(mean_v o_v,i) over the V online views,
                c_t,i = normalize(mean_v t_v,i) over the two large views
    singular  = r sum_k p_k^2 - 1 = r ||C||_F^2 / tr(C)^2 - 1,   p_k = s_k^2 / sum_j s_j^2
                (Z: the o of all V views stacked, N = V B rows, centred over rows; s_k its singular values;
                 C = Z^T Z; r = min(N - 1, D): 0 when the variance is spread evenly over r directions, r - 1 when
                 it lies along one; a batch of one repeated point reads -1, without gradient)
    brownian  = mean_{i,v} (1 + o_v,i . u_i),   u_i a random unit vector per sample and step (stream "msbreg"),
                shared by the sample's views
    loss = msbreg.centroid x centroid + msbreg.singular x singular + msbreg.brownian x brownian

    msbreg: {momentum: 0.99, momentum_schedule: cosine, centroid: 1.0, singular: 1.0, brownian: 0.1,
             regularise: false}

With `msbreg.regularise: true` and another objective (contrastive: "MoCo-v2 + MSBReg"), that objective's step is
wrapped: msbreg.singular x singular + msbreg.brownian x brownian, computed on its trained embeddings
(StepOutput.trained, L2-normalised), is added to its loss (the dispersive terms; the attractive one is what every
objective has already). The section's momentum settings are then unused (the objective's own target moves).
Under torchrun the singular value term reads each process's own batch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..collapse import CollapseSignal
from ..config import Config, setting
from ..loss import full_precision
from ..methods import Method
from ..models.moco import MoCo
from ..random_streams import StepRandom
from ..step import StepOutput
from .base import Objective, Step, Wrap
from .byol import OnlineNetwork, crop_predictions, retrieval_top1
from .ema import TargetEma
from .hard_views import SCORING_STREAM, scoring, unwrapped
from .registry import OBJECTIVES, Forwards, Needs, declared, register

STREAM = "msbreg"  # the step's random stream of the Brownian directions


@dataclass
class MsbregConfig(TargetEma):
    """The EMA target's momentum (objective: msbreg), the three terms' weights, and whether the dispersive terms are
    added to another objective's loss instead."""

    centroid: float = setting(1.0, "weight of the multi-view centroid term (the online views' mean pulled to the "
                                   "target's)", bounds=">= 0")
    singular: float = setting(1.0, "weight of the singular value term (the embeddings pushed towards a uniform "
                                   "density)", bounds=">= 0")
    brownian: float = setting(0.1, "weight of the Brownian diffusive term (a random force on each embedding)",
                              bounds=">= 0")
    regularise: bool = setting(False, "add the singular and brownian terms to the configured objective's loss "
                                      "instead (not with objective: msbreg)")

    def validate(self, cfg: Config, source: str) -> None:
        """regularise only with an objective that hands over its trained embeddings (not msbreg itself)."""
        if not self.regularise:
            return
        self.check(cfg.objective != self.name, source, f"{self.name}.regularise",
                   f"adds MSBReg's terms to another objective's loss; objective={self.name} has them already")
        takers = "|".join(n for n, cls in OBJECTIVES.items() if cls.trained_embeddings and n != self.name)
        self.check(declared(cfg.objective).trained_embeddings, source, f"{self.name}.regularise",
                   f"needs an objective whose step hands over its trained embeddings (objective={takers}); "
                   f"objective={cfg.objective} has none")


def unit(embeddings: list[torch.Tensor]) -> torch.Tensor:
    """The views' embeddings (B, D) each, stacked (V, B, D), in float32 at least and L2-normalised."""
    return F.normalize(torch.stack(full_precision(*embeddings)), dim=-1)


def centroid_terms(online: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """2 - 2 c_o,i . c_t,i per sample for unit embeddings (V, ..., D), c_i the normalised mean over the views (axis
    0)."""
    c_online, c_target = F.normalize(online.mean(dim=0), dim=-1), F.normalize(target.mean(dim=0), dim=-1)
    return 2 - 2 * (c_online * c_target).sum(dim=-1)


def brownian_terms(online: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """1 + o_v,i . u_i per sample, averaged over the views (axis 0), for unit embeddings (V, ..., D) and directions u
    (..., D)."""
    return 1 + (online * u).sum(dim=-1).mean(dim=0)


def singular_value_loss(z: torch.Tensor) -> torch.Tensor:
    """r ||C||_F^2 / tr(C)^2 - 1 for the rows of z (N, D) centred, C = Z^T Z, r = min(N - 1, D) (autocast off)."""
    with torch.autocast(z.device.type, enabled=False):
        centred = z - z.mean(dim=0)
        c = centred.T @ centred
        r = min(len(z) - 1, z.shape[1])
        return r * c.square().sum() / c.trace().clamp_min(1e-12).square() - 1


def brownian_directions(rng: StepRandom, batch: int, dim: int) -> torch.Tensor:
    """u (B, D): one random unit vector per sample (standard normal, normalised) from the step's "msbreg" stream."""
    generator = rng(STREAM)
    return F.normalize(torch.randn(batch, dim, generator=generator, device=generator.device), dim=1)


def dispersive_terms(online: torch.Tensor, rng: StepRandom) -> tuple[torch.Tensor, torch.Tensor]:
    """The singular value and Brownian terms of unit embeddings (V, B, D)."""
    u = brownian_directions(rng, online.shape[1], online.shape[2]).to(online.dtype)
    return singular_value_loss(online.flatten(0, 1)), brownian_terms(online, u).mean()


def view_pairs(embeddings: torch.Tensor) -> torch.Tensor:
    """Every ordered pair of views of each sample: embeddings (B, V, D) -> (2, B, V, V, D), [:, i, a, b] the sample's
    views a and b."""
    return torch.stack(torch.broadcast_tensors(embeddings.unsqueeze(2), embeddings.unsqueeze(1)))


class MsbregStep:
    """MSBReg, one step (the module docstring's terms):

        o_v = normalize(q(g(f(v))))  for views 0, 1 and the small crops   # online predictions
        t_v = normalize(g_xi(f_xi(v)))  for views 0 and 1                  # target projections, no gradient
        loss = w_c centroid(o, t) + w_s singular(o) + w_b brownian(o, u)
        # then the loop: loss.backward(); SGD on f, g, q; xi <- tau xi + (1 - tau) theta (f, g only)
    """

    def __init__(self, model: MoCo, online: nn.Module, settings: MsbregConfig) -> None:
        """online: OnlineNetwork of the model's f_q and predictor (or its DDP wrapper under torchrun)."""
        self.model = model
        self.online = online
        self.settings = settings

    def __call__(self, views: torch.Tensor, rng: StepRandom, labels: torch.Tensor | None = None,
                 boxes: torch.Tensor | None = None, epoch: int = 0, step: int = 0,
                 flips: torch.Tensor | None = None, local_views: torch.Tensor | None = None,
                 local_boxes: torch.Tensor | None = None) -> StepOutput:
        """views (B, V, C, H, W): views 0 and 1 of each sample; local_views (B, L, C, h, w): multi-crop's small crops,
        when drawn. Nothing is enqueued; the trained embeddings are the large views' predictions."""
        first, prediction = self.online(views[:, 0])
        predictions = [prediction, self.online(views[:, 1])[1]]
        crops = [] if local_views is None else crop_predictions(self.online, local_views)
        online = unit(predictions + crops)
        target = unit([self.model.key(views[:, v], rng("shuffle")).embedding for v in (0, 1)])
        centroid = centroid_terms(online, target).mean()
        singular, brownian = dispersive_terms(online, rng)
        s = self.settings
        loss = s.centroid * centroid + s.singular * singular + s.brownian * brownian
        metrics = {"loss": loss.detach(), "proxy_top1": retrieval_top1(online[0].detach(), target[1]),
                   "msbreg_centroid": centroid.detach(), "msbreg_singular": singular.detach(),
                   "msbreg_brownian": brownian.detach()}
        return StepOutput(loss=loss, keys=None, metrics=metrics, trained=predictions,
                          signal=CollapseSignal(first.embedding.detach(), loss.detach()))

    def pair_losses(self, views: torch.Tensor, rng: StepRandom) -> torch.Tensor:
        """[i, a, b] = w_c centroid_i + w_b brownian_i of sample i's views a and b for candidates (B, V, C, H, W): its
        part of the loss with views a and b (hard_views.py; the singular value term is one of the whole batch and ranks
        no sample; multi-crop's small crops are not scored, they ride along with the chosen pair). The Brownian
        directions are those the step draws (from a fresh copy of its streams, the step's own untouched). Each view slot
        is normalised on its own, as the step's one-view forwards are; the target's shuffle draws from HVS's stream."""
        online = unwrapped(self.online)
        with scoring([online, self.model.encoder_k], views.shape[1]):
            o = unit([online(views.flatten(0, 1))[1]])[0].unflatten(0, views.shape[:2])
            t = unit([self.model.key(views, rng(SCORING_STREAM)).embedding])[0]
        u = brownian_directions(StepRandom(rng.seed, rng.step, rng.rank, rng.device), o.shape[0], o.shape[2])
        pairs = view_pairs(o)
        centroid = centroid_terms(pairs, view_pairs(t))
        brownian = brownian_terms(pairs, u.to(o.dtype)[:, None, None])
        return self.settings.centroid * centroid + self.settings.brownian * brownian


class RegularisedStep:
    """Another objective's step with MSBReg's dispersive terms on its trained embeddings added to its loss."""

    def __init__(self, step: Step, settings: MsbregConfig) -> None:
        self.step = step
        self.settings = settings

    def __call__(self, views: torch.Tensor, rng: StepRandom, *args: Any, **kwargs: Any) -> StepOutput:
        """The wrapped step's output, its loss (and `loss` metric) with the weighted terms added and the terms as
        metrics."""
        out = self.step(views, rng, *args, **kwargs)
        singular, brownian = dispersive_terms(unit(out.trained), rng)
        loss = out.loss + self.settings.singular * singular + self.settings.brownian * brownian
        metrics = {**out.metrics, "loss": loss.detach(), "msbreg_singular": singular.detach(),
                   "msbreg_brownian": brownian.detach()}
        return dataclasses.replace(out, loss=loss, metrics=metrics)


@register
class Msbreg(Objective):
    """objective: msbreg; and, with msbreg.regularise, its dispersive terms on any objective that hands over its
    trained embeddings."""

    name, label, section = "msbreg", "MSBReg-pretrained", MsbregConfig
    needs = Needs(views=2, momentum_encoder=True, queue=False, predictor=True, local_views=True, pair_losses=True)
    trained_embeddings = True  # the predictions of the large views

    def forwards(self) -> Forwards:
        """Both views through the online network (trained) and through the target, as BYOL (compute_cost.py adds
        multi-crop's small crops as online forwards); HVS scores each candidate through both."""
        return Forwards(trained=2, target=2, candidate=2)

    def build_step(self, model: MoCo, methods: list[Method], wrap: Wrap, num_classes: int) -> Step:
        """MsbregStep on the wrapped online network (byol.OnlineNetwork)."""
        return MsbregStep(model, wrap(OnlineNetwork(model.encoder_q, model.predictor)), self.cfg.msbreg)

    @classmethod
    def wrap_step(cls, cfg: Config, step: Step) -> Step:
        """RegularisedStep around another objective's step when msbreg.regularise."""
        settings: MsbregConfig = getattr(cfg, cls.name)
        return RegularisedStep(step, settings) if settings.regularise and cfg.objective != cls.name else step
