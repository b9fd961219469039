"""MoCHi hard-negative mixing (Kalantidis et al., NeurIPS 2020), fully vectorised over queries and mixes.

For each query q with queue logits l = q . queue, take its N hardest negatives (top-N of l) and make
- s synthetic negatives  h  = normalize(a n_i + (1 - a) n_j),  n_i != n_j from the top-N, a ~ U(0, 1);
- s' harder ones         h' = normalize(b q~ + (1 - b) n_j),   q~ the detached query, b ~ U(0, b_max).
Their logits q . h join this step's logits only (never the queue); the gradient reaches q only through
those dot products (h and h' are constants).

Fast path: with n_i . n_j and the squared norms known, q . h = (a l_i + (1 - a) l_j) / ||a n_i + (1 - a) n_j||
is written from logits already computed, without materialising the normalised mixed features; likewise
q . h' from q . q~ and q~ . n_j. `mixed_logits_reference` builds the features explicitly (for tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..config import APPLY, Config, MethodConfig, setting
from ..models.moco import MoCo
from ..retrieval import Retrieval, build_retrieval
from .base import ExtraNegatives, Method, StepContext, register

NORMALIZE_EPS = 1e-12  # F.normalize's default: x / max(||x||, eps)


@dataclass
class MochiConfig(MethodConfig):
    """MoCHi hard-negative mixing: MoCHi(N, s, s') in the paper's notation."""

    needs_queue: ClassVar[bool] = True

    num_hard: int = setting(1024, "N: hardest queue negatives per query to mix from, in [2, moco.queue_size]")
    num_mix: int = setting(1024, "s: synthetic negatives mixing two hard negatives", bounds=">= 0")
    num_query_mix: int = setting(256, "s': harder synthetic negatives mixing the (detached) query with a hard negative",
                                 bounds=">= 0")
    query_mix_max: float = setting(0.5, "query weight b ~ U(0, query_mix_max)", bounds="(0, 1]")
    warmup_epochs: int = setting(10, "plain MoCo-v2 before this epoch", bounds=">= 0")
    retrieval: str = setting("torch", "torch: exact top-k over the logits already computed; faiss: a Faiss index",
                             ("torch", "faiss"), resume=APPLY)
    faiss_index: str = setting("flat", "flat: exact; ivf: approximate, for large banks", ("flat", "ivf"), resume=APPLY)
    faiss_nlist: int = setting(256, "ivf: inverted lists, their centroids trained on the queue (at most "
                                    "moco.queue_size)", resume=APPLY)
    faiss_nprobe: int = setting(16, "ivf: lists searched per query, at most mochi.faiss_nlist", resume=APPLY)
    path: str = setting("fast", "fast: from the logits, no mixed features; reference: explicit normalised features",
                        ("fast", "reference"), resume=APPLY)

    def validate(self, cfg: Config, source: str) -> None:
        """N within the queue, at least one kind of synthetic negative, Faiss settings that fit the queue."""
        self.check(not self.enabled or 2 <= self.num_hard <= cfg.moco.queue_size, source, "mochi.num_hard",
                   f"must be in [2, moco.queue_size={cfg.moco.queue_size}]; got {self.num_hard}")
        self.check(not self.enabled or self.num_mix + self.num_query_mix > 0, source, "mochi.num_mix",
                   "and mochi.num_query_mix cannot both be 0 when mochi.enabled")
        ivf = self.enabled and self.retrieval == "faiss" and self.faiss_index == "ivf"
        self.check(self.faiss_nlist > 0 and not (ivf and self.faiss_nlist > cfg.moco.queue_size), source,
                   "mochi.faiss_nlist", f"must be positive, and at most moco.queue_size={cfg.moco.queue_size} with "
                   f"the ivf index (its centroids are trained on the queue); got {self.faiss_nlist}")
        self.check(0 < self.faiss_nprobe <= self.faiss_nlist, source, "mochi.faiss_nprobe",
                   f"must be in [1, mochi.faiss_nlist={self.faiss_nlist}]; got {self.faiss_nprobe}")


@dataclass
class MixingDraw:
    """The random choices of one step: pair positions in the top-N, and mixing coefficients."""

    first: torch.Tensor  # (B, s) position of n_i in the query's top-N
    second: torch.Tensor  # (B, s) position of n_j, never equal to `first`
    alpha: torch.Tensor  # (B, s) weight of n_i, U(0, 1)
    query_partner: torch.Tensor  # (B, s') position of n_j mixed with the query
    beta: torch.Tensor  # (B, s') weight of the query, U(0, query_mix_max)


def draw_mixing(batch: int, num_hard: int, num_mix: int, num_query_mix: int, query_mix_max: float,
                generator: torch.Generator | None, device: torch.device) -> MixingDraw:
    """Sample every pair and coefficient of a step at once (ordered pairs of distinct positions)."""
    def randint(high: int, count: int) -> torch.Tensor:
        return torch.randint(high, (batch, count), generator=generator, device=device)

    def uniform(count: int) -> torch.Tensor:
        return torch.rand(batch, count, generator=generator, device=device)

    first = randint(num_hard, num_mix)
    second = randint(max(num_hard - 1, 1), num_mix)
    second = second + (second >= first).long()  # uniform over the other N - 1 positions
    return MixingDraw(first, second, uniform(num_mix), randint(num_hard, num_query_mix),
                      uniform(num_query_mix) * query_mix_max)


def _mix_norm(w1: torch.Tensor, sq1: torch.Tensor, w2: torch.Tensor, sq2: torch.Tensor,
              dot: torch.Tensor) -> torch.Tensor:
    """||w1 x1 + w2 x2|| from ||x1||^2, ||x2||^2 and x1 . x2, floored like F.normalize."""
    squared = w1 * w1 * sq1 + w2 * w2 * sq2 + 2.0 * w1 * w2 * dot
    return squared.clamp_min(0.0).sqrt().clamp_min(NORMALIZE_EPS)


def mixed_logits_fast(q: torch.Tensor, neg_logits: torch.Tensor, bank: torch.Tensor, hard: torch.Tensor,
                      draw: MixingDraw) -> torch.Tensor:
    """Logits (B, s + s') of q against h then h', from the queue logits (B, K) and the bank (K, D)."""
    q, neg_logits, bank = q.float(), neg_logits.float(), bank.float()
    rows_i, rows_j = hard.gather(1, draw.first), hard.gather(1, draw.second)
    with torch.no_grad():
        sq = bank.pow(2).sum(dim=1)
        pair_dot = torch.einsum("bsd,bsd->bs", bank[rows_i], bank[rows_j])
        norm = _mix_norm(draw.alpha, sq[rows_i], 1.0 - draw.alpha, sq[rows_j], pair_dot)
    a = draw.alpha
    mixes = (a * neg_logits.gather(1, rows_i) + (1.0 - a) * neg_logits.gather(1, rows_j)) / norm

    rows_q = hard.gather(1, draw.query_partner)
    partner_logits = neg_logits.gather(1, rows_q)
    q_detached = q.detach()
    with torch.no_grad():
        q_norm = _mix_norm(draw.beta, q_detached.pow(2).sum(dim=1, keepdim=True), 1.0 - draw.beta,
                           sq[rows_q], partner_logits.detach())
    self_logit = (q * q_detached).sum(dim=1, keepdim=True)  # q . q~: value ||q||^2, gradient q~
    b = draw.beta
    query_mixes = (b * self_logit + (1.0 - b) * partner_logits) / q_norm
    return torch.cat([mixes, query_mixes], dim=1)


def mixed_logits_reference(q: torch.Tensor, bank: torch.Tensor, hard: torch.Tensor, draw: MixingDraw) -> torch.Tensor:
    """The same logits computed from explicitly built, normalised mixed features."""
    q, bank = q.float(), bank.float().detach()
    a = draw.alpha.unsqueeze(-1)
    h = F.normalize(a * bank[hard.gather(1, draw.first)] + (1 - a) * bank[hard.gather(1, draw.second)], dim=-1)
    b = draw.beta.unsqueeze(-1)
    h_query = F.normalize(b * q.detach().unsqueeze(1) + (1 - b) * bank[hard.gather(1, draw.query_partner)], dim=-1)
    return torch.einsum("bd,bsd->bs", q, torch.cat([h, h_query], dim=1))


@dataclass
class MixedNegatives(ExtraNegatives):
    """This step's synthetic negatives for each query (`logits`, (B, s + s')), and the hard negatives they came
    from."""

    hard_indices: torch.Tensor  # (B, N) queue rows of the N hardest negatives
    hard_logits: torch.Tensor  # (B, N) their (detached) similarities to q

    def metrics(self, logits: torch.Tensor, ctx: StepContext) -> dict[str, torch.Tensor]:
        """MoCHi's analysis of this step (see mixing_metrics)."""
        return mixing_metrics(logits.detach(), self, ctx.labels, ctx.negative_labels)


class HardNegativeMixer:
    """Finds each query's N hardest queue negatives and synthesises s + s' harder ones from them."""

    def __init__(self, retrieval: Retrieval, num_hard: int, num_mix: int, num_query_mix: int,
                 query_mix_max: float = 0.5, reference: bool = False) -> None:
        self.retrieval = retrieval
        self.num_hard = num_hard
        self.num_mix = num_mix
        self.num_query_mix = num_query_mix
        self.query_mix_max = query_mix_max
        self.reference = reference

    def __call__(self, q: torch.Tensor, neg_logits: torch.Tensor, bank: torch.Tensor,
                 generator: torch.Generator | None = None) -> MixedNegatives:
        """q (B, D) with gradient, neg_logits = q . bank.T (B, K) already computed, bank (K, D).

        Selection and mixing run in float32 with autocast off (give float32 `neg_logits`, as
        `contrastive_logits` makes them): the top-N and the synthetic logits do not depend on autocast.
        """
        with torch.autocast(q.device.type, enabled=False):
            hard_logits, hard = self.retrieval.topk(q, self.num_hard, bank, logits=neg_logits)
            hard = hard.long()
            draw = draw_mixing(q.shape[0], self.num_hard, self.num_mix, self.num_query_mix, self.query_mix_max,
                               generator, q.device)
            if self.reference:
                logits = mixed_logits_reference(q, bank, hard, draw)
            else:
                logits = mixed_logits_fast(q, neg_logits, bank, hard, draw)
        return MixedNegatives(logits=logits, hard_indices=hard, hard_logits=hard_logits)


@torch.no_grad()
def mixing_metrics(logits: torch.Tensor, mixed: MixedNegatives, labels: torch.Tensor | None = None,
                   bank_labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Analysis of one step's mixing, as device scalars (no host sync).

    logits: the (B, 1 + K) MoCo logits (positive first). labels / bank_labels (optional, -1 = unknown):
    used only here, for the class-oracle rate, the share of hard negatives of the query's own class.
    """
    positive = logits[:, :1].float()
    synthetic = mixed.logits.detach().float()
    beats_queue = (positive > logits[:, 1:].float()).all(dim=1)
    metrics = {
        "mochi/proxy_top1_with_synthetic": (beats_queue & (positive > synthetic).all(dim=1)).float().mean(),
        "mochi/logit_positive": positive.mean(),
        "mochi/logit_hard_negative": mixed.hard_logits.float().mean(),
        "mochi/logit_synthetic": synthetic.mean(),
        "mochi/synthetic_above_positive": (synthetic > positive).float().mean(),
    }
    if labels is not None and bank_labels is not None:
        hard_labels = bank_labels[mixed.hard_indices]
        known = (hard_labels >= 0) & (labels[:, None] >= 0)
        same = (hard_labels == labels[:, None]) & known
        metrics["mochi/class_oracle_rate"] = same.sum().float() / known.sum()  # NaN until labels are known
    return metrics


@register
class Mochi(Method):
    """MoCHi on the method seam: synthetic negatives for every query once `mochi.warmup_epochs` have passed."""

    section = "mochi"
    config_section = MochiConfig
    order = 10  # hook order (Method.order)
    adds_negatives = True

    def __init__(self, cfg: Config, model: MoCo) -> None:
        super().__init__(cfg, model)
        mochi = cfg.mochi
        self.warmup_epochs = mochi.warmup_epochs
        retrieval = build_retrieval(mochi.retrieval, mochi.faiss_index, mochi.faiss_nlist, mochi.faiss_nprobe)
        self.mixer = HardNegativeMixer(retrieval, mochi.num_hard, mochi.num_mix, mochi.num_query_mix,
                                       mochi.query_mix_max, reference=mochi.path == "reference")

    def active(self, epoch: int, step: int) -> bool:
        """Plain MoCo-v2 during the warm-up epochs."""
        return epoch >= self.warmup_epochs

    def extra_negatives(self, q: torch.Tensor, negative_logits: torch.Tensor, ctx: StepContext,
                        generator: torch.Generator | None = None) -> MixedNegatives:
        """s + s' synthetic negatives per query, mixed from its N hardest queue negatives."""
        return self.mixer(q, negative_logits, ctx.negatives,
                          ctx.rng(self.section) if generator is None else generator)
