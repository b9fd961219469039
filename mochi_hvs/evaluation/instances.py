"""Nuclei as instances: the per-pixel classes a segmentation decoder learns (background, interior, boundary), the
instances recovered from its prediction, and the instance metrics of nuclei segmentation, Dice and the aggregated
Jaccard index (AJI, Kumar et al., 2017). An instance map is an (H, W) integer array: 0 background, each nucleus its
own positive id."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
CLASSES = ("background", "interior", "boundary")


def boundaries(instances: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels of an instance with a 4-neighbour outside it (another instance, background or the
    image border)."""
    padded = np.pad(instances, 1, mode="constant", constant_values=0)
    centre = padded[1:-1, 1:-1]
    edge = np.zeros(instances.shape, dtype=bool)
    for shifted in (padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]):
        edge |= shifted != centre
    return edge & (instances > 0)


def instance_classes(instances: np.ndarray) -> np.ndarray:
    """(H, W) int64 targets of the decoder: BACKGROUND, INTERIOR, or BOUNDARY (an instance's outline)."""
    classes = np.where(instances > 0, INTERIOR, BACKGROUND).astype(np.int64)
    classes[boundaries(instances)] = BOUNDARY
    return classes


def instances_from_classes(classes: np.ndarray, min_size: int = 1) -> np.ndarray:
    """Instances from predicted classes: the 4-connected components of the interior (those of fewer than `min_size`
    pixels dropped) are the nuclei, and each boundary pixel joins the nearest one in its 4-connected region of
    nucleus pixels (a marker-based expansion, as watershed on the distance to the interiors); boundary pixels of a
    region with no interior left are background."""
    seeds, count = ndimage.label(classes == INTERIOR)
    if count:
        sizes = np.bincount(seeds.ravel(), minlength=count + 1)
        keep = sizes >= min_size
        keep[0] = False
        seeds = np.where(keep[seeds], seeds, 0)
    if not seeds.any():
        return np.zeros(classes.shape, dtype=np.int32)
    regions, _ = ndimage.label(classes != BACKGROUND)
    _, nearest = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    grown = seeds[nearest[0], nearest[1]]
    same_region = regions[nearest[0], nearest[1]] == regions
    labels = np.where((classes != BACKGROUND) & same_region, grown, 0)
    _, relabelled = np.unique(labels, return_inverse=True)  # ids 1..n in order, 0 stays 0 (it is the smallest)
    return relabelled.reshape(labels.shape).astype(np.int32)


def dice(true: np.ndarray, pred: np.ndarray) -> float:
    """Dice of the foreground (every nucleus pixel against every predicted one): 2 |T n P| / (|T| + |P|); 1 when
    both are empty."""
    t, p = true > 0, pred > 0
    total = int(t.sum() + p.sum())
    return 1.0 if total == 0 else 2.0 * int((t & p).sum()) / total


def aggregated_jaccard(true: np.ndarray, pred: np.ndarray) -> float:
    """AJI: each true nucleus G is paired with the predicted one S of largest IoU with it (if any overlaps);
    C sums |G n S| and U sums |G u S| over the pairs, plus |G| for a nucleus no prediction overlaps and |S| for a
    predicted instance no nucleus chose; AJI = C / U (1 when both maps are empty). A prediction may be chosen by
    several nuclei (it then counts in each pair), as in HoVer-Net's reference implementation."""
    true_ids, true_flat = np.unique(true, return_inverse=True)
    pred_ids, pred_flat = np.unique(pred, return_inverse=True)
    joint = np.zeros((len(true_ids), len(pred_ids)), dtype=np.int64)
    np.add.at(joint, (true_flat.ravel(), pred_flat.ravel()), 1)
    true_fg, pred_fg = true_ids > 0, pred_ids > 0
    inter = joint[np.ix_(true_fg, pred_fg)]
    true_sizes, pred_sizes = joint.sum(1)[true_fg], joint.sum(0)[pred_fg]
    if inter.size == 0:
        union = int(true_sizes.sum() + pred_sizes.sum())
        return 1.0 if union == 0 else 0.0
    union = true_sizes[:, None] + pred_sizes[None, :] - inter
    best = (inter / union).argmax(axis=1)
    rows = np.arange(len(true_sizes))
    paired = inter[rows, best] > 0
    c = int(inter[rows, best][paired].sum())
    u = int(union[rows, best][paired].sum()) + int(true_sizes[~paired].sum())
    chosen = np.zeros(len(pred_sizes), dtype=bool)
    chosen[best[paired]] = True
    u += int(pred_sizes[~chosen].sum())
    return c / u
