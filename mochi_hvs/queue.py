"""The MoCo memory queue: a ring buffer of key features kept on the device."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class MemoryQueue(nn.Module):
    """K x D ring buffer of L2-normalised keys, with its write pointer, as persistent buffers.

    Both live in the module's state_dict (hence in checkpoints) and move with `.to(device)`.
    Enqueueing never leaves the device: the pointer is a tensor and wrap-around is modular
    indexing, so batches that do not divide K are handled too.

    `labels` (K,) holds the class of each entry's image where known (-1 otherwise). It exists for
    analysis only (MoCHi's class-oracle rate); nothing in the loss reads it.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("features", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        """Number of entries K."""
        return self.features.shape[0]

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Write `keys` (B x D), and their labels (B,) if known, over the oldest entries, wrapping around."""
        count = keys.shape[0]
        if count > self.size:
            raise ValueError(f"cannot enqueue {count} keys into a queue of {self.size}")
        slots = (self.pointer + torch.arange(count, device=keys.device)) % self.size
        self.features.index_copy_(0, slots, keys.detach().to(self.features.dtype))
        if labels is None:
            self.labels.index_fill_(0, slots, -1)
        else:
            self.labels.index_copy_(0, slots, labels.to(self.labels.dtype))
        self.pointer.add_(count).remainder_(self.size)
