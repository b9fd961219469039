"""MoCo-v2 "aug+" view transforms (torchvision) and the clean evaluation transform."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from .orientation import RandomOrientation
from .stain import StainJitter, stain_enabled

# Published MoCo-v2 aug+ parameters (Chen et al. 2020, "Improved Baselines with Momentum Contrastive Learning").
CROP_SCALE = (0.2, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
JITTER = (0.4, 0.4, 0.4, 0.1)  # ColorJitter strengths: brightness, contrast, saturation, hue (data.color_jitter)
JITTER_P = 0.8
GRAYSCALE_P = 0.2
BLUR_SIGMA = (0.1, 2.0)
BLUR_P = 0.5
FLIP_P = 0.5


class RecordedFlip:
    """RandomHorizontalFlip(p) that records whether its last call flipped (`flipped`), for the views' geometry.

    The same draw as torchvision's v2.RandomHorizontalFlip (one `torch.rand(1)` from the global generator, no flip
    when it is >= p) and the same output, so a pipeline using it draws and produces exactly what it did before.
    """

    def __init__(self, p: float = FLIP_P) -> None:
        self.p = p
        self.flipped = False

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        self.flipped = not bool(torch.rand(1) >= self.p)
        return v2.functional.horizontal_flip(image) if self.flipped else image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


def blur_kernel_size(image_size: int) -> int:
    """Odd Gaussian kernel covering about 10% of the image side (23 px at 224, as in SimCLR/MoCo-v2)."""
    return max(3, int(0.1 * image_size) // 2 * 2 + 1)


def post_crop_transform(augmentation: str, image_size: int, mean: list[float], std: list[float],
                        color_jitter: Sequence[float] = JITTER, stain_jitter: Sequence[float] = (0.0, 0.0),
                        orientation: bool = False) -> v2.Compose:
    """Everything after the random resized crop: orientation and stain augmentation where asked, jitter, grayscale,
    blur (aug+ only), flip, normalise.

    Input: a (3, S, S) uint8 tensor; output: a float32 normalised tensor. `color_jitter`: the ColorJitter strengths
    (brightness, contrast, saturation, hue; 0 leaves that factor alone). `stain_jitter`: the HED scale and shift
    strengths (stain.py; both 0: off); `orientation`: a random quarter turn and vertical flip (orientation.py).
    The flip is a RecordedFlip: whether the last call flipped can be read back from it (ViewSampler does).
    """
    tissue = [RandomOrientation()] if orientation else []
    if stain_enabled(stain_jitter):
        tissue.append(StainJitter(stain_jitter))
    steps: list = [
        *tissue,
        v2.RandomApply([v2.ColorJitter(*color_jitter)], p=JITTER_P),
        v2.RandomGrayscale(p=GRAYSCALE_P),
    ]
    if augmentation == "mocov2":
        steps.append(v2.RandomApply([v2.GaussianBlur(blur_kernel_size(image_size), sigma=BLUR_SIGMA)], p=BLUR_P))
    elif augmentation != "mocov2_small":
        raise ValueError(f"unknown augmentation {augmentation!r}")
    steps += [
        RecordedFlip(FLIP_P),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ]
    return v2.Compose(steps)


def clean_transform(image_size: int, mean: list[float], std: list[float], native_size: int | None) -> v2.Compose:
    """Deterministic evaluation view: resize + centre crop (ImageNet ratio 0.875) or identity for native-size sets."""
    if native_size == image_size:
        resize: list[v2.Transform] = []
    elif native_size is not None and native_size < image_size:
        resize = [v2.Resize(image_size, antialias=True)]
    else:
        resize = [v2.Resize(int(round(image_size / 0.875)), antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose([v2.ToImage(), *resize, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def supervised_transform(image_size: int, mean: list[float], std: list[float]) -> v2.Compose:
    """Training view for linear probes and fine-tuning: RandomResizedCrop + horizontal flip, normalised."""
    return v2.Compose([
        v2.ToImage(), v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip(p=FLIP_P),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std),
    ])
