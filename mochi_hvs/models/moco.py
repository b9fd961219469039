"""The MoCo module: query encoder, momentum (key) encoder and the memory queue."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..distributed import shuffle_across_processes
from ..queue import MemoryQueue
from .backbone import build_backbone, feature_map, pooled_features
from .head import dense_projection_head, projection_head
from .split_bn import convert_split_bn


class Encoder(nn.Module):
    """Backbone followed by the projection head; returns L2-normalised embeddings.

    With a dense head (MoCo.add_dense_heads, for LC-loss), a forward of whole views (no `combine`, `dense` left on)
    also embeds every location of the backbone's last feature map, taken from that same forward, and keeps the
    embeddings, each L2-normalised, in `dense` (N, D', h, w) until the next such forward.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, channels_last: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.channels_last = channels_last
        self.dense_head: nn.Module | None = None
        self.dense: torch.Tensor | None = None
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, combine: Callable[[torch.Tensor], torch.Tensor] | None = None,
                dense: bool = True) -> torch.Tensor:
        """Embeddings of x (N, C, H, W); `combine` maps the backbone's features (N, F) to the rows the head embeds
        (e.g. Fast-MoCo's averages of patch features); dense=False leaves `dense` as it is (multi-crop's small
        crops, whose forward must not replace the whole view's map)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.dense_head is None or combine is not None or not dense:
            features = self.backbone(x)
        else:
            spatial = feature_map(self.backbone, x)
            self.dense = F.normalize(self.dense_head(spatial), dim=1)
            features = pooled_features(self.backbone, spatial)
        if combine is not None:
            features = combine(features)
        return F.normalize(self.head(features), dim=1)


class MoCo(nn.Module):
    """Query encoder f_q (trained), key encoder f_k (momentum copy, no gradients) and the queue."""

    def __init__(self, arch: str = "resnet18", *, small_stem: bool = False, head: str = "mlp",
                 head_hidden_dim: int | None = None, feature_dim: int = 128, queue_size: int = 4096,
                 shuffle_bn: bool = True, bn_splits: int = 1, channels_last: bool = False) -> None:
        """bn_splits: BatchNorm groups on this device (the configured splits divided by the processes)."""
        super().__init__()
        backbone, width = build_backbone(arch, small_stem)
        # Split BN everywhere (one group when no split is asked), so scoring can regroup statistics.
        convert_split_bn(backbone, bn_splits)
        self.encoder_q = Encoder(backbone, projection_head(width, feature_dim, head, head_hidden_dim), channels_last)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        self.encoder_k.requires_grad_(False)
        self.queue = MemoryQueue(queue_size, feature_dim)
        self.shuffle_bn = shuffle_bn
        self.feature_width = width
        self.key_dense: torch.Tensor | None = None  # see key()

    @property
    def backbone(self) -> nn.Module:
        """The query encoder's backbone: what gets evaluated and exported."""
        return self.encoder_q.backbone

    def add_dense_heads(self, dim: int, hidden_dim: int | None = None) -> None:
        """Give both encoders a dense projection head on the backbone's last feature map (LC-loss): f_q's trained,
        f_k's a copy that follows it by momentum like the rest of f_k. On the model's device, dtype and memory
        format; call it before the optimiser and the DDP wrapper are built."""
        reference = next(self.encoder_q.backbone.parameters())
        head = dense_projection_head(self.feature_width, dim, hidden_dim).to(reference.device, reference.dtype)
        if self.encoder_q.channels_last:
            head.to(memory_format=torch.channels_last)
        self.encoder_q.dense_head = head
        self.encoder_k.dense_head = copy.deepcopy(head).requires_grad_(False)

    @torch.no_grad()
    def momentum_update(self, momentum: float) -> None:
        """f_k <- m * f_k + (1 - m) * f_q for every parameter, as one fused foreach op."""
        key_params = list(self.encoder_k.parameters())
        query_params = [p.detach() for p in self.encoder_q.parameters()]
        torch._foreach_lerp_(key_params, query_params, 1.0 - momentum)

    @torch.no_grad()
    def key(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalised key embeddings of x (B, C, H, W) as (B, D), or of views x (B, V, C, H, W) as (B, V, D).

        With shuffle-BN the samples of the (global) batch are shuffled around f_k, so that its BatchNorm
        groups differ from f_q's: one permutation of the samples, drawn as for a single view, the views of a
        sample moving together. Views are then encoded as one sample-major batch of B * V; giving each view
        slot its own BatchNorm groups is the caller's part (`side_effect_free_bn(..., view_slots=V)`).

        With dense heads, the dense key embeddings of the same forward are left in `key_dense`, un-shuffled like the
        keys: (B, D', h, w) or (B, V, D', h, w), until the next call.
        """
        shuffled, restore = shuffle_across_processes(x, generator) if self.shuffle_bn else (x, None)
        keys = self.encoder_k(shuffled.flatten(0, -4)).unflatten(0, shuffled.shape[:-3])
        if self.encoder_k.dense_head is not None:
            dense = self.encoder_k.dense.unflatten(0, shuffled.shape[:-3])
            self.key_dense = dense if restore is None else restore(dense)
        return keys if restore is None else restore(keys)
