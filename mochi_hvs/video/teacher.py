"""The frozen image model a video encoder distils: one of our image backbones, read by the toolkit's loader from
a checkpoint or an export (mochi_hvs/weights/loader.py), applied to every frame. It stays in eval mode with no
parameter requiring a gradient, and runs without autograd: nothing trains it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..weights.loader import exact_backbone, read_backbone_state
from .clips import ClipSet, normalised


class FrozenImageModel(nn.Module):
    """An image backbone (B, 3, S, S) -> (B, D) frozen; frames arrive as uint8 and are normalised with the
    statistics of the run that trained it."""

    def __init__(self, backbone: nn.Module, width: int, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.width = width
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def train(self, mode: bool = True) -> FrozenImageModel:
        """Stays in eval mode (BatchNorm's running statistics are the trained model's)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Features (N, D) of uint8 frames (N, C, S, S); one channel is repeated to three."""
        return self.backbone(normalised(frames, self.mean, self.std))

    @torch.no_grad()
    def clip_set_features(self, clips: ClipSet, batch_frames: int = 512) -> list[torch.Tensor]:
        """Per-frame features of every video, (F, D) each, on the model's device: the distillation targets, computed
        once."""
        device = self.mean.device
        frames = torch.from_numpy(np.concatenate(clips.videos)).permute(0, 3, 1, 2)
        features = torch.cat([self(chunk.to(device)) for chunk in frames.split(batch_frames)])
        return list(features.split([len(video) for video in clips.videos]))


def load_image_model(path: str | Path, verify: bool = True, mean: list[float] | None = None,
                     std: list[float] | None = None,
                     device: torch.device | str = "cpu") -> tuple[FrozenImageModel, str]:
    """The frozen image model of a weights file, on `device`, and the loader's line about it. Normalisation: the
    file's run config (data.mean/std) where it has one, else `mean`/`std`."""
    state, meta = read_backbone_state(path, verify=verify)
    backbone, width = exact_backbone(state, meta)
    data = (meta.config or {}).get("data", {})
    model = FrozenImageModel(backbone, width, data.get("mean", mean), data.get("std", std)).to(device)
    return model, meta.summary()
