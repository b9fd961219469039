"""The regression heads of feature-regression distillation (SimReg: Navaneet et al., "SimReg: Regression as a Simple
Yet Effective Tool for Self-supervised Knowledge Distillation", BMVC 2021): a deeper MLP on the student's pooled
features that predicts one teacher's features, used only while distilling and discarded afterwards (the student's
backbone is what is kept and exported). With several teachers each has its own head."""

from __future__ import annotations

import torch
import torch.nn as nn


def regression_head(in_dim: int, out_dim: int, hidden_dim: int, layers: int) -> nn.Sequential:
    """`layers` linear layers, each but the last followed by BatchNorm and ReLU: in_dim -> hidden_dim -> ... ->
    out_dim (one layer: a linear map)."""
    if layers < 1:
        raise ValueError(f"a regression head needs at least one layer; got {layers}")
    blocks: list[nn.Module] = []
    width = in_dim
    for _ in range(layers - 1):
        blocks += [nn.Linear(width, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        width = hidden_dim
    return nn.Sequential(*blocks, nn.Linear(width, out_dim))


class DistilledStudent(nn.Module):
    """The student's backbone and its regression heads, one per teacher: one module, so that one DDP wrapper
    averages every trained gradient."""

    def __init__(self, backbone: nn.Module, heads: nn.ModuleList) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = heads

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The student's pooled features (N, F) of images x (N, C, H, W) and each head's prediction of its
        teacher's features (N, F_t)."""
        features = self.backbone(x)
        return features, [head(features) for head in self.heads]
