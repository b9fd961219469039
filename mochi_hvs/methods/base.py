"""The method seam: what a training method may add to the MoCo step, and the registry that builds the enabled ones.

A method is one module in mochi_hvs/methods/ with a `Method` subclass registered under its config section's name,
and that section beside it (its `config_section`: a `config.MethodConfig` with `enabled`, its views per image, its
settings and its validation), which registering adds to every Config: config.py names no method. The step calls
the hooks of the methods that are active this step in the order they declare (`Method.order`, lowest first),
whatever order they were imported and registered in; the loop never learns a method's name. Hooks not overridden
add nothing.

The order decides which method's view choice the step takes (the first one's), the order of the synthetic
negatives' logits and of the query sets (the first set reports its metrics under their plain names when a method
replaces the whole view's query), and the order loss terms are added in. The shipped methods run as MoCHi, HVS,
Fast-MoCo, multi-crop, LC.

A method may also bring queries of its own (`extra_queries`, e.g. Fast-MoCo's patch combinations): the step scores
them exactly as the whole view's query (against the key, the queue and every active method's synthetic
negatives). A method whose `replaces_query` is True supplies the query side's loss instead of the whole view: the
step then skips that view's query forward and loss.

A method whose queries do not depend on the direction (`queries_per_step`, multi-crop's small crops) is asked for
them once per step: the symmetric loss's second direction scores the same queries against its own keys.

Methods that need the geometry of the views (LC-loss) read it from the context: each view's crop box and flip,
and `pair`, the (query view, key view) of the direction whose extra_loss is being asked for. The encoder outputs
of that direction's views are in the context too (`query`, `key`); a method whose `needs_dense` is True gets their
dense maps (with dense heads, `MoCo.add_dense_heads`), computed by the very forwards that embed the views.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn as nn

from ..config import METHOD_SECTIONS, Config, MethodConfig
from ..models.moco import EncoderOutput, MoCo
from ..random_streams import StepRandom


@dataclass
class StepContext:
    """What the step shares with the methods: this step's data, the one read of the queue, and the position."""

    views: torch.Tensor  # (B, V, C, H, W): the V views of each sample the data path drew
    boxes: torch.Tensor | None  # (B, V, 4): each view's crop box in the original image
    labels: torch.Tensor | None  # (B,): class labels where known, for analysis metrics only
    negatives: torch.Tensor  # (K, D): the queue's keys, read once by the step
    negative_labels: torch.Tensor | None  # (K,): their labels where known (analysis only)
    rng: StepRandom  # this step's random streams; a method draws from its own (rng(section))
    epoch: int
    step: int
    # The synthetic negatives of every active method for a query: q (B, D), its queue logits (B, K), the generator
    # to draw from -> logits (B, S), or None. Set by the step, for methods that score with the full loss (HVS).
    extra_negatives: Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor] | None = None
    # Multi-crop's small crops of each sample, drawn by the data path when an enabled method asks for them (they
    # have their own size, so they cannot share `views`); None otherwise.
    local_views: torch.Tensor | None = None  # (B, L, C, h, w)
    local_boxes: torch.Tensor | None = None  # (B, L, 4): each small crop's box in the original image
    flips: torch.Tensor | None = None  # (B, V) bool: each view was flipped horizontally after cropping, where known
    # The (query view, key view) of the direction being scored, as ints (the same for every sample) or (B,) per
    # sample (HVS's choice); set by the step for each direction (swapped in the symmetric loss's second).
    pair: tuple[torch.Tensor | int, torch.Tensor | int] = (0, 1)
    # Whether an active method reads dense maps (needs_dense): the step's forwards of whole views then compute them,
    # and so does view selection's key forward, whose keys the step reuses.
    dense: bool = False
    # The encoder outputs of the direction being scored, set by the step: its whole query view's (None when a
    # method replaces that query) and its key view's, one per sample, dense maps included where asked.
    query: EncoderOutput | None = None
    key: EncoderOutput | None = None


@dataclass
class ViewChoice:
    """The pair of views each sample trains on, and (when reusable) every candidate's key embedding."""

    query_view: torch.Tensor  # (B,) view index given to the query encoder
    key_view: torch.Tensor  # (B,) view index given to the momentum encoder
    keys: EncoderOutput | None = None  # (B, V, ...): the momentum encoder's output for all candidates, or None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    per_sample: dict[str, torch.Tensor] = field(default_factory=dict)  # for per-epoch histograms


@dataclass
class ExtraNegatives:
    """Synthetic negatives for each query of one direction: their logits join this step's logits only."""

    logits: torch.Tensor  # (B, S) cosine logits, gradient to q only

    def metrics(self, logits: torch.Tensor, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Analysis of these negatives given the step's (B, 1 + K) logits (positive first); none by default."""
        return {}


@dataclass
class ExtraQueries:
    """Queries a method brings for one direction: G sets of B queries, each set scored against the direction's keys
    like the whole view's query, their InfoNCE averaged over all G x B queries and weighted."""

    queries: torch.Tensor  # (G, B, D) L2-normalised, with gradient; set g, row i is a query of sample i
    weight: float = 1.0


@dataclass
class ExtraLoss:
    """A loss term a method adds to the step's loss, with its metrics."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class Method:
    """A training method plugged into the MoCo step (see the module docstring). Subclasses set `section`, `order`
    and, where the method has settings besides `enabled`, `config_section`."""

    section: ClassVar[str]  # its config section's key, which also names its random stream
    config_section: ClassVar[type[MethodConfig]] = MethodConfig  # that section's dataclass
    order: ClassVar[int]  # its place in the step's hook calls, lowest first; no two registered methods share one
    adds_negatives: ClassVar[bool] = False  # True when extra_negatives is overridden
    replaces_query: bool = False  # True when, while active, its extra_queries replace the whole view's query
    queries_per_step: ClassVar[bool] = False  # True when its extra_queries do not depend on the direction
    needs_dense: ClassVar[bool] = False  # True when it reads the dense maps of ctx.query and ctx.key

    def __init__(self, cfg: Config, model: MoCo) -> None:
        self.cfg = cfg
        self.model = model

    def active(self, epoch: int, step: int) -> bool:
        """Whether the method takes part in this step (e.g. after a warm-up); always, by default."""
        return True

    def choose_views(self, ctx: StepContext) -> ViewChoice | None:
        """Pick the (query view, key view) pair of each sample, or None for the first two views."""
        return None

    def extra_negatives(self, q: torch.Tensor, negative_logits: torch.Tensor, ctx: StepContext,
                        generator: torch.Generator | None = None) -> ExtraNegatives | None:
        """Synthetic negatives for queries q (B, D) with queue logits (B, K); draw from `generator` when given,
        else from the method's own stream."""
        return None

    def extra_queries(self, x_q: torch.Tensor, encoder: nn.Module, ctx: StepContext) -> ExtraQueries | None:
        """Queries of its own from the query views x_q (B, C, H, W), encoded through `encoder` (the trained query
        encoder: its DDP wrapper under torchrun, so that gradients are averaged); none by default. With
        queries_per_step, asked once per step and scored in each direction."""
        return None

    def extra_loss(self, q: torch.Tensor, k: torch.Tensor, ctx: StepContext) -> ExtraLoss | None:
        """A loss term added for one direction (queries q, keys k); none by default. When a method replaces the
        whole view's query, q is its queries flattened (G x B, D) and k the keys repeated to match."""
        return None


def pick_view(values: torch.Tensor, view: torch.Tensor | int) -> torch.Tensor:
    """values[:, view] for one view of every sample, or values[i, view[i]] for a view chosen per sample."""
    if isinstance(view, int):
        return values[:, view]
    return values[torch.arange(values.shape[0], device=values.device), view]


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available under its config section's name, at its declared order, and its
    config section part of every Config (config.METHOD_SECTIONS, kept in the same order)."""
    taken = next((section for section, other in METHODS.items() if other.order == cls.order), None)
    if taken not in (None, cls.section):
        raise ValueError(f"method {cls.section!r} declares order {cls.order}, which method {taken!r} has")
    ordered = sorted({**METHODS, cls.section: cls}.items(), key=lambda item: item[1].order)
    METHODS.clear()
    METHODS.update(ordered)
    METHOD_SECTIONS.clear()
    METHOD_SECTIONS.update((section, method.config_section) for section, method in ordered)
    return cls


def build_methods(cfg: Config, model: MoCo) -> list[Method]:
    """The enabled methods, in their declared order (the order the step calls their hooks in)."""
    return [cls(cfg, model) for section, cls in METHODS.items() if getattr(cfg, section).enabled]
