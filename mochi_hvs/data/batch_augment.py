"""MoCo-v2 aug+ applied to a whole batch at once, on whatever device the batch lives on.

Same distributions as the torchvision pipeline in `augment.py` (RandomResizedCrop, ColorJitter in
a random order per sample, grayscale, Gaussian blur, flip; where enabled, quarter turns, vertical flips and
stain augmentation in HED space), drawn per view from an explicit generator, so a step's views depend only on
that generator's seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from .augment import BLUR_P, BLUR_SIGMA, CROP_RATIO, CROP_SCALE, FLIP_P, GRAYSCALE_P, JITTER, JITTER_P, blur_kernel_size
from .orientation import draw_orientations, orient
from .stain import draw_stain_factors, perturb_stains, stain_enabled

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
CROP_ATTEMPTS = 10


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def sample_crop_boxes(
    n: int, height: int, width: int, generator: torch.Generator, device: torch.device,
    scale: tuple[float, float] = CROP_SCALE, ratio: tuple[float, float] = CROP_RATIO,
) -> torch.Tensor:
    """RandomResizedCrop.get_params for n crops at once: (n, 4) float boxes (x0, y0, x1, y1) in pixels."""
    area = height * width
    target = area * _uniform(n * CROP_ATTEMPTS, *scale, generator, device).view(n, CROP_ATTEMPTS)
    log_r = _uniform(n * CROP_ATTEMPTS, math.log(ratio[0]), math.log(ratio[1]), generator, device)
    aspect = torch.exp(log_r).view(n, CROP_ATTEMPTS)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = valid.to(torch.int8).argmax(dim=1, keepdim=True)
    w, h, found = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], valid.any(dim=1)
    # Fallback after 10 failed attempts: the central crop with the ratio clamped (as torchvision).
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))
    top = torch.floor(torch.rand(n, generator=generator, device=device) * (height - h + 1))
    left = torch.floor(torch.rand(n, generator=generator, device=device) * (width - w + 1))
    top = torch.where(found, top, torch.div(height - h, 2, rounding_mode="floor"))
    left = torch.where(found, left, torch.div(width - w, 2, rounding_mode="floor"))
    return torch.stack([left, top, left + w, top + h], dim=1)


def resized_crops(images: torch.Tensor, boxes: torch.Tensor, source: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear crop-and-resize of `images[source[i]]` to the box `boxes[i]` (pixels), as (n, C, size, size).

    roi_align with aligned=True samples exactly where bilinear interpolation (align_corners=False)
    of the cropped region would; its adaptive sampling averages several points per output pixel
    when shrinking, the analogue of antialiasing.
    """
    rois = torch.cat([source.to(boxes.dtype)[:, None], boxes], dim=1)
    return roi_align(images, rois, output_size=size, spatial_scale=1.0, sampling_ratio=0, aligned=True)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma of (n, 3, H, W) RGB in [0, 1], as (n, 1, H, W)."""
    r, g, b = x.unbind(dim=1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1.0 - f) * other).clamp_(0.0, 1.0)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-sample brightness factors (torchvision semantics)."""
    return _blend(x, torch.zeros_like(x), factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-sample contrast factors: blend with the mean grey level of each image."""
    return _blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-sample saturation factors: blend with each image's grayscale version."""
    return _blend(x, grayscale(x), factor)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Per-sample hue shifts in [-0.5, 0.5] turns (torchvision's HSV round trip)."""
    r, g, b = x.unbind(dim=1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_divisor, (maxc - g) / cr_divisor, (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    h = torch.remainder(h + shift.view(-1, 1, 1), 1.0)
    v = maxc
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    a1 = torch.stack((v, q, p, p, t, v), dim=1)
    a2 = torch.stack((t, v, v, q, p, p), dim=1)
    a3 = torch.stack((p, p, t, v, v, q), dim=1)
    table = torch.stack((a1, a2, a3), dim=1)  # (n, 3, 6, H, W): R, G, B for each hue sector
    sector = i[:, None, None].expand(-1, 3, 1, -1, -1)
    return table.gather(2, sector).squeeze(2)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Per-sample separable Gaussian blur with reflect padding (torchvision's kernel)."""
    n, c, height, width = x.shape
    half = (kernel_size - 1) * 0.5
    grid = torch.linspace(-half, half, kernel_size, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (grid[None, :] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (n*c, k)
    pad = kernel_size // 2
    flat = F.pad(x.reshape(1, n * c, height, width), (pad, pad, pad, pad), mode="reflect")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=n * c)
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=n * c)
    return flat.view(n, c, height, width)


def _apply_where(x: torch.Tensor, mask: torch.Tensor, fn, *factors: torch.Tensor) -> torch.Tensor:
    """x with fn applied to the samples selected by mask (factors indexed alike).

    On accelerators fn runs on the whole batch and a select keeps the result (no host sync);
    on the CPU only the selected samples are computed (less work, syncs are free there).
    """
    if x.device.type != "cpu":
        return torch.where(mask.view(-1, 1, 1, 1), fn(x, *factors), x)
    idx = mask.nonzero().squeeze(1)
    if idx.numel() == 0:
        return x
    out = x.clone()
    out[idx] = fn(x[idx], *(f[idx] for f in factors))
    return out


def color_jitter(x: torch.Tensor, generator: torch.Generator, apply: torch.Tensor,
                 strengths: Sequence[float] = JITTER) -> torch.Tensor:
    """ColorJitter(*strengths) (brightness, contrast, saturation, hue) on the selected samples, ops in a random order
    per sample.

    Factors come from [max(0, 1 - s), 1 + s] and hue shifts from [-h, h], as in torchvision. An op of strength 0 is
    skipped (torchvision leaves it out too; the hue round trip would not return the pixels exactly), but its factors
    are still drawn, so the later draws do not depend on the strengths.
    """
    n, device = x.shape[0], x.device
    b, c, s, h = strengths
    factors = (
        _uniform(n, max(0.0, 1 - b), 1 + b, generator, device),
        _uniform(n, max(0.0, 1 - c), 1 + c, generator, device),
        _uniform(n, max(0.0, 1 - s), 1 + s, generator, device),
        _uniform(n, -h, h, generator, device),
    )
    ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    order = torch.argsort(torch.rand(n, 4, generator=generator, device=device), dim=1)
    for position in range(4):
        for op_index, op in enumerate(ops):
            if strengths[op_index] > 0:
                x = _apply_where(x, apply & (order[:, position] == op_index), op, factors[op_index])
    return x


class BatchViewAugmenter:
    """Turn a uint8 image batch (B, 3, H, W) into V views per image with their crop boxes."""

    def __init__(
        self, num_views: int, image_size: int, augmentation: str, mean: list[float], std: list[float],
        crop_scale: tuple[float, float] = CROP_SCALE, color_jitter: Sequence[float] = JITTER,
        stain_jitter: Sequence[float] = (0.0, 0.0), orientation: bool = False,
    ) -> None:
        if augmentation not in ("mocov2", "mocov2_small"):
            raise ValueError(f"unknown augmentation {augmentation!r}")
        self.num_views = num_views
        self.image_size = image_size
        self.blur = augmentation == "mocov2"
        self.crop_scale = tuple(crop_scale)
        self.color_jitter = tuple(color_jitter)  # brightness, contrast, saturation, hue strengths
        self.stain_jitter = tuple(stain_jitter)  # HED scale and shift strengths (stain.py); both 0: off
        self.orientation = orientation  # quarter turns and vertical flips (orientation.py)
        self.kernel_size = blur_kernel_size(image_size)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Views (B, V, 3, S, S) float32 normalised, boxes (B, V, 4) normalised to [0, 1]."""
        views, boxes, _ = self.with_flips(images, generator)
        return views, boxes

    def with_flips(self, images: torch.Tensor,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Views and boxes as __call__ gives them (the same draws), and whether each view was flipped horizontally
        (B, V) bool."""
        batch, _, height, width = images.shape
        n, device = batch * self.num_views, images.device
        pixels = sample_crop_boxes(n, height, width, generator, device, scale=self.crop_scale)
        source = torch.arange(batch, device=device).repeat_interleave(self.num_views)
        x = resized_crops(images.float().div_(255.0), pixels, source, self.image_size).clamp_(0.0, 1.0)
        flip = torch.rand(n, generator=generator, device=device) < FLIP_P
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        if self.orientation:  # its draws and the stain's only where enabled: without them the views are unchanged
            x = orient(x, *draw_orientations(n, generator, device))
        if stain_enabled(self.stain_jitter):
            x = perturb_stains(x, *draw_stain_factors(n, self.stain_jitter, generator, device))
        x = color_jitter(x, generator, torch.rand(n, generator=generator, device=device) < JITTER_P, self.color_jitter)
        gray = torch.rand(n, generator=generator, device=device) < GRAYSCALE_P
        x = torch.where(gray.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)
        if self.blur:
            apply = torch.rand(n, generator=generator, device=device) < BLUR_P
            sigma = _uniform(n, *BLUR_SIGMA, generator, device)
            x = _apply_where(x, apply, lambda v, s: gaussian_blur(v, s, self.kernel_size), sigma)
        x = (x - self.mean.to(device)) / self.std.to(device)
        scale = torch.tensor([width, height, width, height], device=device, dtype=pixels.dtype)
        views = x.view(batch, self.num_views, 3, self.image_size, self.image_size)
        return views, (pixels / scale).view(batch, self.num_views, 4), flip.view(batch, self.num_views)
