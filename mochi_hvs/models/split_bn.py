"""Split BatchNorm: batch statistics computed over independent groups of one device's batch."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics come from `num_splits` groups of the batch.

    Sample n belongs to group n % num_splits. This emulates per-GPU BatchNorm on one device, so
    that with shuffled keys a query and its key are never normalised with the same statistics.
    In eval mode it is plain BatchNorm with the shared running statistics (the group average).
    With `track_running_stats` off in training mode, batch statistics are used and no buffer changes.
    """

    def __init__(self, num_features: int, num_splits: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.num_splits == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        s = self.num_splits
        if n % s:
            raise ValueError(f"batch of {n} does not split into {s} BatchNorm groups")
        grouped = x.reshape(n // s, c * s, h, w)
        weight, bias = self.weight.repeat(s), self.bias.repeat(s)
        if not self.track_running_stats:
            out = F.batch_norm(grouped, None, None, weight, bias, training=True, eps=self.eps)
            return out.view(n, c, h, w)
        mean = self.running_mean.repeat(s)
        var = self.running_var.repeat(s)
        out = F.batch_norm(grouped, mean, var, weight, bias, training=True, momentum=self.momentum, eps=self.eps)
        with torch.no_grad():
            self.running_mean.copy_(mean.view(s, c).mean(dim=0))
            self.running_var.copy_(var.view(s, c).mean(dim=0))
            self.num_batches_tracked.add_(1)
        return out.view(n, c, h, w)


def convert_split_bn(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every BatchNorm2d in `module` by a SplitBatchNorm2d with the same state (in place)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SplitBatchNorm2d):
            split = SplitBatchNorm2d(child.num_features, num_splits, eps=child.eps, momentum=child.momentum)
            split.load_state_dict(child.state_dict())
            setattr(module, name, split)
        else:
            convert_split_bn(child, num_splits)
    return module


@contextlib.contextmanager
def side_effect_free_bn(modules: list[nn.Module], group_factor: int = 1) -> Iterator[None]:
    """Training-mode BatchNorm that updates no running statistics, with `group_factor` x the split groups.

    For a (B, V) batch of views flattened sample-major, group_factor=V gives each view slot the same
    statistics groups a forward of that slot alone would have: one batched forward, V faithful ones.
    Other BatchNorm layers (SyncBatchNorm) keep one group over the whole batch.
    """
    layers = [m for module in modules for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(layer.track_running_stats, getattr(layer, "num_splits", None)) for layer in layers]
    try:
        for layer in layers:
            layer.track_running_stats = False
            if isinstance(layer, SplitBatchNorm2d):
                layer.num_splits *= group_factor
        yield
    finally:
        for layer, (track, splits) in zip(layers, saved, strict=True):
            layer.track_running_stats = track
            if splits is not None:
                layer.num_splits = splits
