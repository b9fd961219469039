"""One MoCo-v2 step: the loss of a batch of views, and the keys to enqueue after the update."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .collapse import CollapseSignal
from .loss import contrastive_logits, info_nce, positive_rank_top1
from .methods import ExtraQueries, Method, StepContext, ViewChoice, pick_view
from .models.moco import EncoderOutput, MoCo
from .random_streams import StepRandom


@dataclass
class StepOutput:
    """The loss to back-propagate, the keys (and their labels) to enqueue after the update, detached metrics, what
    the collapse monitor reads, and the trained embeddings a regulariser reads (objectives/msbreg.py)."""

    loss: torch.Tensor
    keys: torch.Tensor | None  # None: nothing to enqueue (the supervised reference)
    key_labels: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    per_sample: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. HVS IoUs, for histograms
    signal: CollapseSignal | None = None  # None: not monitored (the supervised reference)
    # the trained embeddings (B, D), with gradient, row i of each from sample i: one per view or direction scored;
    # filled by the objectives that declare `trained_embeddings` (registry.Declared)
    trained: list[torch.Tensor] = field(default_factory=list)


Scored = tuple[torch.Tensor, torch.Tensor, StepContext]  # queries (N, D), their keys (N, D), their context


def _tiled(queries: torch.Tensor, k: torch.Tensor, ctx: StepContext) -> Scored:
    """G sets of queries (G, B, D) as one batch of G x B queries (set-major), with the keys and the context's labels
    repeated to match: each query is scored against its own sample's key."""
    sets = queries.shape[0]
    labels = None if ctx.labels is None else ctx.labels.repeat(sets)
    return queries.flatten(0, 1), k.repeat(sets, 1), dataclasses.replace(ctx, labels=labels)


def _mean_metrics(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: 0.5 * (a[key] + b[key]) for key in a}


class ContrastiveStep:
    """MoCo's Algorithm 1 (He et al., 2020), with the places where methods (mochi_hvs/methods/) plug in:

        x_q, x_k = aug(x), aug(x)          # the data path draws views_per_image(cfg) views
        [choose_views]                     # a method may pick the pair per sample (HVS), else views 0 and 1
        k = f_k(x_k).detach()              # shuffle-BN; reused when choose_views computed the keys
        q = f_q(x_q)                       # skipped when a method's queries replace it (Fast-MoCo)
                                           # (encoders return EncoderOutput: q, k are its embeddings; dense maps
                                           # computed when a method needs them, LC-loss)
        l_pos = q . k                      # (B, 1)
        l_neg = q . queue                  # (B, K): the step's one read of the queue
        [extra_negatives]                  # methods add synthetic negatives' logits (MoCHi)
        loss = CE([l_pos, l_neg, ...] / t, 0)
        [extra_queries]                    # methods' own queries, scored as q is, weighted means added (Fast-MoCo)
        [extra_loss]                       # methods add loss terms (ctx.pair: this direction's views)
        (symmetric: the same with x_q and x_k swapped, losses summed)
        # then the loop: loss.backward(); SGD on f_q; f_k = m f_k + (1 - m) f_q; enqueue(k)

    The queue is read once per step, here; methods see it through the StepContext, with the views' crop boxes and
    flips, and, for each direction, the pair of views it trains (ctx.pair) and their encoder outputs (ctx.query,
    ctx.key). Nothing of a step outlives it: each call encodes its own inputs.
    """

    def __init__(self, model: MoCo, temperature: float, symmetric: bool, methods: list[Method] | None = None,
                 query_encoder: nn.Module | None = None) -> None:
        """query_encoder: what trained queries go through (the DDP wrapper of model.encoder_q under torchrun)."""
        self.model = model
        self.query_encoder = query_encoder or model.encoder_q
        self.temperature = temperature
        self.symmetric = symmetric
        self.methods = methods or []

    def __call__(self, views: torch.Tensor, rng: StepRandom, labels: torch.Tensor | None = None,
                 boxes: torch.Tensor | None = None, epoch: int = 0, step: int = 0,
                 local_views: torch.Tensor | None = None, local_boxes: torch.Tensor | None = None,
                 flips: torch.Tensor | None = None) -> StepOutput:
        """views (B, V, C, H, W) with crop boxes (B, V, 4) and flips (B, V); labels (B,), where known, travel with the
        keys into the queue for analysis metrics only; local_views (B, L, C, h, w) with boxes (B, L, 4): multi-crop's
        small crops, for the methods. The methods active at (epoch, step) take part."""
        active = [m for m in self.methods if m.active(epoch, step)]
        queue = self.model.queue
        ctx = StepContext(views, boxes, labels, queue.features, queue.labels, rng, epoch, step,
                          local_views=local_views, local_boxes=local_boxes, flips=flips,
                          dense=any(m.needs_dense for m in active))
        if any(m.adds_negatives for m in active):
            ctx.extra_negatives = lambda q, logits, generator: torch.cat(
                [extra.logits for extra in self._extra_negatives(active, q, logits, ctx, generator)], dim=1)
        choice = next((c for m in active if (c := m.choose_views(ctx)) is not None), None)
        query_view, key_view = (0, 1) if choice is None else (choice.query_view, choice.key_view)
        per_step: dict[Method, ExtraQueries | None] = {}  # queries_per_step methods' queries, for both directions
        k = self._keys(views, key_view, choice, rng, ctx.dense)
        loss, metrics, signal, queries = self._direction(pick_view(views, query_view), k, active,
                                                         dataclasses.replace(ctx, pair=(query_view, key_view)),
                                                         per_step)
        trained = [queries]
        keys, key_labels = k.embedding, labels
        if self.symmetric:
            k_reverse = self._keys(views, query_view, choice, rng, ctx.dense)
            loss_reverse, metrics_reverse, _, queries_reverse = self._direction(
                pick_view(views, key_view), k_reverse, active, dataclasses.replace(ctx, pair=(key_view, query_view)),
                per_step)
            trained.append(queries_reverse)
            loss = loss + loss_reverse
            metrics = _mean_metrics(metrics, metrics_reverse)
            keys = torch.cat([k.embedding, k_reverse.embedding], dim=0)
            key_labels = None if labels is None else torch.cat([labels, labels], dim=0)
        if choice is not None:
            metrics.update(choice.metrics)
        return StepOutput(loss=loss, keys=keys, key_labels=key_labels, metrics={"loss": loss.detach(), **metrics},
                          per_sample={} if choice is None else choice.per_sample, signal=signal, trained=trained)

    def _keys(self, views: torch.Tensor, view: torch.Tensor | int, choice: ViewChoice | None, rng: StepRandom,
              dense: bool) -> EncoderOutput:
        """f_k's output for the given view of each sample: reused when the view choice computed it, else encoded."""
        if choice is not None and choice.keys is not None:
            return choice.keys.map(lambda t: pick_view(t, view))
        return self.model.key(pick_view(views, view), rng("shuffle"), dense)

    @staticmethod
    def _extra_negatives(methods: list[Method], q: torch.Tensor, negative_logits: torch.Tensor, ctx: StepContext,
                         generator: torch.Generator | None = None) -> list:
        return [e for m in methods if (e := m.extra_negatives(q, negative_logits, ctx, generator)) is not None]

    def _direction(self, x_q: torch.Tensor, key: EncoderOutput, active: list[Method], ctx: StepContext,
                   per_step: dict[Method, ExtraQueries | None]
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor], CollapseSignal, torch.Tensor]:
        """InfoNCE of queries from x_q against keys `key`, the queue and the methods' negatives, plus their terms,
        and this direction's trained queries (B, D).

        The first query set scored (the whole view's, or the first method's queries replacing it) reports its
        metrics under their plain names, its queries reach the methods' extra_loss, and its queries and InfoNCE
        are the collapse monitor's signal; further sets are reported under their method's section. The trained
        queries returned are its first B rows: the whole view's queries, or the first of a method's sets.
        """
        loss: torch.Tensor | None = None
        metrics: dict[str, torch.Tensor] = {}
        trained: Scored | None = None
        signal: CollapseSignal | None = None
        k = key.embedding
        ctx = dataclasses.replace(ctx, key=key)
        if not any(m.replaces_query for m in active):
            query = self.query_encoder(x_q, dense=ctx.dense)
            ctx = dataclasses.replace(ctx, query=query)
            q = query.embedding
            loss, metrics, signal = self._score(q, k, ctx, active)
            trained = (q, k, ctx)
        for method in active:
            extra = self._extra_queries(method, x_q, ctx, per_step)
            if extra is None:
                continue
            tiled = _tiled(extra.queries, k, ctx)
            loss_set, metrics_set, signal_set = self._score(*tiled, active)
            prefix = "" if loss is None else f"{method.section}/"
            metrics.update({prefix + name: value for name, value in metrics_set.items()})
            loss = extra.weight * loss_set if loss is None else loss + extra.weight * loss_set
            if trained is None:
                trained, signal = tiled, signal_set
        if loss is None or trained is None or signal is None:
            raise RuntimeError("a method replaces the whole view's query but brought no queries of its own")
        for term in (t for m in active if (t := m.extra_loss(*trained)) is not None):
            loss = loss + term.loss
            metrics.update(term.metrics)
        return loss, metrics, signal, trained[0][:len(x_q)]

    def _extra_queries(self, method: Method, x_q: torch.Tensor, ctx: StepContext,
                       per_step: dict[Method, ExtraQueries | None]) -> ExtraQueries | None:
        """The method's queries for this direction; a queries_per_step method is asked on the step's first direction
        only, and the second scores the same queries."""
        if method in per_step:
            return per_step[method]
        extra = method.extra_queries(x_q, self.query_encoder, ctx)
        if method.queries_per_step:
            per_step[method] = extra
        return extra

    def _score(self, q: torch.Tensor, k: torch.Tensor, ctx: StepContext,
               active: list[Method]) -> tuple[torch.Tensor, dict[str, torch.Tensor], CollapseSignal]:
        """InfoNCE of queries q against keys k, the queue and the methods' negatives, with its metrics and its
        collapse signal (the queries, the InfoNCE, and ln of the number of logits: its value when all are equal)."""
        logits = contrastive_logits(q, k, ctx.negatives)
        metrics = {"proxy_top1": positive_rank_top1(logits.detach())}
        extras = self._extra_negatives(active, q, logits[:, 1:], ctx)
        for extra in extras:
            metrics.update(extra.metrics(logits, ctx))
        if extras:
            logits = torch.cat([logits, *(extra.logits.to(logits.dtype) for extra in extras)], dim=1)
        loss = info_nce(logits, self.temperature)
        return loss, metrics, CollapseSignal(q.detach(), loss.detach(), math.log(logits.shape[1]))
