import math

import pytest
import torch
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from mochi_hvs.config import Config
from mochi_hvs.data import batch_augment as ba
from mochi_hvs.data.augment import JITTER


def rgb(n=6, size=12, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "ours, theirs, factors",
    [
        (ba.adjust_brightness, TF.adjust_brightness, [0.6, 1.0, 1.4]),
        (ba.adjust_contrast, TF.adjust_contrast, [0.6, 1.0, 1.4]),
        (ba.adjust_saturation, TF.adjust_saturation, [0.6, 1.0, 1.4]),
        (ba.adjust_hue, TF.adjust_hue, [-0.1, 0.0, 0.07]),
    ],
)
def test_per_sample_colour_ops_match_torchvision(ours, theirs, factors):
    x = rgb(len(factors))
    out = ours(x, torch.tensor(factors))
    for i, f in enumerate(factors):
        assert torch.allclose(out[i], theirs(x[i], f), atol=2e-5), (ours.__name__, f)


def test_grayscale_matches_torchvision():
    x = rgb(2)
    assert torch.allclose(ba.grayscale(x), TF.rgb_to_grayscale(x), atol=1e-6)


def test_gaussian_blur_matches_torchvision():
    x = rgb(3, size=20)
    sigmas = torch.tensor([0.1, 0.8, 2.0])
    out = ba.gaussian_blur(x, sigmas, kernel_size=5)
    for i, s in enumerate(sigmas.tolist()):
        assert torch.allclose(out[i], TF.gaussian_blur(x[i], [5, 5], [s, s]), atol=1e-5)


def test_crop_resize_matches_torchvision_bilinear_inside_the_crop():
    x = rgb(1, size=24)
    box = torch.tensor([[3.0, 5.0, 19.0, 17.0]])  # left, top, right, bottom: a 16 x 12 crop
    out = ba.resized_crops(x, box, torch.zeros(1, dtype=torch.long), 32)
    ref = TF.resized_crop(x[0], top=5, left=3, height=12, width=16, size=[32, 32], antialias=False)
    # Identical sampling grid; only the outermost ring may differ (edge clamping vs neighbour pixels).
    assert torch.allclose(out[0, :, 1:-1, 1:-1], ref[:, 1:-1, 1:-1], atol=1e-5)


def test_crop_boxes_follow_random_resized_crop_distribution():
    g = torch.Generator().manual_seed(0)
    boxes = ba.sample_crop_boxes(20000, 32, 32, g, torch.device("cpu"))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 32).all() and (boxes[:, 3] <= 32).all()
    assert (w >= 1).all() and (h >= 1).all()
    assert torch.equal(boxes, boxes.round()), "torchvision crops have integer pixel offsets and sizes"
    area = w * h / 1024
    # Same statistics as torchvision's own sampler.
    torch.manual_seed(0)
    ref = torch.tensor([RandomResizedCrop.get_params(torch.zeros(3, 32, 32), (0.2, 1.0), (3 / 4, 4 / 3))
                        for _ in range(20000)], dtype=torch.float32)
    ref_area = ref[:, 2] * ref[:, 3] / 1024
    assert abs(float(area.mean()) - float(ref_area.mean())) < 0.01
    assert abs(float(area.std()) - float(ref_area.std())) < 0.01
    ref_ratio = (ref[:, 3] / ref[:, 2]).log()
    assert abs(float((w / h).log().mean()) - float(ref_ratio.mean())) < 0.01
    centre = (boxes[:, 0] + boxes[:, 2]) / 2
    ref_centre = ref[:, 1] + ref[:, 3] / 2
    assert abs(float(centre.mean()) - float(ref_centre.mean())) < 0.2


def test_crop_fallback_is_the_central_crop():
    g = torch.Generator().manual_seed(0)
    # A 1 x 64 strip: no crop with ratio in [3/4, 4/3] fits, so torchvision falls back to the centre.
    boxes = ba.sample_crop_boxes(5, 1, 64, g, torch.device("cpu"))
    assert boxes.tolist() == [[31.0, 0.0, 32.0, 1.0]] * 5


def test_augmenter_shapes_boxes_and_determinism():
    images = (rgb(4, size=28) * 255).to(torch.uint8)
    aug = ba.BatchViewAugmenter(3, 20, "mocov2", [0.5] * 3, [0.25] * 3)
    v1, b1 = aug(images, torch.Generator().manual_seed(7))
    v2_, b2 = aug(images, torch.Generator().manual_seed(7))
    assert v1.shape == (4, 3, 3, 20, 20) and b1.shape == (4, 3, 4)
    assert torch.equal(v1, v2_) and torch.equal(b1, b2)
    assert (b1 >= 0).all() and (b1 <= 1).all()
    # Normalised values live in [(0 - 0.5) / 0.25, (1 - 0.5) / 0.25].
    assert v1.min() >= -2 - 1e-5 and v1.max() <= 2 + 1e-5
    v3, _ = aug(images, torch.Generator().manual_seed(8))
    assert not torch.equal(v1, v3)


def test_augmenter_photometric_rates():
    """Share of views touched by jitter (0.8), grayscale (0.2) and flip (0.5), read from a colour image."""
    n = 4000
    image = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    image[0, 0] = 200  # pure red, left half brighter than right
    image[0, 0, :, 4:] = 100
    aug = ba.BatchViewAugmenter(n, 8, "mocov2_small", [0.0] * 3, [1.0] * 3)
    views, boxes = aug(image, torch.Generator().manual_seed(0))
    v = views[0]
    grey = (v[:, 0] - v[:, 1]).abs().amax(dim=(1, 2)) < 1e-6
    assert abs(grey.float().mean().item() - 0.2) < 0.03
    full = (boxes[0, :, 0] == 0) & (boxes[0, :, 2] == 1)  # crops spanning the whole width show the flip
    left_brighter = v[:, :, :, :2].mean(dim=(1, 2, 3)) > v[:, :, :, -2:].mean(dim=(1, 2, 3))
    assert full.sum() > 100
    assert abs(left_brighter[full].float().mean().item() - 0.5) < 0.1
    uniform = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    uniform[0, 0] = 200  # a flat red image: only colour operations can change a pixel
    flat, _ = aug(uniform, torch.Generator().manual_seed(1))
    f = flat[0]
    flat_grey = (f[:, 0] - f[:, 1]).abs().amax(dim=(1, 2)) < 1e-6
    reference = torch.tensor([200 / 255, 0.0, 0.0]).view(3, 1, 1)
    colour_changed = ~flat_grey & ((f - reference).abs().amax(dim=(1, 2, 3)) > 1e-3)
    expected = 0.8 * 0.8  # jitter applied (0.8) and not turned grey (0.8)
    assert abs(colour_changed.float().mean().item() - expected) < 0.04
    assert math.isclose(aug.kernel_size, 3)


def test_augmenter_honours_the_configured_crop_scale():
    images = torch.randint(0, 256, (64, 3, 28, 28), dtype=torch.uint8)
    for low in (0.2, 0.6):
        aug = ba.BatchViewAugmenter(2, 28, "mocov2", [0.5] * 3, [0.25] * 3, crop_scale=(low, 1.0))
        _, boxes = aug(images, torch.Generator().manual_seed(3))
        area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
        # Rounding crop sides to whole pixels moves the area by at most about one pixel row/column.
        assert area.min() >= low - 2 / 28
        if low == 0.2:
            assert area.min() < 0.5


GREY = 128  # a constant grey image: brightness alone changes it, by its factor (up to 1.8 x 128 < 255)


def grey_brightness_factors(color_jitter, n=300):
    """Per view of a constant grey image (blur off, mean 0, std 1), the factor its pixels were scaled by."""
    image = torch.full((1, 3, 16, 16), GREY, dtype=torch.uint8)
    aug = ba.BatchViewAugmenter(n, 8, "mocov2_small", [0.0] * 3, [1.0] * 3, color_jitter=color_jitter)
    views, _ = aug(image, torch.Generator().manual_seed(0))
    return views[0].mean(dim=(1, 2, 3)) / (GREY / 255)


def test_default_color_jitter_is_aug_plus():
    assert Config().data.color_jitter == list(JITTER)
    images = (rgb(4, size=28) * 255).to(torch.uint8)
    default = ba.BatchViewAugmenter(3, 20, "mocov2", [0.5] * 3, [0.25] * 3)
    explicit = ba.BatchViewAugmenter(3, 20, "mocov2", [0.5] * 3, [0.25] * 3, color_jitter=list(JITTER))
    ours, aug_plus = (aug.with_flips(images, torch.Generator().manual_seed(4)) for aug in (default, explicit))
    assert all(torch.equal(a, b) for a, b in zip(ours, aug_plus, strict=True))


def test_zero_jitter_strengths_give_the_views_without_the_jitter_step(monkeypatch):
    images = (rgb(4, size=20) * 255).to(torch.uint8)

    def views(**kwargs):
        aug = ba.BatchViewAugmenter(8, 16, "mocov2_small", [0.5] * 3, [0.25] * 3, **kwargs)
        return aug(images, torch.Generator().manual_seed(2))[0]

    default, zero = views(), views(color_jitter=[0.0] * 4)
    for op in ("adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue"):
        monkeypatch.setattr(ba, op, lambda x, factor: x)  # the jitter step's draws, no change to the pixels
    skipped = views()
    assert torch.equal(zero, skipped)  # exactly: a hue shift of 0 through the HSV round trip would move pixels
    assert not torch.equal(default, skipped)


def test_brightness_strength_reaches_the_batched_jitter():
    aug_plus = grey_brightness_factors(list(JITTER))
    assert aug_plus.min() >= 0.6 - 1e-3 and aug_plus.max() <= 1.4 + 1e-3
    strong = grey_brightness_factors([0.8, 0.0, 0.0, 0.0])
    assert strong.min() >= 0.2 - 1e-3 and strong.max() <= 1.8 + 1e-3
    assert strong.min() < 0.55 and strong.max() > 1.45  # beyond aug+'s [0.6, 1.4]
    assert (grey_brightness_factors([1.5, 0.0, 0.0, 0.0]) > 0).all()  # as torchvision: from [max(0, 1 - b), 1 + b]
