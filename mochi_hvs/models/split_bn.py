"""Split BatchNorm: batch statistics computed over independent groups of one device's batch; and BatchNorm
for scoring forwards, which changes no state and normalises each view slot of a batch of views on its own."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..distributed import all_reduce_sum

FORMULATIONS = ("auto", "grouped", "fused")


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics come from `num_splits` groups of the batch.

    Sample n belongs to group n % num_splits. This emulates per-GPU BatchNorm on one device, so
    that with shuffled keys a query and its key are never normalised with the same statistics.
    In eval mode it is plain BatchNorm with the shared running statistics (the group average).
    With `track_running_stats` off in training mode, batch statistics are used and no buffer changes.

    Two formulations compute the same thing. `grouped` views the batch as (N / G, G * C, H, W) and runs one
    BatchNorm kernel over G * C channels: the view exists only for the contiguous layout, so a channels_last input
    is copied in and out. `fused` views it as (N / G, G, C, H, W), which every layout allows, and normalises with
    the groups' moments from one var_mean pass. `auto` (the default) takes `fused` for channels_last inputs.
    """

    def __init__(self, num_features: int, num_splits: int, formulation: str = "auto", **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        if formulation not in FORMULATIONS:
            raise ValueError(f"split BatchNorm formulation {formulation!r} is not one of {FORMULATIONS}")
        self.num_splits = num_splits
        self.formulation = formulation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.num_splits == 1:
            return super().forward(x)
        if x.shape[0] % self.num_splits:
            raise ValueError(f"batch of {x.shape[0]} does not split into {self.num_splits} BatchNorm groups")
        fused = self.formulation == "fused" or (
            self.formulation == "auto" and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last))
        return self._fused(x) if fused else self._grouped(x)

    def _grouped(self, x: torch.Tensor) -> torch.Tensor:
        """One BatchNorm over the groups laid side by side as channels; each group's running statistics are updated
        by the kernel, then averaged."""
        n, c, h, w = x.shape
        s = self.num_splits
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

    def _fused(self, x: torch.Tensor) -> torch.Tensor:
        """The groups' moments in one pass over a (N / G, G, C, H, W) view, then one scale-and-shift; statistics in
        float32 at least (as BatchNorm keeps them under autocast), the output in the input's dtype and layout."""
        groups = x.unflatten(0, (-1, self.num_splits))
        wide = groups.to(torch.promote_types(x.dtype, torch.float32))
        var, mean = torch.var_mean(wide, dim=(0, 3, 4), correction=0)  # (G, C) each
        scale = self.weight * torch.rsqrt(var + self.eps)
        shift = self.bias - mean * scale
        out = torch.addcmul(shift[:, :, None, None], wide, scale[:, :, None, None]).to(x.dtype).flatten(0, 1)
        if self.track_running_stats:
            with torch.no_grad():
                count = groups.numel() // groups.shape[1] // groups.shape[2]  # the values behind one group's moment
                unbiased = var.mean(dim=0) * (count / max(count - 1, 1))
                self.running_mean.lerp_(mean.mean(dim=0), self.momentum)
                self.running_var.lerp_(unbiased, self.momentum)
                self.num_batches_tracked.add_(1)
        return out


class SplitBatchNormAct2d(SplitBatchNorm2d):
    """SplitBatchNorm2d followed by the dropout and activation of the timm BatchNormAct2d it replaces, kept as its
    `drop` and `act` submodules (the same names, so the state dict keeps its keys)."""

    def __init__(self, num_features: int, num_splits: int, drop: nn.Module, act: nn.Module, **kwargs) -> None:
        super().__init__(num_features, num_splits, **kwargs)
        self.drop = drop
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


def split_batch_norm(layer: nn.BatchNorm2d, num_splits: int) -> SplitBatchNorm2d:
    """A SplitBatchNorm2d with the state of `layer`: a BatchNorm2d, or timm's BatchNormAct2d (a BatchNorm2d that
    applies its `drop` and `act` after normalising), whose dropout and activation it keeps."""
    if type(layer) is nn.BatchNorm2d:
        split = SplitBatchNorm2d(layer.num_features, num_splits, eps=layer.eps, momentum=layer.momentum)
    elif isinstance(getattr(layer, "act", None), nn.Module) and isinstance(getattr(layer, "drop", None), nn.Module):
        split = SplitBatchNormAct2d(layer.num_features, num_splits, layer.drop, layer.act, eps=layer.eps,
                                    momentum=layer.momentum)
    else:
        raise ValueError(f"cannot split BatchNorm of type {type(layer).__name__} into groups")
    split.load_state_dict(layer.state_dict())
    return split


def convert_split_bn(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every BatchNorm2d in `module` (timm's BatchNormAct2d included) by a SplitBatchNorm2d with the same
    state (in place)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SplitBatchNorm2d):
            setattr(module, name, split_batch_norm(child, num_splits))
        else:
            convert_split_bn(child, num_splits)
    return module


def per_slot_batch_norm(layer: nn.modules.batchnorm._BatchNorm,
                        view_slots: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A forward of `layer` with batch statistics per view slot and no buffer update (no-grad scoring).

    The input is a sample-major (B * V, C, ...) batch of V view slots; slot v of every sample is normalised
    with the mean and variance of that slot alone, summed over all processes for a SyncBatchNorm (over its
    process group), over this process's batch otherwise: what V separate forwards, one per slot, would use.
    """
    def reduce(tensor: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(tensor, layer.process_group) if isinstance(layer, nn.SyncBatchNorm) else tensor

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not layer.training:  # running statistics: nothing depends on the batch
            return type(layer).forward(layer, x)
        n, c = x.shape[:2]
        # Row i holds the V slots of sample i side by side as channels v * C + c (as SplitBatchNorm2d groups).
        grouped = x.reshape(n // view_slots, view_slots * c, -1).to(torch.promote_types(x.dtype, torch.float32))
        sums = reduce(torch.cat([grouped.sum(dim=(0, 2)), grouped.new_tensor([grouped.shape[0] * grouped.shape[2]])]))
        mean, count = sums[:-1] / sums[-1], sums[-1]  # one collective for the sums and the sample count
        var = reduce((grouped - mean[:, None]).square().sum(dim=(0, 2))) / count
        weight = None if layer.weight is None else layer.weight.repeat(view_slots)
        bias = None if layer.bias is None else layer.bias.repeat(view_slots)
        out = F.batch_norm(grouped, mean, var, weight, bias, training=False, eps=layer.eps)
        return out.view(x.shape).to(x.dtype)

    return forward


@contextlib.contextmanager
def side_effect_free_bn(modules: list[nn.Module], view_slots: int = 1) -> Iterator[None]:
    """Training-mode BatchNorm that updates no running statistics and normalises each view slot on its own.

    For a (B, V) batch of views flattened sample-major, view_slots=V gives each view slot the statistics
    that a forward of that slot alone would have: one batched forward, V faithful ones. SplitBatchNorm2d
    layers get V x their groups (group g * V + v holds view v of group g); every other BatchNorm layer
    (SyncBatchNorm: over all processes) computes per-slot statistics with `per_slot_batch_norm`.
    For no-grad forwards only (scoring): no gradient flows through the statistics of the other layers.
    """
    layers = [m for module in modules for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(layer.track_running_stats, getattr(layer, "num_splits", None)) for layer in layers]
    try:
        for layer in layers:
            layer.track_running_stats = False
            if isinstance(layer, SplitBatchNorm2d):
                layer.num_splits *= view_slots
            else:
                layer.forward = per_slot_batch_norm(layer, view_slots)
        yield
    finally:
        for layer, (track, splits) in zip(layers, saved, strict=True):
            layer.track_running_stats = track
            if splits is None:
                vars(layer).pop("forward", None)
            else:
                layer.num_splits = splits
