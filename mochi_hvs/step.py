"""One MoCo-v2 step: the loss of a batch of views, and the keys to enqueue after the update."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn as nn

from .collapse import CollapseSignal
from .loss import contrastive_logits, info_nce, positive_rank_top1
from .methods import ExtraNegatives, ExtraQueries, Method, StepContext, ViewChoice, pick_view
from .models.moco import EncoderOutput, MoCo
from .random_streams import StepRandom

Pair = tuple[torch.Tensor | int, torch.Tensor | int]  # (query view, key view): ints, or (B,) per sample


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


@dataclass
class Queries:
    """One set of queries a direction scores: queries q (N, D) against their keys k (N, D), in their context; the
    weight of their InfoNCE, and the section of the method that brought them ("": the whole view's)."""

    q: torch.Tensor
    k: torch.Tensor
    ctx: StepContext
    weight: float = 1.0
    section: str = ""


class Score(NamedTuple):
    """A query set's weighted InfoNCE, its metrics and its collapse signal."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]
    signal: CollapseSignal


@dataclass
class Direction:
    """One direction of the step: its loss and metrics, its first query set's collapse signal, its trained queries
    (B, D) and its keys (B, D)."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]
    signal: CollapseSignal
    trained: torch.Tensor
    keys: torch.Tensor


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

    __call__ and _direction below it read as these lines, top to bottom; the helpers after them hold the method
    plumbing. The queue is read once per step, here; methods see it through the StepContext, with the views' crop
    boxes and flips, and, for each direction, the pair of views it trains (ctx.pair) and their encoder outputs
    (ctx.query, ctx.key). Nothing of a step outlives it: each call encodes its own inputs.
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
        queue = self.model.queue  # read once per step, here
        ctx = StepContext(views, boxes, labels, queue.features, queue.labels, rng, epoch, step,
                          local_views=local_views, local_boxes=local_boxes, flips=flips,
                          dense=any(m.needs_dense for m in active))
        ctx.extra_negatives = self._all_negatives(active, ctx)
        choice = next((c for m in active if (c := m.choose_views(ctx)) is not None), None)  # [choose_views]
        pair: Pair = (0, 1) if choice is None else (choice.query_view, choice.key_view)
        per_step: dict[Method, ExtraQueries | None] = {}  # queries_per_step methods' queries, for both directions
        first = self._direction(pair, choice, active, ctx, per_step)
        second = self._direction((pair[1], pair[0]), choice, active, ctx, per_step) if self.symmetric else None
        return _output(first, second, choice, labels)

    def _direction(self, pair: Pair, choice: ViewChoice | None, active: list[Method], ctx: StepContext,
                   per_step: dict[Method, ExtraQueries | None]) -> Direction:
        """Algorithm 1 in one direction: queries of view pair[0] against keys of view pair[1], the queue and the
        methods' negatives. The first query set (the whole view's, or the first method's replacing it) reports its
        metrics under their plain names, reaches the methods' extra_loss and is the collapse monitor's signal."""
        x_q = pick_view(ctx.views, pair[0])
        key = self._keys(pair[1], choice, ctx)  # k = f_k(x_k).detach()
        replaced = any(m.replaces_query for m in active)
        query = None if replaced else self.query_encoder(x_q, dense=ctx.dense)  # q = f_q(x_q)
        ctx = dataclasses.replace(ctx, pair=pair, key=key, query=query)
        sets = [] if query is None else [Queries(query.embedding, key.embedding, ctx)]
        sets += self._extra_queries(x_q, key.embedding, ctx, active, per_step)  # [extra_queries]
        if not sets:
            raise RuntimeError("a method replaces the whole view's query but brought no queries of its own")
        scores = [self._score(s, active, i == 0) for i, s in enumerate(sets)]  # l_pos, l_neg, [extra_negatives], CE
        loss = functools.reduce(torch.add, [score.loss for score in scores])
        metrics = {name: value for score in scores for name, value in score.metrics.items()}
        for term in (t for m in active if (t := m.extra_loss(sets[0].q, sets[0].k, sets[0].ctx)) is not None):
            loss = loss + term.loss  # [extra_loss]
            metrics.update(term.metrics)
        return Direction(loss, metrics, scores[0].signal, sets[0].q[:len(x_q)], key.embedding)

    def _score(self, queries: Queries, active: list[Method], plain: bool) -> Score:
        """The weighted InfoNCE of the queries against their keys, the queue and the methods' negatives; its metrics,
        named under the section of the method that brought the queries unless `plain`; and its collapse signal (the
        queries, the InfoNCE, and ln of the number of logits: its value when all are equal)."""
        q, ctx = queries.q, queries.ctx
        logits = contrastive_logits(q, queries.k, ctx.negatives)
        metrics = {"proxy_top1": positive_rank_top1(logits.detach())}
        extras = self._extra_negatives(active, q, logits[:, 1:], ctx)
        for extra in extras:
            metrics.update(extra.metrics(logits, ctx))
        if extras:
            logits = torch.cat([logits, *(extra.logits.to(logits.dtype) for extra in extras)], dim=1)
        loss = info_nce(logits, self.temperature)
        prefix = "" if plain else f"{queries.section}/"
        return Score(queries.weight * loss, {prefix + name: value for name, value in metrics.items()},
                     CollapseSignal(q.detach(), loss.detach(), math.log(logits.shape[1])))

    def _keys(self, view: torch.Tensor | int, choice: ViewChoice | None, ctx: StepContext) -> EncoderOutput:
        """f_k's output for the given view of each sample: reused when the view choice computed it, else encoded."""
        if choice is not None and choice.keys is not None:
            return choice.keys.map(lambda t: pick_view(t, view))
        return self.model.key(pick_view(ctx.views, view), ctx.rng("shuffle"), ctx.dense)

    def _extra_queries(self, x_q: torch.Tensor, k: torch.Tensor, ctx: StepContext, active: list[Method],
                       per_step: dict[Method, ExtraQueries | None]) -> list[Queries]:
        """The active methods' own queries for this direction, each set of G x B against its samples' keys; a
        queries_per_step method is asked on the step's first direction only, and the second scores the same."""
        sets = []
        for method in active:
            extra = per_step[method] if method in per_step else method.extra_queries(x_q, self.query_encoder, ctx)
            if method.queries_per_step:
                per_step[method] = extra
            if extra is not None:
                sets.append(_tiled(extra, k, ctx, method.section))
        return sets

    def _all_negatives(self, active: list[Method], ctx: StepContext
                       ) -> Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor] | None:
        """Every active method's synthetic negatives for a query, as one (B, S) logits tensor (StepContext's
        extra_negatives, what HVS scores with); None when no active method adds any."""
        if not any(m.adds_negatives for m in active):
            return None
        return lambda q, logits, generator: torch.cat(
            [extra.logits for extra in self._extra_negatives(active, q, logits, ctx, generator)], dim=1)

    @staticmethod
    def _extra_negatives(methods: list[Method], q: torch.Tensor, negative_logits: torch.Tensor, ctx: StepContext,
                         generator: torch.Generator | None = None) -> list[ExtraNegatives]:
        """The synthetic negatives the methods bring for queries q (B, D) with queue logits (B, K)."""
        return [e for m in methods if (e := m.extra_negatives(q, negative_logits, ctx, generator)) is not None]


def _tiled(extra: ExtraQueries, k: torch.Tensor, ctx: StepContext, section: str) -> Queries:
    """A method's G sets of queries (G, B, D) as one set of G x B queries (set-major), with the keys k (B, D) and the
    context's labels repeated to match: each query is scored against its own sample's key."""
    sets = extra.queries.shape[0]
    labels = None if ctx.labels is None else ctx.labels.repeat(sets)
    return Queries(extra.queries.flatten(0, 1), k.repeat(sets, 1), dataclasses.replace(ctx, labels=labels),
                   extra.weight, section)


def _output(first: Direction, second: Direction | None, choice: ViewChoice | None,
            labels: torch.Tensor | None) -> StepOutput:
    """The step's output from its direction(s): losses summed, metrics averaged, every direction's keys to enqueue,
    the first direction's collapse signal, and the view choice's metrics."""
    loss, metrics, keys, key_labels, trained = first.loss, first.metrics, first.keys, labels, [first.trained]
    if second is not None:
        loss = loss + second.loss
        metrics = {key: 0.5 * (metrics[key] + second.metrics[key]) for key in metrics}
        keys = torch.cat([first.keys, second.keys], dim=0)
        key_labels = None if labels is None else torch.cat([labels, labels], dim=0)
        trained.append(second.trained)
    if choice is not None:
        metrics.update(choice.metrics)
    return StepOutput(loss=loss, keys=keys, key_labels=key_labels, metrics={"loss": loss.detach(), **metrics},
                      per_sample={} if choice is None else choice.per_sample, signal=first.signal, trained=trained)
