"""Collapse of a learned representation, read from a step's embeddings: every input mapped to (nearly) the same
point, or onto a few directions, while the loss stays finite.

Objective-agnostic: an objective's step hands over a `CollapseSignal` (its trained encoder's embeddings and, where
its loss has one, the value that loss takes when its scores carry no information); the training loop measures it
every `log_every` steps (a few milliseconds: one SVD of a batch of embeddings).

- embedding std: the standard deviation of each dimension of the L2-normalised embeddings over the batch, averaged
  over dimensions; about 1 / sqrt(dim) for embeddings spread over the sphere, 0 for one point (SimSiam's measure,
  Chen & He 2021). Read in units of 1 / sqrt(dim).
- rank: RankMe (Garrido et al. 2023), exp of the entropy of the normalised singular values of the normalised
  embeddings: 1 for one direction, up to min(batch, dim) (0 for zero embeddings).
- loss gap: the loss less its uniform value (InfoNCE over n logits: ln n), 0 when every logit is equal.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .config import CollapseConfig


@dataclass(frozen=True)
class CollapseSignal:
    """What a step hands the monitor: embeddings (N, D) of its trained encoder, detached; where the objective has
    one, its loss (a scalar tensor) and the value of that loss when its scores are all equal."""

    embeddings: torch.Tensor
    loss: torch.Tensor | None = None
    uniform_loss: float | None = None


def embedding_std(embeddings: torch.Tensor) -> float:
    """Mean over dimensions of the per-dimension std (unbiased) of the L2-normalised rows, in float64."""
    z = F.normalize(embeddings.double(), dim=1)
    return float(z.std(dim=0).mean())


def rankme(embeddings: torch.Tensor) -> float:
    """RankMe: exp of the entropy of the singular values of the L2-normalised rows, normalised to sum to 1; 0 when
    every row is zero (no direction at all: a diverged lr=10000 run's embeddings)."""
    z = F.normalize(embeddings.double(), dim=1)
    singular = torch.linalg.svdvals(z)
    if not singular.sum() > 0:
        return 0.0
    p = singular / singular.sum()
    return float(torch.exp(-torch.special.xlogy(p, p).sum()))


@dataclass(frozen=True)
class CollapseReading:
    """One check: the measures and whether they say collapsed."""

    std_ratio: float  # embedding std x sqrt(dim): about 1 when spread, 0 when collapsed
    rank: float
    loss_gap: float | None  # None: the objective has no uniform value
    collapsed: bool

    def metrics(self) -> dict[str, float]:
        """The logged scalars (collapse/...)."""
        gap = {} if self.loss_gap is None else {"collapse/loss_gap": self.loss_gap}
        return {"collapse/std_ratio": self.std_ratio, "collapse/rank": self.rank, **gap,
                "collapse/collapsed": float(self.collapsed)}

    def describe(self) -> str:
        """The measures in words, for messages."""
        gap = "" if self.loss_gap is None else f", loss {self.loss_gap:+.2g} from its uniform value"
        return f"embedding std {100 * self.std_ratio:.2g}% of a spread one's 1/sqrt(dim), rank {self.rank:.2f}{gap}"


def read(signal: CollapseSignal, settings: CollapseConfig) -> CollapseReading:
    """Measure a signal; collapsed when the std or the rank falls below its floor, or the loss sits at its uniform
    value."""
    z = signal.embeddings
    std_ratio = embedding_std(z) * math.sqrt(z.shape[1])
    rank = rankme(z)
    gap = None
    if signal.loss is not None and signal.uniform_loss is not None:
        gap = float(signal.loss) - signal.uniform_loss
    pinned = gap is not None and abs(gap) < settings.loss_tolerance
    collapsed = std_ratio < settings.min_std or rank < settings.min_rank or pinned
    return CollapseReading(std_ratio, rank, gap, collapsed)


class CollapseMonitor:
    """Reads each check and counts consecutive collapsed ones: the representation stays collapsed after
    `patience` of them (a single dip, e.g. in warm-up, does not count)."""

    def __init__(self, settings: CollapseConfig) -> None:
        self.settings = settings
        self.streak = 0
        self.since: int | None = None  # the step of the streak's first collapsed check
        self.last: CollapseReading | None = None

    def check(self, signal: CollapseSignal, step: int) -> CollapseReading:
        """Read `signal` at `step` and update the streak."""
        reading = read(signal, self.settings)
        self.streak = self.streak + 1 if reading.collapsed else 0
        if not reading.collapsed:
            self.since = None
        elif self.since is None:
            self.since = step
        self.last = reading
        return reading

    @property
    def stays_collapsed(self) -> bool:
        """Whether the last `patience` checks were all collapsed."""
        return self.streak >= self.settings.patience

    def summary(self) -> dict[str, Any] | None:
        """The run summary's record of the last check (None before any): its measures, whether it was collapsed
        and since which step."""
        if self.last is None:
            return None
        return {**asdict(self.last), "since_step": self.since}
