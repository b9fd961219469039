"""USL, unsupervised selective labeling (Wang, Lian and Yu, ECCV 2022): which `budget` images to label, chosen
from L2-normalised self-supervised features alone (no function here sees a label).

1. k-means of the features into `budget` clusters (Faiss, spherical, from greedy k-means++ seedings, the best
   objective of `restarts` runs);
2. the density of every image: 1 / (mean squared distance to its k nearest neighbours);
3. from every cluster the image of highest density - lambda * regulariser. The regulariser of an image is a moving
   average over selection rounds of the sum, over the picks of the other clusters, of 1 / squared distance^alpha:
   round 1 has none (the densest image of each cluster), each further round recomputes it from the last picks, so
   picks close to another cluster's pick move away from the cluster border.

Distances are squared Euclidean distances between unit vectors (2 - 2 cos), as in the authors' code
(github.com/TonyLianLong/UnsupervisedSelectiveLabeling, shared/utils/nn_utils.py: get_selection_with_reg), whose
regulariser defaults (lambda 0.5, alpha 0.5, momentum 0.9, 10 rounds) are the settings' defaults. Deviations from
that code:
- k-means is Faiss's spherical k-means (centroids renormalised, assignment by cosine) from greedy k-means++
  seedings, the best of `restarts` runs by objective from one seed, every image used in training; the authors run
  Euclidean Lloyd iterations (KeOps) from random data points, one run per seed. Random seeding (also Faiss's
  default) misses small tight clusters beside large ones, which greedy k-means++ finds (see the unequal blobs of
  tests/test_label_selection.py);
- an image's k neighbours exclude itself (the authors search the set against itself, so the image counts at
  distance 0 among its k);
- a cluster left empty by the final assignment gives no pick; the shortfall is filled by the highest-scoring images
  not yet chosen (the authors ask for more centroids than images and keep the first picks);
- no horizon distance (the authors' default, 4 for squared distances of unit vectors, excludes no pair);
- the (images x budget) distance matrix of each round is held at once, like the authors' CIFAR path (fine for the
  budgets USL targets on sets of this size; ImageNet-scale budgets would need it in chunks).
"""

from __future__ import annotations

import numpy as np
import torch

from ..config.evaluators import SelectSettings
from ..faiss_index import faiss_on_gpu, import_faiss
from .search import search

EPS = 1e-12  # floor of squared distances (duplicate images) before they are inverted


def kmeans_plus_plus(points: np.ndarray, clusters: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii, 2007; scikit-learn's default) of the unit-norm `points`
    (N, D): `clusters` rows; each step draws 2 + log(clusters) candidates with probability proportional to their
    squared distance to the nearest row chosen before and keeps the one that leaves the smallest total distance."""
    trials = 2 + int(np.log(clusters))
    chosen = [int(rng.integers(len(points)))]
    nearest = np.maximum(2 - 2 * points @ points[chosen[0]], 0).astype(np.float64)
    for _ in range(clusters - 1):
        weights = nearest + EPS  # all zero only when every point duplicates a chosen one
        candidates = rng.choice(len(points), size=trials, p=weights / weights.sum())
        distances = np.minimum(nearest, np.maximum(2 - 2 * points @ points[candidates].T, 0).T)  # (trials, N)
        best = int(distances.sum(axis=1).argmin())
        chosen.append(int(candidates[best]))
        nearest = distances[best]
    return points[chosen]


def spherical_kmeans(features: torch.Tensor, clusters: int, restarts: int = 3, iterations: int = 100,
                     seed: int = 0) -> np.ndarray:
    """The cluster (0 .. clusters - 1) of every row of the unit-norm `features` (N, D), N >= clusters: Faiss
    spherical k-means from greedy k-means++ seedings (drawn on the CPU), the best objective of `restarts` runs, its
    iterations on the GPU when the features are on one Faiss can use."""
    faiss = import_faiss()
    points = np.ascontiguousarray(features.detach().float().cpu().numpy())
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(restarts):
        kmeans = faiss.Kmeans(points.shape[1], clusters, niter=iterations, spherical=True, seed=seed,
                              max_points_per_centroid=len(points), min_points_per_centroid=1,
                              gpu=faiss_on_gpu(faiss, features.device))
        kmeans.train(points, init_centroids=kmeans_plus_plus(points, clusters, rng))
        if best is None or kmeans.obj[-1] > best.obj[-1]:  # the summed cosine similarity to the centroids
            best = kmeans
    return best.assign(points)[1].astype(np.int64)


def knn_density(features: torch.Tensor, k: int) -> torch.Tensor:
    """1 / mean squared distance of every row of the unit-norm `features` to its k nearest other rows (Faiss flat
    inner-product search), on the features' device."""
    if not 0 < k < len(features):
        raise ValueError(f"k must be in [1, {len(features) - 1}] for {len(features)} images; got {k}")
    sims, _ = search(features, features, k + 1, backend="faiss")
    squared = (2 - 2 * sims[:, 1:]).clamp_min(0)  # the first neighbour is the image itself (or its duplicate)
    return 1 / squared.mean(dim=1).clamp_min(EPS)


def best_per_cluster(scores: torch.Tensor, clusters: np.ndarray, budget: int) -> np.ndarray:
    """`budget` distinct indices: the highest-scoring row of each non-empty cluster, then (when clusters are empty)
    the highest-scoring rows not yet picked; ties go to the lower index."""
    order = np.argsort(-scores.detach().cpu().double().numpy(), kind="stable")
    _, first = np.unique(clusters[order], return_index=True)
    picks = order[np.sort(first)]
    rest = order[~np.isin(order, picks)]
    return np.concatenate([picks, rest[:budget - len(picks)]])


def proximity_penalty(features: torch.Tensor, picks: np.ndarray, clusters: np.ndarray, alpha: float) -> torch.Tensor:
    """For every row: the sum over the picks of other clusters of 1 / squared distance^alpha."""
    chosen = torch.as_tensor(picks, device=features.device)
    squared = (2 - 2 * features @ features[chosen].T).clamp_min(EPS)
    labels = torch.as_tensor(clusters, device=features.device)
    other = labels[:, None] != labels[chosen][None, :]
    return (squared.pow(-alpha) * other).sum(dim=1)


def regularised_selection(features: torch.Tensor, density: torch.Tensor, clusters: np.ndarray, budget: int,
                          reg_lambda: float = 0.5, reg_alpha: float = 0.5, momentum: float = 0.9,
                          iterations: int = 10) -> np.ndarray:
    """USL's selection: one image per cluster by density - reg_lambda * regulariser, over `iterations` rounds."""
    regulariser = torch.zeros_like(density)
    picks = best_per_cluster(density, clusters, budget)
    for _ in range(iterations - 1):
        penalty = proximity_penalty(features, picks, clusters, reg_alpha)
        regulariser = momentum * regulariser + (1 - momentum) * penalty
        picks = best_per_cluster(density - reg_lambda * regulariser, clusters, budget)
    return picks


def usl_select(features: torch.Tensor, settings: SelectSettings) -> np.ndarray:
    """Sorted indices of `settings.budget` rows of the unit-norm `features` chosen by USL."""
    s = settings
    clusters = spherical_kmeans(features, s.budget, s.restarts, s.kmeans_iterations, s.seed)
    density = knn_density(features, s.knn_k)
    picks = regularised_selection(features, density, clusters, s.budget, s.reg_lambda, s.reg_alpha, s.reg_momentum,
                                  s.iterations)
    return np.sort(picks)
