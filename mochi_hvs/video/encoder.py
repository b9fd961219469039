"""A small video encoder: torchvision's (2+1)D convolution (a spatial 1 x 3 x 3 convolution, then a temporal
3 x 1 x 1 one) in four stages, spatial max-pooling between them and no temporal striding, so each frame keeps its
time step: features per time step (B, C, T) and the clip's feature, their mean over time (B, C)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models.video.resnet import Conv2Plus1D


def _stage(in_planes: int, out_planes: int, pool: bool) -> nn.Sequential:
    """(2+1)D convolution, BatchNorm, ReLU, then halving the frame size where `pool`."""
    layers = [Conv2Plus1D(in_planes, out_planes, out_planes), nn.BatchNorm3d(out_planes), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, *([nn.MaxPool3d((1, 2, 2))] if pool else []))


class VideoEncoder(nn.Module):
    """(B, T, C, H, W) clips (normalised) -> (B, 4 * width, T) features per time step; `width` sets every stage."""

    def __init__(self, width: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(in_channels, width, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1),
                                            bias=False), nn.BatchNorm3d(width), nn.ReLU(inplace=True))
        self.stages = nn.Sequential(_stage(width, 2 * width, pool=True), _stage(2 * width, 4 * width, pool=True),
                                    _stage(4 * width, 4 * width, pool=False))
        self.width = 4 * width

    def time_steps(self, clips: torch.Tensor) -> torch.Tensor:
        """Features per time step (B, width, T): the last map averaged over space."""
        return self.stages(self.stem(clips.transpose(1, 2))).mean(dim=(3, 4))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """The clip's feature (B, width): its time steps' mean (what the probes read)."""
        return self.time_steps(clips).mean(dim=2)
