"""The MoCo module: query encoder, and the momentum (key) encoder, the memory queue and a predictor where the
objective needs them."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..distributed import shuffle_across_processes
from ..queue import MemoryQueue
from .backbone import build_backbone, feature_map, feature_map_channels, pooled_features
from .head import dense_projection_head, projection_head
from .split_bn import convert_split_bn


@dataclass(frozen=True)
class EncoderOutput:
    """What one encoder forward gives: the L2-normalised embeddings (N, D), the backbone's pooled features (N, F) they
    were computed from (before any `combine`), where asked the L2-normalised dense embeddings (N, D', h, w) of the
    backbone's last feature map, and the projection head's output before normalisation (N, D; what BYOL's predictor
    reads). Leading axes other than N (e.g. (B, V) for several views) are allowed."""

    embedding: torch.Tensor
    pooled: torch.Tensor
    dense: torch.Tensor | None = None
    projection: torch.Tensor | None = None

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> EncoderOutput:
        """The output with `fn` applied to each of its tensors (indexing, reshaping, un-shuffling), None kept."""
        return EncoderOutput(fn(self.embedding), fn(self.pooled), None if self.dense is None else fn(self.dense),
                             None if self.projection is None else fn(self.projection))


class Encoder(nn.Module):
    """Backbone followed by the projection head: returns an EncoderOutput.

    With a dense head (MoCo.add_dense_heads, for LC-loss), a forward asked for `dense` also embeds every location of
    the backbone's last feature map, taken from that same forward (no second pass through the backbone).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, channels_last: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.channels_last = channels_last
        self.dense_head: nn.Module | None = None
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, combine: Callable[[torch.Tensor], torch.Tensor] | None = None,
                dense: bool = False) -> EncoderOutput:
        """The encoding of x (N, C, H, W). `combine` maps the backbone's pooled features (N, F) to the rows the head
        embeds (e.g. Fast-MoCo's averages of patch features); `dense` asks for the dense map too (a dense head
        needed)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dense_map = None
        if dense:
            if self.dense_head is None:
                raise RuntimeError("a dense map was asked of an encoder without a dense head (MoCo.add_dense_heads)")
            spatial = feature_map(self.backbone, x)
            dense_map = F.normalize(self.dense_head(spatial), dim=1)
            pooled = pooled_features(self.backbone, spatial)
        else:
            pooled = self.features(x)
        projection = self.head(pooled if combine is None else combine(pooled))
        return EncoderOutput(F.normalize(projection, dim=1), pooled, dense_map, projection)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's pooled features (N, F) of x (N, C, H, W), in the encoder's memory format: what the head
        reads (TWIST's multi-crop forward gives the head the features of several batches at once)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x)


class MoCo(nn.Module):
    """Query encoder f_q (trained), key encoder f_k (momentum copy, no gradients; None without one), the queue (None
    without one) and, where asked, a predictor on f_q's projections (trained, BYOL's q_theta)."""

    def __init__(self, arch: str = "resnet18", *, small_stem: bool = False, arch_kwargs: dict[str, Any] | None = None,
                 head: str = "mlp", head_hidden_dim: int | None = None, feature_dim: int = 128,
                 queue_size: int | None = 4096, shuffle_bn: bool = True, bn_splits: int = 1,
                 channels_last: bool = False, predictor: bool = False, momentum_encoder: bool = True) -> None:
        """arch, small_stem, arch_kwargs: the backbone (models/backbone.py); bn_splits: BatchNorm groups on this
        device (the configured splits divided by the processes); queue_size None: no queue; predictor: an mlp_bn
        head D -> D with the projection head's hidden width; momentum_encoder False: no f_k (objectives that train
        one network only)."""
        super().__init__()
        backbone, width = build_backbone(arch, small_stem, arch_kwargs)
        # Split BN everywhere (one group when no split is asked), so scoring can regroup statistics.
        convert_split_bn(backbone, bn_splits)
        self.encoder_q = Encoder(backbone, projection_head(width, feature_dim, head, head_hidden_dim), channels_last)
        self.encoder_k = copy.deepcopy(self.encoder_q).requires_grad_(False) if momentum_encoder else None
        self.queue = MemoryQueue(queue_size, feature_dim) if queue_size is not None else None
        self.predictor = projection_head(feature_dim, feature_dim, "mlp_bn", head_hidden_dim or width) if predictor \
            else None
        self.shuffle_bn = shuffle_bn
        self.feature_width = width

    @property
    def backbone(self) -> nn.Module:
        """The query encoder's backbone: what gets evaluated and exported."""
        return self.encoder_q.backbone

    def add_dense_heads(self, dim: int, hidden_dim: int | None = None) -> None:
        """Give the encoders a dense projection head on the backbone's last feature map (LC-loss): f_q's trained,
        f_k's (where there is one) a copy that follows it by momentum like the rest of f_k. On the model's device,
        dtype and memory format; call it before the optimiser and the DDP wrapper are built."""
        reference = next(self.encoder_q.backbone.parameters())
        channels = feature_map_channels(self.encoder_q.backbone, self.feature_width)
        head = dense_projection_head(channels, dim, hidden_dim).to(reference.device, reference.dtype)
        if self.encoder_q.channels_last:
            head.to(memory_format=torch.channels_last)
        self.encoder_q.dense_head = head
        if self.encoder_k is not None:
            self.encoder_k.dense_head = copy.deepcopy(head).requires_grad_(False)

    @torch.no_grad()
    def momentum_update(self, momentum: float) -> None:
        """f_k <- m * f_k + (1 - m) * f_q for every parameter, as one fused foreach op."""
        key_params = list(self.encoder_k.parameters())
        query_params = [p.detach() for p in self.encoder_q.parameters()]
        torch._foreach_lerp_(key_params, query_params, 1.0 - momentum)

    @torch.no_grad()
    def key(self, x: torch.Tensor, generator: torch.Generator | None = None, dense: bool = False) -> EncoderOutput:
        """The key encoder's output for x (B, C, H, W), its tensors (B, ...), or for views x (B, V, C, H, W), its
        tensors (B, V, ...); `dense` asks for the dense maps too.

        With shuffle-BN the samples of the (global) batch are shuffled around f_k, so that its BatchNorm
        groups differ from f_q's: one permutation of the samples, drawn as for a single view, the views of a
        sample moving together. Views are then encoded as one sample-major batch of B * V; giving each view
        slot its own BatchNorm groups is the caller's part (`side_effect_free_bn(..., view_slots=V)`). Every tensor
        of the output is un-shuffled.
        """
        shuffled, restore = shuffle_across_processes(x, generator) if self.shuffle_bn else (x, None)
        out = self.encoder_k(shuffled.flatten(0, -4), dense=dense).map(lambda t: t.unflatten(0, shuffled.shape[:-3]))
        return out if restore is None else out.map(restore)
