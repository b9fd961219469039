"""Backbone feature extraction in dataset order."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..distributed import all_gather_cat
from ..runtime import autocast


@torch.no_grad()
def extract_features(
    backbone: nn.Module, loader: DataLoader, device: torch.device, amp_dtype: torch.dtype | None = None,
    channels_last: bool = False, normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, D) float32 and labels (N,) on `device`, row i = dataset item i.

    The backbone runs in eval mode (BatchNorm running statistics, nothing updated) and is put back
    in the mode it was in. Rows are placed by the sample index each batch carries, so the result is
    in dataset order whatever order the loader produces. Under torch.distributed each process
    extracts its shard and the (index, feature, label) triples of all processes are gathered, so
    the padding a DistributedSampler adds (repeated samples) lands on rows already filled.
    """
    was_training = backbone.training
    backbone.eval()
    indices, outputs, labels = [], [], []
    try:
        for batch in tqdm(loader, desc="features", leave=False, disable=len(loader) < 10):
            images = batch.images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp_dtype):
                out = backbone(images).float()
            outputs.append(F.normalize(out, dim=1) if normalize else out)
            indices.append(batch.index.to(device))
            labels.append(batch.labels.to(device))
    finally:
        backbone.train(was_training)
    index = all_gather_cat(torch.cat(indices))
    rows = all_gather_cat(torch.cat(outputs))
    size = len(loader.dataset)
    features = torch.zeros(size, rows.shape[1], device=device).index_copy_(0, index, rows)
    all_labels = torch.full((size,), -1, dtype=torch.long, device=device)
    all_labels.index_copy_(0, index, all_gather_cat(torch.cat(labels)))
    return features, all_labels
