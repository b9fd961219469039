"""Raw pixels as features: the floor every learned representation is read against."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..data.datasets import ImageSet


class PixelFeatures(nn.Module):
    """The clean evaluation image's raw pixel values in [0, 1], flattened: undoes the input normalisation.

    `channels`: how many of the input's channels carry information (1 for grayscale sets, whose loaders
    repeat the single channel three times), so a 28 x 28 Fashion-MNIST image gives its 784 pixel values.
    """

    def __init__(self, mean: list[float], std: list[float], channels: int = 3) -> None:
        super().__init__()
        self.channels = channels
        self.register_buffer("mean", torch.tensor(mean[:channels]).view(1, channels, 1, 1))
        self.register_buffer("std", torch.tensor(std[:channels]).view(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, : self.channels] * self.std + self.mean).flatten(1)


def pixel_width(image_size: int, channels: int) -> int:
    """Feature width of PixelFeatures for square images of `image_size`."""
    return channels * image_size * image_size


def pixel_channels(images: ImageSet) -> int:
    """Channels that carry information: 1 for in-memory single-channel sets (their loaders repeat it), else 3."""
    return 1 if images.array is not None and images.array.shape[-1] == 1 else 3


def pixel_model(images: ImageSet, mean: list[float], std: list[float]) -> PixelFeatures:
    """The raw-pixel 'backbone' for a set of images normalised with `mean` and `std`."""
    return PixelFeatures(mean, std, pixel_channels(images))
