"""Fast-MoCo: combinatorial patches (Ci et al., "Fast-MoCo: Boost Momentum-based Contrastive Learning with
Combinatorial Patches", ECCV 2022).

Split-Encode-Combine, on the query side only:
- split: the query view (B, C, H, W) into m x m equal, non-overlapping patches (`split_patches`);
- encode: every patch through the query encoder's backbone, all m^2 x B patches as one batch, patch-major, so
  that each patch falls in its sample's BatchNorm group (sample n of any patch is in group n % splits);
- combine: the backbone features of every subset of n patches averaged (`patch_subsets`, `combine_features`),
  and each of the C(m^2, n) combined features embedded by the projection head and L2-normalised.
Each combination is a query against the key of the other whole view from the momentum encoder (the key side is
unchanged), with the queue's negatives as in MoCo-v2 (and every active method's synthetic negatives, e.g.
MoCHi's, for every combined query); their InfoNCE is averaged over the combinations. By default this loss
replaces the whole view's query loss, as in the paper (fast_moco.mode=replace: the whole query view is never
encoded); fast_moco.mode=add adds it, weighted, to the whole view's loss.

Where to combine: the backbone's pooled features, before the projection head. That is the paper's choice (its
official code averages the backbone outputs of the patches and feeds the averages to the projector), and the
natural one: a ResNet's feature is a global average over locations, so the mean of equal patches' features is
the pooled feature of their union (up to what the patch borders hide from the convolutions), a point of the same
space as a whole view's feature; the non-linear head then embeds it like any view. Averaging head outputs instead
would average normalised embeddings, which is not the embedding of anything the head saw.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..config import Config, MethodConfig, setting
from ..models.moco import MoCo
from .base import ExtraQueries, Method, StepContext, register

# Most patch combinations Fast-MoCo may score per query view: each adds a batch of queries (B rows of 1 + K logits).
MAX_COMBINATIONS = 64


@dataclass
class FastMocoConfig(MethodConfig):
    """Fast-MoCo combinatorial patches: the query view split into grid x grid patches, each encoded by the backbone,
    their features averaged over every subset of `subset` patches, each combination a query against the key."""

    grid: int = setting(2, "m: the query view is split into m x m equal patches (m divides data.image_size; the "
                           "paper: 2)", bounds=">= 1")
    subset: int = setting(2, "n: patches per combination, in [1, m * m]: C(m * m, n) combinations (the paper: 2 of "
                             "4, 6 combinations)")
    weight: float = setting(1.0, "weight of the combinations' loss (their InfoNCE averaged over the combinations)",
                            bounds="> 0")
    mode: str = setting("replace", "replace: the combinations' loss is the query side's loss (the paper); add: added "
                                   "to it", ("replace", "add"))

    def validate(self, cfg: Config, source: str) -> None:
        """Equal patches, a subset size within the patches, few enough combinations."""
        size = cfg.data.image_size
        self.check(not self.enabled or size % self.grid == 0, source, "fast_moco.grid",
                   f"must divide data.image_size={size} into equal patches; got {self.grid}")
        patches = self.grid * self.grid
        self.check(1 <= self.subset <= patches, source, "fast_moco.subset",
                   f"must be in [1, fast_moco.grid^2 = {patches}]; got {self.subset}")
        count = math.comb(patches, self.subset)
        self.check(count <= MAX_COMBINATIONS, source, "fast_moco.subset",
                   f"with fast_moco.grid={self.grid} gives C({patches}, {self.subset}) = {count} combinations, each "
                   f"a batch of queries against the queue; at most {MAX_COMBINATIONS}")


def split_patches(x: torch.Tensor, grid: int) -> torch.Tensor:
    """The m x m equal patches of images x (B, C, H, W) as (m^2, B, C, H / m, W / m), in row-major order: patch
    r * m + c is row r (from the top), column c (from the left)."""
    batch, channels, height, width = x.shape
    if height % grid or width % grid:
        raise ValueError(f"a {height} x {width} image does not split into {grid} x {grid} equal patches")
    tiles = x.reshape(batch, channels, grid, height // grid, grid, width // grid)
    return tiles.permute(2, 4, 0, 1, 3, 5).reshape(grid * grid, batch, channels, height // grid, width // grid)


def patch_subsets(patches: int, size: int) -> torch.Tensor:
    """Every subset of `size` of the patch indices 0..patches-1, as rows (C(patches, size), size), in
    lexicographic order."""
    return torch.tensor(list(itertools.combinations(range(patches), size)), dtype=torch.long).view(-1, size)


def combine_features(features: torch.Tensor, subsets: torch.Tensor) -> torch.Tensor:
    """The mean of each subset's patch features: features (P, B, F), subsets (S, n) -> (S, B, F). Written as a
    product with the (S, P) averaging matrix: indexing with repeated indices would accumulate its gradient in an
    order that varies between CPU threads, and training would not be reproducible."""
    averaging = torch.zeros(subsets.shape[0], features.shape[0], dtype=features.dtype, device=features.device)
    averaging.scatter_(1, subsets, 1.0 / subsets.shape[1])
    return torch.einsum("sp,pbf->sbf", averaging, features)


@register
class FastMoco(Method):
    """Fast-MoCo on the method seam: the query view's patch combinations as queries (see the module docstring)."""

    section = "fast_moco"
    config_section = FastMocoConfig
    order = 30  # hook order (Method.order)

    def __init__(self, cfg: Config, model: MoCo) -> None:
        super().__init__(cfg, model)
        fast_moco = cfg.fast_moco
        self.grid = fast_moco.grid
        self.weight = fast_moco.weight
        self.replaces_query = fast_moco.mode == "replace"
        self.subsets = patch_subsets(self.grid * self.grid, fast_moco.subset).to(model.queue.features.device)

    def _combine(self, features: torch.Tensor) -> torch.Tensor:
        """The backbone's patch-major features (m^2 x B, F) -> the combined features (C x B, F)."""
        return combine_features(features.unflatten(0, (self.grid * self.grid, -1)), self.subsets).flatten(0, 1)

    def extra_queries(self, x_q: torch.Tensor, encoder: nn.Module, ctx: StepContext) -> ExtraQueries:
        """The C(m^2, n) combined queries (C, B, D) of the query views x_q (B, C, H, W)."""
        patches = split_patches(x_q, self.grid).flatten(0, 1)
        queries = encoder(patches, combine=self._combine).embedding
        return ExtraQueries(queries.unflatten(0, (self.subsets.shape[0], -1)), self.weight)
