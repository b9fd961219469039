"""The MoCo contrastive logits and InfoNCE loss."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def full_precision(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors in one common dtype of at least float32 (float64 stays float64)."""
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors), torch.float32)
    return tuple(t.to(dtype) for t in tensors)


def contrastive_logits(q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Cosine logits (B, 1 + K): column 0 is q.k (the positive), then q against each negative.

    Always in full precision (autocast off, at least float32): the loss and MoCHi's top-N and mixing read them.
    """
    with torch.autocast(q.device.type, enabled=False):
        q, k, negatives = full_precision(q, k, negatives)
        positive = (q * k).sum(dim=1, keepdim=True)
        return torch.cat([positive, q @ negatives.t()], dim=1)


def info_nce(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean cross-entropy of logits / T with the positive in column 0."""
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits / temperature, target)


def batch_info_nce(prediction: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of each row of prediction (B, D) against its own row of target (B, D), the batch's other target rows
    its negatives: mean cross-entropy of the cosine logits / T with the positive on the diagonal (in float32 at
    least)."""
    p, z = full_precision(F.normalize(prediction, dim=1), F.normalize(target, dim=1))
    logits = p @ z.T / temperature
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


def positive_rank_top1(logits: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose positive (column 0) scores strictly above every negative."""
    return (logits[:, 0:1] > logits[:, 1:]).all(dim=1).float().mean()
