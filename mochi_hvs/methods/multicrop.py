"""Multi-crop: small local crops as extra queries (Caron et al., "Unsupervised Learning of Visual Features by
Contrasting Cluster Assignments", NeurIPS 2020, SwAV's multi-crop, here on MoCo-v2).

Besides the pair of global views (data.image_size px, area range data.crop_scale), the data path draws L small
crops of each image (multicrop.local_size px, area range multicrop.local_scale; SwAV: 2 x 224 + 6 x 96 px with
areas 0.05-0.14 for the small ones), each with the views' augmentation and its crop box, from the same seeded
stream as the views, after them (the global views are the same with or without multi-crop). They reach the step
as ctx.local_views (B, L, C, h, w) and ctx.local_boxes (B, L, 4).

The small crops are queries only, as in SwAV, where only the global views give targets: all L x B crops go through
the query encoder as one crop-major batch (crop l of sample n is row l * B + n), so that with split BatchNorm every
crop of sample n falls in sample n's group (n % splits), as Fast-MoCo's patches do; the key side is unchanged.
Each crop is a query against its sample's key, the queue and every active method's synthetic negatives (MoCHi
mixes hard negatives for each crop), exactly as the global query is scored. For one direction of the step (query
view a, key view b):

    loss_ab = InfoNCE(q_a, k_b) + weight x (1 / L) sum_l InfoNCE(q_l, k_b)

The small crops are encoded once per step (`queries_per_step`): with the symmetric loss the step calls the
direction twice, and both calls score the same L queries, against k_b and then k_a. So every (query crop, key crop)
pair of different views is scored: the global pairs (a, b) and (b, a), and each small crop against both global keys;
the small crops' term of a direction is their mean over the L crops, and the directions add up as MoCo's symmetric
loss does. Without the symmetric loss the small crops are scored against the key view only. weight = 1 (the
default) lets the L crops together weigh as much as the global query; weight = L gives every pair the same weight,
as SwAV's loss does (SwAV divides that sum by the number of pairs, L + 1 per target: the same gradient direction, at
1 / (L + 1) of its length).

With HVS, HVS picks the hardest pair among its candidate global views as before, and the small crops ride along:
they are queries against the keys of the pair it chose. With Fast-MoCo, its patch combinations and the small crops
are both extra queries against the same key, in either of its modes. With LC-loss, the local loss stays on the
global pair (the whole query view's dense map against the key view's), and the small crops ride along as extra
global-loss queries: their forward computes no dense map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from ..config import Config, LocalCrops, MethodConfig, objective_needs, setting
from ..models.moco import MoCo
from .base import ExtraQueries, Method, StepContext, register

# SwAV's local crops are 96 px beside 224 px global views (Caron et al., 2020): the default local side keeps the ratio.
LOCAL_SIZE_RATIO = 96 / 224


@dataclass
class MultiCropConfig(MethodConfig):
    """SwAV's multi-crop: besides the pair of global views, `local_crops` small crops of each image at `local_size` px,
    each a query (through the query encoder) against the other global view's key and the queue; objectives that read
    the small crops themselves (Needs.local_views: BYOL, TWIST, ReLICv2) score them by their own loss, through their
    trained network only."""

    local_crops: int = setting(6, "L small crops per image (SwAV: 2 x 224 + 6 x 96)", bounds=">= 1")
    local_size: int | None = setting(None, "their side in px; null: data.image_size x 96 / 224 rounded, at least 8 "
                                           "(28 px: 12)", bounds=">= 8")
    local_scale: list[float] = setting([0.05, 0.14], "their area range [low, high], 0 < low <= high <= 1 (SwAV's)")
    weight: float = setting(1.0, "weight of the local crops' InfoNCE (averaged over the crops) beside the global "
                                 "query's (MoCo-v2's step only)", bounds="> 0")
    read_by: ClassVar[str | None] = "local_views"

    def size(self, image_size: int) -> int:
        """The local crops' side in px for global views of `image_size` px."""
        return self.local_size if self.local_size is not None else max(8, round(image_size * LOCAL_SIZE_RATIO))

    def local_crops_per_image(self, cfg: Config) -> LocalCrops:
        """The multi-crop's small crops, from this section and data.image_size."""
        return LocalCrops(self.local_crops, self.size(cfg.data.image_size), (self.local_scale[0], self.local_scale[1]))

    def validate(self, cfg: Config, source: str) -> None:
        """A side no larger than the global views', an area range within the image, and no other weight than 1 for
        an objective that reads the crops itself (its loss weighs them)."""
        size = cfg.data.image_size
        self.check(not self.enabled or self.size(size) <= size, source, "multicrop.local_size",
                   f"must not exceed data.image_size={size} (local crops are the small ones); got {self.local_size}")
        scale = self.local_scale
        self.check(len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1, source, "multicrop.local_scale",
                   f"must be [low, high] with 0 < low <= high <= 1; got {scale}")
        needs = objective_needs(cfg)
        self.check(not self.enabled or needs.methods or not needs.local_views or self.weight == 1, source,
                   "multicrop.weight", f"is MoCo-v2's weight on the small crops' loss: objective={cfg.objective} "
                   f"weighs them by its own loss and reads none, so it must stay 1; got {self.weight}")


def crop_major(crops: torch.Tensor) -> torch.Tensor:
    """The small crops (B, L, C, h, w) as one crop-major batch (L x B, C, h, w): crop l of sample n at row l * B + n,
    so that with split BatchNorm each crop falls in its sample's group. A forward's rows (L x B, ...) come back per
    crop with `.unflatten(0, (L, B))`."""
    return crops.transpose(0, 1).flatten(0, 1)


def encode_crops(crops: torch.Tensor, encoder: nn.Module) -> torch.Tensor:
    """Embeddings (L, B, D) of the small crops (B, L, C, h, w), encoded as one crop-major batch of L x B
    (crop_major)."""
    return encoder(crop_major(crops)).embedding.unflatten(0, (crops.shape[1], crops.shape[0]))


@register
class MultiCrop(Method):
    """Multi-crop on the method seam: the small crops of each sample as queries (see the module docstring)."""

    section = "multicrop"
    config_section = MultiCropConfig
    order = 40  # hook order (Method.order)
    queries_per_step = True  # the crops are queries against either direction's keys

    def __init__(self, cfg: Config, model: MoCo) -> None:
        super().__init__(cfg, model)
        self.weight = cfg.multicrop.weight

    def extra_queries(self, x_q: torch.Tensor, encoder: nn.Module, ctx: StepContext) -> ExtraQueries:
        """The L small crops' queries (L, B, D) of this step (asked once per step: queries_per_step)."""
        if ctx.local_views is None:
            raise ValueError("multi-crop needs the small crops of each sample (ctx.local_views): the data path draws "
                             "them when multicrop.enabled is set in the run's config")
        return ExtraQueries(encode_crops(ctx.local_views, encoder), self.weight)
