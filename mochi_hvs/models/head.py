"""Projection heads."""

from __future__ import annotations

import torch.nn as nn


def projection_head(in_dim: int, out_dim: int, kind: str = "mlp", hidden_dim: int | None = None) -> nn.Module:
    """MoCo-v2's 2-layer MLP (Linear-ReLU-Linear), BYOL's (Linear-BatchNorm-ReLU-Linear, also its predictor's) or
    MoCo-v1's single linear layer."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    hidden = hidden_dim or in_dim
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))
    if kind == "mlp_bn":
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                             nn.Linear(hidden, out_dim))
    raise ValueError(f"unknown head {kind!r}")


def dense_projection_head(in_dim: int, out_dim: int, hidden_dim: int | None = None) -> nn.Module:
    """The MLP of projection_head applied at every location of a feature map (N, in_dim, h, w) -> (N, out_dim, h, w):
    1x1 Conv-ReLU-1x1 Conv, as DenseCL's dense projection head."""
    hidden = hidden_dim or in_dim
    return nn.Sequential(nn.Conv2d(in_dim, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, out_dim, 1))
