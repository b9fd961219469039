"""Stain augmentation in HED space: the deconvolution against scikit-image's, round trips, the identity at scale 1 and
shift 0, per-stain action, range, and both augmentation paths (seeded, nothing drawn when off)."""

import numpy as np
import pytest
import torch
from skimage import color, data

from mochi_hvs.data import batch_augment as ba
from mochi_hvs.data.augment import post_crop_transform
from mochi_hvs.data.stain import (
    LIGHT_FLOOR,
    StainJitter,
    draw_stain_factors,
    hed_to_rgb,
    perturb_stains,
    rgb_to_hed,
)


@pytest.fixture(scope="module")
def ihc() -> torch.Tensor:
    """scikit-image's IHC image, (1, 3, 512, 512) float64 in [0, 1]."""
    return torch.from_numpy(data.immunohistochemistry()).permute(2, 0, 1)[None].double() / 255


def nhwc(x: torch.Tensor) -> np.ndarray:
    return x[0].permute(1, 2, 0).numpy()


def test_deconvolution_matches_scikit_image(ihc):
    image = data.immunohistochemistry()
    # scikit-image clips negative densities at 0; ours keeps them (for the round trip)
    np.testing.assert_allclose(nhwc(rgb_to_hed(ihc).clamp_min(0)), color.rgb2hed(image), atol=1e-12)
    hed = color.rgb2hed(image)
    back = hed_to_rgb(torch.from_numpy(hed).permute(2, 0, 1)[None])
    np.testing.assert_allclose(nhwc(back), color.hed2rgb(hed), atol=1e-12)


def test_round_trip_returns_the_image(ihc):
    np.testing.assert_allclose(hed_to_rgb(rgb_to_hed(ihc)), ihc.clamp_min(LIGHT_FLOOR), atol=1e-12)
    x = torch.rand(4, 3, 9, 7)
    assert (hed_to_rgb(rgb_to_hed(x)) - x).abs().max() < 1e-5  # float32, dark pixels included


def test_unit_scale_and_zero_shift_are_the_identity(ihc):
    x = ihc.float()
    out = perturb_stains(x, torch.ones(1, 3), torch.zeros(1, 3))
    assert (out - x).abs().max() < 1e-5


def test_each_stain_is_scaled_and_shifted_alone():
    x = 0.3 + 0.6 * torch.rand(2, 3, 8, 8, dtype=torch.float64)  # mid-range: nothing clips
    scale = torch.tensor([[1.1, 1.0, 1.0], [1.0, 0.9, 1.0]], dtype=torch.float64)
    shift = torch.tensor([[0.0, 0.0, 0.01], [0.0, 0.0, 0.0]], dtype=torch.float64)
    hed = rgb_to_hed(x)
    expected = hed * scale[:, :, None, None] + shift[:, :, None, None]
    torch.testing.assert_close(rgb_to_hed(perturb_stains(x, scale, shift)), expected, atol=1e-9, rtol=0)


def test_augmented_images_stay_in_range(ihc):
    x = torch.cat([ihc.float()[:, :, :64, :64], torch.zeros(1, 3, 64, 64), torch.ones(1, 3, 64, 64)])
    scale, shift = torch.full((3, 3), 1.9), torch.full((3, 3), -0.5)
    for s, t in ((scale, -shift), (2 - scale, shift)):
        out = perturb_stains(x, s, t)
        assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_factors_are_drawn_in_their_ranges_from_the_generator():
    scale, shift = draw_stain_factors(1000, (0.2, 0.05), torch.Generator().manual_seed(3))
    assert scale.shape == shift.shape == (1000, 3)
    assert 0.8 <= scale.min() and scale.max() <= 1.2 and -0.05 <= shift.min() and shift.max() <= 0.05
    again = draw_stain_factors(1000, (0.2, 0.05), torch.Generator().manual_seed(3))
    assert torch.equal(scale, again[0]) and torch.equal(shift, again[1])


def test_cpu_path_adds_the_steps_only_when_asked():
    names = [type(step).__name__ for step in post_crop_transform("mocov2", 16, [0.0] * 3, [1.0] * 3).transforms]
    on = post_crop_transform("mocov2", 16, [0.0] * 3, [1.0] * 3, stain_jitter=(0.1, 0.01), orientation=True)
    assert "StainJitter" not in names and "RandomOrientation" not in names
    assert [type(step).__name__ for step in on.transforms][:2] == ["RandomOrientation", "StainJitter"]
    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    torch.manual_seed(5)
    out = StainJitter((0.0, 0.0))(image)
    assert out.dtype == torch.float32 and (out - image.float() / 255).abs().max() < 1e-5


def test_device_path_is_unchanged_when_off_and_seeded_when_on():
    images = torch.randint(0, 256, (4, 3, 24, 24), dtype=torch.uint8)
    args = (3, 16, "mocov2", [0.5] * 3, [0.25] * 3)
    default = ba.BatchViewAugmenter(*args).with_flips(images, torch.Generator().manual_seed(1))
    off = ba.BatchViewAugmenter(*args, stain_jitter=(0.0, 0.0), orientation=False).with_flips(
        images, torch.Generator().manual_seed(1))
    for a, b in zip(default, off, strict=True):
        assert torch.equal(a, b)
    on = ba.BatchViewAugmenter(*args, stain_jitter=(0.2, 0.02), orientation=True)
    first = on.with_flips(images, torch.Generator().manual_seed(1))
    second = on.with_flips(images, torch.Generator().manual_seed(1))
    assert torch.equal(first[0], second[0]) and not torch.equal(first[0], default[0])
    assert torch.isfinite(first[0]).all()
    torch.testing.assert_close(first[1], default[1])  # same crops: the new draws come after the boxes
