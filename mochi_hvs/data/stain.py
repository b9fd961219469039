"""Stain augmentation in HED space (Tellez et al., 2018): colour deconvolution of an RGB image into haematoxylin,
eosin and DAB densities (Ruifrok & Johnston, 2001; scikit-image's rgb2hed / hed2rgb, here in torch so that it runs
batched on the training device), a per-channel scale and shift of those densities, and the image recomposed and
clipped to [0, 1].

Unlike scikit-image's rgb2hed, rgb_to_hed keeps negative densities (it does not clip at 0), so that
hed_to_rgb(rgb_to_hed(x)) returns x: with scale 1 and shift 0 the augmentation is the identity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

# scikit-image's rgb_from_hed (rows: the RGB optical densities of haematoxylin, eosin and DAB, from Ruifrok &
# Johnston's colour deconvolution) and its inverse hed_from_rgb.
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
LIGHT_FLOOR = 1e-6  # the smallest intensity the deconvolution takes a log of (scikit-image's)
LOG_FLOOR = math.log(LIGHT_FLOOR)


def _mix(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """x (N, 3, H, W) with its channels multiplied by `matrix` (3, 3): out[:, j] = sum_i x[:, i] * matrix[i, j]."""
    return torch.einsum("nihw,ij->njhw", x, matrix.to(device=x.device, dtype=x.dtype))


def rgb_to_hed(rgb: torch.Tensor) -> torch.Tensor:
    """Haematoxylin, eosin and DAB densities (N, 3, H, W) of RGB images in [0, 1] (N, 3, H, W)."""
    return _mix(torch.log(rgb.clamp_min(LIGHT_FLOOR)) / LOG_FLOOR, HED_FROM_RGB)


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """RGB images in [0, 1] (N, 3, H, W) of haematoxylin, eosin and DAB densities (N, 3, H, W)."""
    return torch.exp(_mix(hed, RGB_FROM_HED) * LOG_FLOOR).clamp_(0.0, 1.0)


def perturb_stains(rgb: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """RGB images (N, 3, H, W) in [0, 1] with each stain's density d made d * scale + shift (scale and shift: (N, 3),
    one per image and stain), recomposed and clipped to [0, 1]."""
    hed = rgb_to_hed(rgb)
    return hed_to_rgb(hed * scale[:, :, None, None].to(hed) + shift[:, :, None, None].to(hed))


def draw_stain_factors(n: int, strengths: Sequence[float], generator: torch.Generator | None = None,
                       device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-stain scales from U(1 - a, 1 + a) and shifts from U(-b, b), each (n, 3), for strengths (a, b);
    drawn from `generator` (the global generator when None), scales first."""
    scale_strength, shift_strength = strengths
    scale = 1 + scale_strength * (2 * torch.rand(n, 3, generator=generator, device=device) - 1)
    shift = shift_strength * (2 * torch.rand(n, 3, generator=generator, device=device) - 1)
    return scale, shift


def stain_enabled(strengths: Sequence[float]) -> bool:
    """Whether strengths (scale, shift) perturb anything (both 0: the augmentation is off and draws nothing)."""
    return any(value > 0 for value in strengths)


class StainJitter:
    """One image's stain augmentation for the per-sample (cpu) path: a (3, H, W) uint8 or [0, 1] float tensor in, a
    float32 tensor in [0, 1] out; the factors drawn from the global generator (seeded per sample by the loader)."""

    def __init__(self, strengths: Sequence[float]) -> None:
        self.strengths = tuple(strengths)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        pixels = image.float().div(255.0) if image.dtype == torch.uint8 else image.float()
        scale, shift = draw_stain_factors(1, self.strengths)
        return perturb_stains(pixels[None], scale, shift)[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(strengths={self.strengths})"
