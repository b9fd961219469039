"""HVS: hard view selection on the positive side (Ferreira et al., "Beyond Random Augmentations").

Each image comes with V candidate views. Every ordered pair (a, b), a != b, is scored per sample with
the MoCo loss itself, q_a against k_b and the queue (plus MoCHi's synthetic negatives on request), and
the step trains the hardest pair. Scoring changes no state: no BatchNorm running statistics, no queue,
no draw from the training path's random streams. All V views go through each encoder in one batched
forward that equals V separate forwards, one per view slot, for every BatchNorm setting: split BN
(each slot gets its own groups), shuffle-BN on one device or across processes (one permutation of the
samples, drawn as for a single view, the views of a sample moving together), and SyncBatchNorm
(statistics per slot, summed over processes). The momentum encoder's embeddings of the candidates are
the very keys the step trains with (computed once), with their dense maps when the step asks for them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..config import Config, MethodConfig, objective_needs, setting
from ..loss import full_precision
from ..models.moco import EncoderOutput, MoCo
from ..models.split_bn import side_effect_free_bn
from .base import Method, StepContext, ViewChoice, register

ExtraLogits = Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class HvsConfig(MethodConfig):
    """HVS hard view selection: V candidate views per image, train on the hardest pair per sample. MoCo-v2 scores
    pairs on its step's hooks; an objective without them that scores pairs itself (Needs.pair_losses) takes it too."""

    read_by: ClassVar[str | None] = "pair_losses"
    num_views: int = setting(4, "V candidates per image (the view sampler draws this many when enabled)", bounds=">= 2")
    mode: str = setting("hardest", "the pair each sample trains on; easiest and random for ablations",
                        ("hardest", "easiest", "random"))
    scorer: str = setting("query", "query: q from f_q, k from f_k; momentum: both from f_k (one forward, cheaper); "
                                   "MoCo-v2's only", ("query", "momentum"))
    select_every: int = setting(1, "select every n steps; other steps train views (0, 1), themselves a random pair",
                                bounds=">= 1")
    start_epoch: int = setting(0, "plain MoCo-v2 on views (0, 1) before this epoch", bounds=">= 0")
    score_resolution: int | None = setting(None, "score on views downscaled to this side, in [8, data.image_size] "
                                                 "(null: full resolution)")
    score_with_mochi: bool = setting(False, "include MoCHi's synthetic negatives in the scoring loss (once mixing "
                                            "runs)")
    reuse_keys: bool = setting(True, "train on the keys computed in scoring (same momentum weights) instead of "
                                     "re-forwarding; MoCo-v2's only (other objectives' steps re-forward the chosen "
                                     "views)")

    def views_per_image(self) -> int:
        """HVS draws its V candidate views per image."""
        return self.num_views

    def validate(self, cfg: Config, source: str) -> None:
        """Scoring no larger than the views, and MoCo's momentum scorer only with MoCo-v2 (an objective that scores
        pairs itself uses its own networks)."""
        self.check(self.score_resolution is None or 8 <= self.score_resolution <= cfg.data.image_size, source,
                   "hvs.score_resolution", f"must be null or in [8, data.image_size={cfg.data.image_size}]")
        self.check(not (self.enabled and self.score_with_mochi and not cfg.mochi.enabled), source,
                   "hvs.score_with_mochi", "needs mochi.enabled")
        self.check(not (self.enabled and self.scorer != "query" and objective_needs(cfg).pair_losses), source,
                   "hvs.scorer", f"must be query with objective={cfg.objective} (it scores pairs with its own loss; "
                   f"{self.scorer} is MoCo-v2's scoring); got {self.scorer!r}")


def box_iou_pairs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of box a[i] with box b[i] (boxes (..., 4) as x0, y0, x1, y1), elementwise."""
    width = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp_min(0)
    height = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp_min(0)
    inter = width * height
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area_a + area_b - inter).clamp_min(1e-12)


def pair_losses(q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor, temperature: float,
                extra_logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Per-sample InfoNCE of every ordered view pair: losses (B, V, V), [i, a, b] = L(q_a, k_b) of sample i.

    q, k: (B, V, D) embeddings; negatives: (K, D). The negatives' log-sum-exp depends on the query view
    only, so it is computed once per view (one (B, K) product at a time) and shared by its V keys.
    extra_logits(q_a, logits_a) may add synthetic negatives (B, S) for query view a (MoCHi).
    Computed in full precision (autocast off, at least float32), as the training step's logits are.
    """
    with torch.autocast(q.device.type, enabled=False):
        q, k, negatives = full_precision(q, k, negatives)
        per_view = []
        for a in range(q.shape[1]):
            logits = q[:, a] @ negatives.t()
            lse = torch.logsumexp(logits / temperature, dim=1)
            if extra_logits is not None:
                lse = torch.logaddexp(lse, torch.logsumexp(extra_logits(q[:, a], logits) / temperature, dim=1))
            per_view.append(lse)
        negative_lse = torch.stack(per_view, dim=1)  # (B, V)
        positive = torch.einsum("bad,bcd->bac", q, k) / temperature
        return torch.logaddexp(positive, negative_lse.unsqueeze(2)) - positive


def random_pairs(batch: int, views: int, generator: torch.Generator | None,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A uniformly random ordered pair (a, b), a != b, per sample."""
    first = torch.randint(views, (batch,), generator=generator, device=device)
    second = torch.randint(views - 1, (batch,), generator=generator, device=device)
    return first, second + (second >= first).long()


def select_pairs(losses: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the (query view, key view) of the highest (hardest) or lowest (easiest) off-diagonal loss."""
    views = losses.shape[1]
    diagonal = torch.eye(views, dtype=torch.bool, device=losses.device)
    if mode == "hardest":
        flat = losses.masked_fill(diagonal, float("-inf")).flatten(1).argmax(dim=1)
    elif mode == "easiest":
        flat = losses.masked_fill(diagonal, float("inf")).flatten(1).argmin(dim=1)
    else:
        raise ValueError(f"select_pairs scores hardest or easiest pairs, not {mode!r}")
    return flat // views, flat % views


def view_choice(first: torch.Tensor, second: torch.Tensor, boxes: torch.Tensor, generator: torch.Generator,
                keys: EncoderOutput | None = None, losses: torch.Tensor | None = None) -> ViewChoice:
    """The pair (first, second) (B,) of each sample with HVS's analysis: the IoU of its crop boxes (B, V, 4) against
    a random pair of the same candidates (drawn from `generator`), and the selected and mean candidate losses (B, V, V)
    when scored."""
    rows = torch.arange(boxes.shape[0], device=boxes.device)
    iou_selected = box_iou_pairs(boxes[rows, first], boxes[rows, second])
    other_a, other_b = random_pairs(boxes.shape[0], boxes.shape[1], generator, boxes.device)
    iou_random = box_iou_pairs(boxes[rows, other_a], boxes[rows, other_b])
    metrics = {"hvs/iou_selected": iou_selected.mean(), "hvs/iou_random": iou_random.mean()}
    if losses is not None:
        off_diagonal = ~torch.eye(losses.shape[1], dtype=torch.bool, device=losses.device)
        metrics["hvs/loss_selected"] = losses[rows, first, second].mean()
        metrics["hvs/loss_candidates"] = losses[:, off_diagonal].mean()
    return ViewChoice(first, second, keys, metrics,
                      per_sample={"hvs/iou_selected": iou_selected, "hvs/iou_random": iou_random})


def rescaled(views: torch.Tensor, size: int | None) -> torch.Tensor:
    """Views (B, V, C, H, W) downscaled to size x size for scoring (antialiased bilinear); as they are when size is
    None or their own."""
    if not size or size == views.shape[-1]:
        return views
    return F.interpolate(views.flatten(0, 1), size=size, mode="bilinear", antialias=True,
                         align_corners=False).unflatten(0, views.shape[:2])


class HardViewSelector:
    """Scores all candidate pairs with the current model and picks one pair per sample."""

    def __init__(self, model: MoCo, temperature: float, symmetric: bool, mode: str = "hardest",
                 scorer: str = "query", score_resolution: int | None = None, reuse_keys: bool = True) -> None:
        self.model = model
        self.temperature = temperature
        self.symmetric = symmetric
        self.mode = mode
        self.scorer = scorer
        self.score_resolution = score_resolution
        self.reuse_keys = reuse_keys

    @torch.no_grad()
    def embed_candidates(self, views: torch.Tensor, generator: torch.Generator,
                         dense: bool = False) -> tuple[torch.Tensor, EncoderOutput]:
        """Query-side embeddings (B, V, D) and the key encoder's output (B, V, ...) of every view, its dense maps
        when asked: one batched forward per encoder.

        Each equals V separate forwards, one per view slot: the key side shuffles samples (one permutation,
        drawn from `generator` first, as a single view's key forward would draw it) with their views together.
        """
        num_views = views.shape[1]
        views = rescaled(views, self.score_resolution)
        encoders = [self.model.encoder_k] if self.scorer == "momentum" else [self.model.encoder_k, self.model.encoder_q]
        with side_effect_free_bn(encoders, view_slots=num_views):
            keys = self.model.key(views, generator, dense)
            queries = (keys.embedding if self.scorer == "momentum"
                       else self.model.encoder_q(views.flatten(0, 1)).embedding.view_as(keys.embedding))
        return queries, keys

    @torch.no_grad()
    def __call__(self, views: torch.Tensor, boxes: torch.Tensor, negatives: torch.Tensor, generator: torch.Generator,
                 extra_negatives: ExtraLogits | None = None, dense: bool = False) -> ViewChoice:
        """Select a pair per sample from views (B, V, C, H, W) with crop boxes (B, V, 4), scoring against the
        queue's keys `negatives` (K, D); draws only from `generator`.

        extra_negatives: score with these synthetic negatives too (e.g. MoCHi's; they draw from `generator`).
        dense: the keys handed to the step for reuse carry their dense maps.
        """
        batch, num_views = views.shape[:2]
        device = views.device
        if self.mode == "random":
            first, second = random_pairs(batch, num_views, generator, device)
            return view_choice(first, second, boxes, generator, keys=None, losses=None)
        full_resolution = not self.score_resolution or self.score_resolution == views.shape[-1]
        reusable = self.reuse_keys and full_resolution
        queries, keys = self.embed_candidates(views, generator, dense and reusable)
        extra = None if extra_negatives is None else lambda q, logits: extra_negatives(q, logits, generator)
        losses = pair_losses(queries, keys.embedding, negatives, self.temperature, extra)
        if self.symmetric:
            losses = losses + losses.transpose(1, 2)
        first, second = select_pairs(losses, self.mode)
        return view_choice(first, second, boxes, generator, keys if reusable else None, losses)


def selects(hvs: HvsConfig, epoch: int, step: int) -> bool:
    """True when HVS picks the pairs of this step: enabled, from hvs.start_epoch, every hvs.select_every steps."""
    return hvs.enabled and epoch >= hvs.start_epoch and step % hvs.select_every == 0


@register
class Hvs(Method):
    """HVS on the method seam: the hardest of every ordered pair of the V candidate views, on selecting steps."""

    section = "hvs"
    config_section = HvsConfig
    order = 20  # hook order (Method.order)

    def __init__(self, cfg: Config, model: MoCo) -> None:
        super().__init__(cfg, model)
        hvs = cfg.hvs
        self.selector = HardViewSelector(model, cfg.moco.temperature, cfg.moco.symmetric, hvs.mode, hvs.scorer,
                                         hvs.score_resolution, hvs.reuse_keys)

    def active(self, epoch: int, step: int) -> bool:
        """From hvs.start_epoch, every hvs.select_every steps (other steps train views 0 and 1)."""
        return selects(self.cfg.hvs, epoch, step)

    def choose_views(self, ctx: StepContext) -> ViewChoice:
        """Score the candidates (with the step's synthetic negatives when hvs.score_with_mochi) and pick a pair."""
        if ctx.boxes is None:
            raise ValueError("HVS needs the crop boxes of the views")
        extra = ctx.extra_negatives if self.cfg.hvs.score_with_mochi else None
        return self.selector(ctx.views, ctx.boxes, ctx.negatives, ctx.rng(self.section), extra, ctx.dense)
