"""Backbone feature extraction in dataset order."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..runtime import autocast


@torch.no_grad()
def extract_features(
    backbone: nn.Module, loader: DataLoader, device: torch.device, amp_dtype: torch.dtype | None = None,
    channels_last: bool = False, normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, D) float32 and labels (N,) on `device`, row i = dataset item i.

    The backbone runs in eval mode (BatchNorm running statistics, nothing updated) and is put back
    in the mode it was in. Rows are placed by the sample index each batch carries, so the result is
    in dataset order whatever order the loader produces.
    """
    was_training = backbone.training
    backbone.eval()
    size = len(loader.dataset)
    features: torch.Tensor | None = None
    labels = torch.full((size,), -1, dtype=torch.long, device=device)
    try:
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp_dtype):
                out = backbone(images).float()
            if normalize:
                out = F.normalize(out, dim=1)
            if features is None:
                features = torch.zeros(size, out.shape[1], device=device)
            index = batch["index"].to(device)
            features.index_copy_(0, index, out)
            labels.index_copy_(0, index, batch["label"].to(device))
    finally:
        backbone.train(was_training)
    return features, labels
