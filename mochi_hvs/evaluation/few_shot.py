"""Few-shot recognition on frozen features: N-way K-shot episodes scored by a prototype classifier (the class means
of L2-normalised support features; each query goes to the prototype of highest cosine similarity), as in Ericsson
et al., "How well do self-supervised models transfer?" (2021).

Support and query images of an episode are drawn from one labelled pool (the transfer suite uses the test split),
disjoint within the episode; only classes with at least K + Q images take part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError

CONFIDENCE_Z = 1.96  # the 95% normal interval


class TooFewImages(UserError, ValueError):
    """Fewer classes than the episodes' ways have enough images for the support and query sets."""


@dataclass(frozen=True)
class Episode:
    """One N-way K-shot episode: indices into the pool, row i belonging to classes[i]."""

    classes: np.ndarray  # (N,) distinct class labels
    support: np.ndarray  # (N, K)
    query: np.ndarray  # (N, Q)


@dataclass(frozen=True)
class FewShotResult:
    """Mean accuracy (percent) over the episodes and the half-width of its 95% interval."""

    ways: int
    shots: int
    episodes: int
    mean: float
    interval: float


def sample_episodes(labels: np.ndarray, ways: int, shots: int, queries: int, episodes: int,
                    seed: int) -> list[Episode]:
    """`episodes` episodes fixed by `seed`: each draws `ways` distinct classes, then for each class `shots` + `queries`
    distinct images, the first `shots` the support and the rest the queries."""
    members = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels[labels >= 0])}
    eligible = np.array(sorted(c for c, rows in members.items() if len(rows) >= shots + queries))
    if len(eligible) < ways:
        raise TooFewImages(f"{ways}-way {shots}-shot episodes with {queries} queries need {ways} classes of at least "
                           f"{shots + queries} images; {len(eligible)} of {len(members)} classes have that many")
    rng = np.random.default_rng(seed)
    sampled = []
    for _ in range(episodes):
        classes = rng.choice(eligible, ways, replace=False)
        drawn = np.stack([rng.choice(members[int(c)], shots + queries, replace=False) for c in classes])
        sampled.append(Episode(classes, drawn[:, :shots], drawn[:, shots:]))
    return sampled


def prototype_accuracy(features: torch.Tensor, episode: Episode) -> float:
    """Accuracy (percent) of the nearest-prototype classifier on one episode's queries; `features` (pool, D)."""
    support = F.normalize(features[torch.from_numpy(episode.support).to(features.device)], dim=-1)  # (N, K, D)
    prototypes = F.normalize(support.mean(dim=1), dim=-1)
    query = F.normalize(features[torch.from_numpy(episode.query).to(features.device)], dim=-1)  # (N, Q, D)
    predicted = (query @ prototypes.T).argmax(dim=-1)  # (N, Q): the row of the prototype chosen
    truth = torch.arange(len(prototypes), device=features.device)[:, None]
    return float((predicted == truth).float().mean() * 100)


def confidence_interval(accuracies: np.ndarray) -> float:
    """Half-width of the 95% interval of the mean: 1.96 * std / sqrt(n) (the population std, numpy's default)."""
    return float(CONFIDENCE_Z * np.std(accuracies) / math.sqrt(len(accuracies)))


@torch.no_grad()
def few_shot_accuracy(features: torch.Tensor, labels: torch.Tensor, ways: int, shots: int, queries: int,
                      episodes: int, seed: int) -> FewShotResult:
    """Mean prototype accuracy and its 95% interval over seeded episodes drawn from the labelled pool."""
    sampled = sample_episodes(labels.cpu().numpy(), ways, shots, queries, episodes, seed)
    accuracies = np.array([prototype_accuracy(features.float(), episode) for episode in sampled])
    return FewShotResult(ways, shots, episodes, float(accuracies.mean()), confidence_interval(accuracies))
