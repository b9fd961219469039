"""LC-loss: local contrast between corresponding locations of two views of an image (Islam et al., "Self-supervised
Learning with Local Contrastive Loss for Detection and Semantic Segmentation", WACV 2023), added to the MoCo loss.

- Dense embeddings: a dense projection head (1x1 conv MLP, as DenseCL's) on the backbone's last feature map, in
  the query encoder and, as its momentum copy, in the key encoder (`MoCo.add_dense_heads`). The map comes from
  the very forward that gives the view's global embedding (no extra encoder forward): LC-loss `needs_dense`, so
  the step asks its forwards of whole views for the maps and hands them over in the encoder outputs of the
  direction (ctx.query, ctx.key). On the key side the map is un-shuffled with the keys (shuffle-BN), and with HVS
  it is the map of the scoring forward whose keys are reused.
- Correspondence, from the crop boxes and flips alone (`correspondence`): the centre of each cell of the query
  view's h x w map is placed in the original image (through the query view's flip and box), and matched to the
  cell of the key view's map that holds that point (through the key view's box and flip); a point outside the key
  crop has no match and no loss.
- Loss (`local_contrast_loss`): InfoNCE per matched query location, its positive the key's dense embedding at the
  matched cell, its negatives every other location of every key map of the batch (this image's other locations
  and all locations of the other images), at temperature lc.temperature; averaged over the matched locations and
  added with factor lc.weight for each direction of the loss (the symmetric loss matches both ways).

The negatives are the batch's key locations, not a dense queue: B x h x w of them (1,024 for the embedded recipe,
12,544 per 256 images at 224 px) is as many as the embedded recipe's global queue holds, a queue would add state to
checkpoints, and its entries would come from older encoders and other crops. Under torchrun each process contrasts
its own batch's locations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import APPLY, Config, MethodConfig, backbone_facts_of, setting
from ..loss import full_precision
from ..models.arch import RESNETS
from ..models.moco import MoCo
from ..models.resnet import feature_map_side
from .base import ExtraLoss, Method, StepContext, pick_view, register


@dataclass
class LcConfig(MethodConfig):
    """LC-loss, local contrast: a dense head on the backbone's last feature map, and InfoNCE between the locations of
    the query view and the key view's locations they fall into in the original image (crop boxes and flips)."""

    weight: float = setting(1.0, "factor on the local loss (averaged over the matched locations), added to the MoCo "
                                 "loss", bounds="> 0", resume=APPLY)
    temperature: float = setting(0.2, "T of the local InfoNCE", bounds="> 0", resume=APPLY)
    dim: int = setting(128, "dense embedding size (the dense head's output channels)", bounds="positive")
    hidden_dim: int | None = setting(None, "the dense head's hidden channels; null: the backbone's width (DenseCL's "
                                           "head)", bounds="positive")

    def validate(self, cfg: Config, source: str) -> None:
        """When enabled, a last feature map of at least 2 x 2 locations and a whole query view to take its map from
        (not Fast-MoCo's replacing patches), and views whose geometry the boxes and flips describe (no
        data.orientation)."""
        if not self.enabled:
            return
        model, size = cfg.model, cfg.data.image_size
        if model.arch in RESNETS:
            side = feature_map_side(size, model.small_stem)
            given = f"data.image_size={size} with model.small_stem={str(model.small_stem).lower()}"
            remedy = "raise data.image_size to 56 or more, or set model.small_stem=true"
        else:
            side = backbone_facts_of(cfg, source).map_side
            self.check(side is not None, source, "lc.enabled",
                       f"needs the backbone's last feature map, and model.arch={model.arch} has none (a ViT gives "
                       "tokens; a dense map comes from a torchvision ResNet or a timm convolutional network)")
            given = f"model.arch={model.arch} at data.image_size={size}"
            remedy = "raise data.image_size, or lower the backbone's stride with model.arch_kwargs"
        self.check(side >= 2, source, "lc.enabled",
                   f"needs a last feature map of at least 2 x 2 locations to match; {given} gives {side} x {side} "
                   f"({remedy})")
        self.check(not (cfg.fast_moco.enabled and cfg.fast_moco.mode == "replace"), source, "lc.enabled",
                   "cannot be combined with fast_moco.mode=replace: the local loss needs the whole query view's "
                   "feature map, which Fast-MoCo's patches replace (use fast_moco.mode=add)")
        self.check(not cfg.data.orientation, source, "lc.enabled",
                   "cannot be combined with data.orientation=true: the local loss matches locations through the "
                   "views' crop boxes and horizontal flips, which quarter turns and vertical flips would break")


def cell_centres(side: int, device: torch.device | None = None) -> torch.Tensor:
    """Centres (side^2, 2) of the cells of a side x side map as (u, v) in [0, 1] of the view, row-major: cell
    r * side + c is row r from the top, column c from the left, centre ((c + 0.5) / side, (r + 0.5) / side)."""
    steps = (torch.arange(side, device=device, dtype=torch.float32) + 0.5) / side
    v, u = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack([u.flatten(), v.flatten()], dim=1)


def view_to_image(points: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Points (B, P, 2) as (u, v) in [0, 1] of views -> (x, y) in the original image, normalised as the boxes (B, 4)
    (x0, y0, x1, y1) are; flips (B,): the view was flipped horizontally after cropping (u seen at 1 - u)."""
    u = torch.where(flips[:, None], 1.0 - points[..., 0], points[..., 0])
    x = boxes[:, None, 0] + u * (boxes[:, None, 2] - boxes[:, None, 0])
    y = boxes[:, None, 1] + points[..., 1] * (boxes[:, None, 3] - boxes[:, None, 1])
    return torch.stack([x, y], dim=-1)


def image_to_view(points: torch.Tensor, boxes: torch.Tensor,
                  flips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of view_to_image: image points (B, P, 2) -> (u, v) in the views, and whether each point lies in
    the view's crop (its box, borders included)."""
    x = (points[..., 0] - boxes[:, None, 0]) / (boxes[:, None, 2] - boxes[:, None, 0])
    y = (points[..., 1] - boxes[:, None, 1]) / (boxes[:, None, 3] - boxes[:, None, 1])
    inside = (x >= 0) & (x <= 1) & (y >= 0) & (y <= 1)
    u = torch.where(flips[:, None], 1.0 - x, x)
    return torch.stack([u, y], dim=-1), inside


def correspondence(query_boxes: torch.Tensor, query_flips: torch.Tensor, key_boxes: torch.Tensor,
                   key_flips: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each cell of the query views' side x side maps, the key view's cell holding the same image point.

    Boxes (B, 4) and flips (B,) of each sample's query and key views. Returns cells (B, P), P = side^2, the
    row-major index of the key cell that holds the query cell's centre (a point on a cell border belongs to the cell
    right of or below it), and matched (B, P): whether that point lies in the key crop at all (cells is clamped into
    the map where it does not).
    """
    centres = cell_centres(side, query_boxes.device).expand(query_boxes.shape[0], -1, -1)
    in_key, matched = image_to_view(view_to_image(centres, query_boxes, query_flips), key_boxes, key_flips)
    column, row = (in_key * side).floor().long().clamp_(0, side - 1).unbind(dim=-1)
    return row * side + column, matched


def local_contrast_loss(q: torch.Tensor, k: torch.Tensor, cells: torch.Tensor, matched: torch.Tensor,
                        temperature: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """InfoNCE of every matched query location against all key locations of the batch.

    q: (B, P, D) the query views' dense embeddings, k: (B, P, D) the key views', both L2-normalised, locations
    row-major; cells, matched (B, P) from `correspondence`. The positive of query location (i, p) is k[i, cells[i, p]],
    its negatives the B x P - 1 other rows of k. Returns the mean over matched locations (0 when none matches, still
    connected to q so that every parameter gets its gradient) and metrics: the loss, the share of matched locations
    and the share of those whose positive scores above every negative. Computed in full precision (autocast off).
    """
    batch, points = cells.shape
    with torch.autocast(q.device.type, enabled=False):
        q, k = full_precision(q, k)
        logits = torch.einsum("bpd,nd->bpn", q, k.flatten(0, 1)) / temperature  # (B, P, B x P)
        target = torch.arange(batch, device=cells.device)[:, None] * points + cells
        per_location = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").view(batch, points)
        weight = matched.to(per_location.dtype)
        count = weight.sum().clamp_min(1.0)
        loss = (per_location * weight).sum() / count
        hit = (logits.detach().argmax(dim=2) == target).to(weight.dtype)
    return loss, {"lc/loss": loss.detach(), "lc/matched": weight.mean(), "lc/top1": (hit * weight).sum() / count}


@register
class LocalContrast(Method):
    """LC-loss on the method seam: a dense head on both encoders and, in extra_loss, the local InfoNCE between
    this direction's query and key views (the pair in ctx.pair: views 0 and 1, HVS's choice, or swapped)."""

    section = "lc"
    config_section = LcConfig
    order = 50  # hook order (Method.order)
    needs_dense = True

    def __init__(self, cfg: Config, model: MoCo) -> None:
        super().__init__(cfg, model)
        model.add_dense_heads(cfg.lc.dim, cfg.lc.hidden_dim)
        self.weight = cfg.lc.weight
        self.temperature = cfg.lc.temperature

    def extra_loss(self, q: torch.Tensor, k: torch.Tensor, ctx: StepContext) -> ExtraLoss:
        """weight x the local InfoNCE of this direction's query view map (from the step's query forward) against
        its key view map (from the key forward: the step's, or HVS scoring's when its keys are reused)."""
        if ctx.boxes is None or ctx.flips is None:
            raise ValueError("LC-loss needs the crop boxes and the flips of the views")
        q_dense = None if ctx.query is None else ctx.query.dense
        k_dense = None if ctx.key is None else ctx.key.dense
        if q_dense is None or k_dense is None:
            raise RuntimeError("LC-loss found no dense maps of this direction's views: the whole query view must go "
                               "through the query encoder, and the key view's output must carry its map")
        query_view, key_view = ctx.pair
        side = q_dense.shape[-1]
        cells, matched = correspondence(pick_view(ctx.boxes, query_view), pick_view(ctx.flips, query_view),
                                        pick_view(ctx.boxes, key_view), pick_view(ctx.flips, key_view), side)
        loss, metrics = local_contrast_loss(q_dense.flatten(2).transpose(1, 2), k_dense.flatten(2).transpose(1, 2),
                                            cells, matched, self.temperature)
        return ExtraLoss(self.weight * loss, metrics)
