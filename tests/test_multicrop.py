"""Multi-crop: the loss against a direct computation, the small crops' augmentation on both data paths, BatchNorm
groups, config errors, compute cost, composition with MoCHi, HVS and Fast-MoCo, resume and two processes."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_checkpoint import assert_resume_is_exact, weights
from test_distributed import _train, identical_replicas, overrides_for, run_ranks

from mochi_hvs.compute_cost import units_per_image
from mochi_hvs.config import ConfigError, LocalCrops, load_config, local_crops
from mochi_hvs.data.augment import blur_kernel_size
from mochi_hvs.data.batch_augment import BatchViewAugmenter
from mochi_hvs.data.batches import DeviceAugmentedBatches, LoaderBatches
from mochi_hvs.data.datasets import load_fashion_mnist
from mochi_hvs.data.loader import local_view_sampler
from mochi_hvs.methods.base import Method, ViewChoice
from mochi_hvs.methods.multicrop import MultiCrop, encode_crops
from mochi_hvs.models import MoCo
from mochi_hvs.random_streams import StepRandom
from mochi_hvs.step import ContrastiveStep
from mochi_hvs.train import Trainer

ENABLED = ["multicrop.enabled=true"]
SWAV_SCALE = (0.05, 0.14)
RATIO = (3 / 4, 4 / 3)


def small_moco(bn_splits=1):
    torch.manual_seed(0)
    model = MoCo("resnet18", bn_splits=bn_splits, feature_dim=16, queue_size=64, shuffle_bn=False)
    model.eval()  # BatchNorm on running statistics: a crop's embedding does not depend on the batch around it
    return model


def rng():
    return StepRandom(0, 0, 0, torch.device("cpu"))


def reference_loss(model, views, local_views, temperature, weight, symmetric, pairs=None):
    """The multi-crop loss written out: every query (the global one, and each small crop through the query encoder
    alone) against the key of the other global view and the queue, by hand; cross-entropy with the positive first;
    the small crops' losses averaged over the crops and weighted; both directions summed when symmetric.
    pairs: the (query view, key view) of each sample, (0, 1) by default."""
    batch, crops = views.shape[0], local_views.shape[1]
    rows = torch.arange(batch)
    first, second = pairs if pairs is not None else (torch.zeros(batch, dtype=torch.long),
                                                     torch.ones(batch, dtype=torch.long))
    queue = model.queue.features

    def info_nce(q, k):
        logits = torch.cat([(q * k).sum(dim=1, keepdim=True), q @ queue.t()], dim=1) / temperature
        return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()

    with torch.no_grad():
        total = 0.0
        for a, b in ((first, second), (second, first))[: 2 if symmetric else 1]:
            q = F.normalize(model.encoder_q(views[rows, a]).embedding, dim=1)
            k = F.normalize(model.encoder_k(views[rows, b]).embedding, dim=1)
            local = sum(info_nce(F.normalize(model.encoder_q(local_views[:, c]).embedding, dim=1), k)
                        for c in range(crops))
            total = total + info_nce(q, k) + weight * local / crops
        return total


@pytest.mark.parametrize(("crops", "weight", "symmetric"), [(3, 1.0, False), (2, 0.5, True), (1, 2.0, True)])
def test_the_loss_matches_a_direct_computation(crops, weight, symmetric):
    model = small_moco()
    cfg = load_config(None, [*ENABLED, f"multicrop.local_crops={crops}", f"multicrop.weight={weight}"])
    views, local_views = torch.randn(4, 2, 3, 28, 28), torch.randn(4, crops, 3, 12, 12)
    step = ContrastiveStep(model, 0.2, symmetric, [MultiCrop(cfg, model)])
    out = step(views, rng(), local_views=local_views, local_boxes=torch.rand(4, crops, 4))
    expected = reference_loss(model, views, local_views, 0.2, weight, symmetric)
    assert torch.allclose(out.loss, expected, atol=1e-5)
    assert {"proxy_top1", "multicrop/proxy_top1"} <= set(out.metrics)  # the global query keeps the plain names


def test_the_small_crops_are_encoded_once_per_step():
    model = small_moco()
    cfg = load_config(None, [*ENABLED, "multicrop.local_crops=3"])
    shapes = []
    model.encoder_q.register_forward_hook(lambda module, args, output: shapes.append(tuple(args[0].shape)))
    step = ContrastiveStep(model, 0.2, True, [MultiCrop(cfg, model)])
    step(torch.randn(4, 2, 3, 28, 28), rng(), local_views=torch.randn(4, 3, 3, 12, 12))
    # The symmetric loss scores them in both directions, from one crop-major forward of all 3 x 4 crops.
    assert sorted(shapes) == [(4, 3, 28, 28), (4, 3, 28, 28), (12, 3, 12, 12)]
    shapes.clear()
    step(torch.randn(4, 2, 3, 28, 28), rng(), local_views=torch.randn(4, 3, 3, 12, 12))
    assert (12, 3, 12, 12) in shapes  # the next step encodes its own crops


def test_the_same_tensors_fed_twice_give_the_current_weights_loss_and_a_working_backward():
    # A user over-fitting one batch, or a benchmark re-feeding it: the second step must encode the crops again with
    # the updated weights (no state kept from the first step) and back-propagate through its own graph.
    model = small_moco()
    cfg = load_config(None, [*ENABLED, "multicrop.local_crops=2"])
    step = ContrastiveStep(model, 0.2, True, [MultiCrop(cfg, model)])
    views, local_views = torch.randn(4, 2, 3, 28, 28), torch.randn(4, 2, 3, 12, 12)
    optimizer = torch.optim.SGD(model.encoder_q.parameters(), lr=0.5)
    losses = []
    for _ in range(2):
        out = step(views, rng(), local_views=local_views)
        assert torch.allclose(out.loss, reference_loss(model, views, local_views, 0.2, 1.0, True), atol=1e-5)
        optimizer.zero_grad()
        out.loss.backward()
        assert model.encoder_q.head[0].weight.grad.abs().sum() > 0
        optimizer.step()
        losses.append(float(out.loss.detach()))
    assert abs(losses[1] - losses[0]) > 0.1  # the weights moved: a stale loss would be caught


def test_every_crop_of_a_sample_is_in_that_sample_batchnorm_group():
    model = small_moco(bn_splits=2)
    model.train()
    crops = torch.randn(4, 3, 3, 12, 12)
    with torch.no_grad():
        before = encode_crops(crops, model.encoder_q)
        changed = crops.clone()
        changed[1] = torch.randn(3, 3, 12, 12)  # sample 1 (group 1), all of its crops
        after = encode_crops(changed, model.encoder_q)
    assert before.shape == (3, 4, 16)
    assert torch.equal(before[:, [0, 2]], after[:, [0, 2]])  # group 0: samples 0 and 2, untouched
    assert not torch.allclose(before[:, 3], after[:, 3])  # group 1 normalises with sample 1's new statistics


class ChosenPairs(Method):
    """A view choice fixed per sample, standing for HVS's."""

    section = "chosen"

    def __init__(self, cfg, model, first, second):
        super().__init__(cfg, model)
        self.first, self.second = first, second

    def choose_views(self, ctx):
        return ViewChoice(self.first, self.second)


@pytest.mark.parametrize("symmetric", [False, True])
def test_the_small_crops_are_scored_against_the_keys_of_the_chosen_pair(symmetric):
    model = small_moco()
    cfg = load_config(None, [*ENABLED, "multicrop.local_crops=2"])
    views, local_views = torch.randn(4, 3, 3, 28, 28), torch.randn(4, 2, 3, 12, 12)
    first, second = torch.tensor([2, 0, 1, 2]), torch.tensor([0, 2, 2, 1])
    methods = [ChosenPairs(cfg, model, first, second), MultiCrop(cfg, model)]
    out = ContrastiveStep(model, 0.2, symmetric, methods)(views, rng(), local_views=local_views)
    expected = reference_loss(model, views, local_views, 0.2, 1.0, symmetric, pairs=(first, second))
    assert torch.allclose(out.loss, expected, atol=1e-5)


def test_without_small_crops_the_method_says_what_is_missing():
    model = small_moco()
    step = ContrastiveStep(model, 0.2, False, [MultiCrop(load_config(None, ENABLED), model)])
    with pytest.raises(ValueError, match="multi-crop needs the small crops"):
        step(torch.randn(4, 2, 3, 28, 28), rng())


def box_area_and_ratio(boxes, height, width):
    w, h = (boxes[..., 2] - boxes[..., 0]) * width, (boxes[..., 3] - boxes[..., 1]) * height
    return w * h / (height * width), w, h


def assert_swav_local_boxes(boxes, side):
    """Boxes (..., 4) normalised, of crops of a side x side image: within the image, areas in SwAV's range and
    aspect ratios in [3/4, 4/3], each up to rounding the crop's sides to whole pixels."""
    assert (boxes >= 0).all() and (boxes <= 1).all()
    area, w, h = box_area_and_ratio(boxes, side, side)
    slack = (0.5 * (w + h) + 0.75) / side**2  # |w h - w* h*| when |w - w*|, |h - h*| <= 1/2
    assert (area >= SWAV_SCALE[0] - slack).all() and (area <= SWAV_SCALE[1] + slack).all()
    assert float(area.min()) < 0.06 and float(area.max()) > 0.13  # the whole range is drawn
    ratio, rounding = w / h, 1 / w + 1 / h
    assert (ratio >= RATIO[0] * (1 - rounding)).all() and (ratio <= RATIO[1] * (1 + 2 * rounding)).all()


def test_device_path_small_crops_follow_swav_and_the_views_augmentation():
    images = torch.randint(0, 256, (8, 3, 112, 112), dtype=torch.uint8)
    crops = BatchViewAugmenter(50, 48, "mocov2", [0.5] * 3, [0.25] * 3, crop_scale=SWAV_SCALE)
    global_views = BatchViewAugmenter(2, 112, "mocov2", [0.5] * 3, [0.25] * 3)
    views, boxes = crops(images, torch.Generator().manual_seed(0))
    assert views.shape == (8, 50, 3, 48, 48) and boxes.shape == (8, 50, 4)
    assert_swav_local_boxes(boxes, 112)
    # The same augmentation as the views but for the crop: aug+ with the blur kernel at 10% of the crop's side.
    assert (crops.blur, crops.mean.tolist(), crops.std.tolist()) == (global_views.blur, global_views.mean.tolist(),
                                                                     global_views.std.tolist())
    assert crops.kernel_size == blur_kernel_size(48) == 5


def test_cpu_path_small_crops_follow_swav():
    cfg = load_config(None, ["data.augmentation=mocov2"])
    sampler = local_view_sampler(cfg.data, LocalCrops(400, 48, SWAV_SCALE))
    torch.manual_seed(0)
    views, boxes = sampler(torch.randint(0, 256, (3, 112, 112), dtype=torch.uint8))
    assert views.shape == (400, 3, 48, 48) and views.dtype == torch.float32 and boxes.shape == (400, 4)
    assert_swav_local_boxes(boxes, 112)


CROPS = LocalCrops(3, 12, SWAV_SCALE)


@pytest.mark.parametrize("source", [DeviceAugmentedBatches, LoaderBatches])
def test_both_data_paths_draw_small_crops_with_boxes_after_the_same_views(source):
    cfg = load_config(None, ["data.workers=0"])
    images = load_fashion_mnist(None, train=False).subset(np.arange(32))
    batches = list(source(images, cfg.data, 2, 16, seed=5, device=torch.device("cpu"), local_crops=CROPS))
    first = batches[0]
    assert first.local_views.shape == (16, 3, 3, 12, 12) and first.local_boxes.shape == (16, 3, 4)
    assert_swav_local_boxes_loosely(first.local_boxes)
    # The global views are those drawn without multi-crop; the small crops are a function of the seed too.
    plain = list(source(images, cfg.data, 2, 16, seed=5, device=torch.device("cpu")))
    assert plain[0].local_views is None and plain[0].local_boxes is None
    assert all(torch.equal(x.views, y.views) and torch.equal(x.boxes, y.boxes)
               for x, y in zip(batches, plain, strict=True))
    again = source(images, cfg.data, 2, 16, seed=5, device=torch.device("cpu"), local_crops=CROPS)
    again.set_epoch(0, start_batch=1)  # a resumed epoch draws the same crops
    assert torch.equal(next(iter(again)).local_views, batches[1].local_views)
    assert not torch.equal(first.local_views[0, 0], first.local_views[0, 1])  # crops of a sample differ


def assert_swav_local_boxes_loosely(boxes):
    """Boxes of 28 px images: whole-pixel sides move a small crop's area by up to about 0.02 of the image."""
    assert (boxes >= 0).all() and (boxes <= 1).all()
    area = box_area_and_ratio(boxes, 28, 28)[0]
    assert (area >= SWAV_SCALE[0] - 0.02).all() and (area <= SWAV_SCALE[1] + 0.02).all()


@pytest.mark.parametrize(("overrides", "expected"), [
    ([], LocalCrops(6, 12, SWAV_SCALE)),  # 28 x 96 / 224 = 12
    (["data.image_size=224"], LocalCrops(6, 96, SWAV_SCALE)),  # SwAV's 2 x 224 + 6 x 96
    (["data.image_size=32"], LocalCrops(6, 14, SWAV_SCALE)),  # 13.7 rounded
    (["data.image_size=16"], LocalCrops(6, 8, SWAV_SCALE)),  # at least 8 px
    (["multicrop.local_crops=2", "multicrop.local_size=20", "multicrop.local_scale=[0.1,0.3]"],
     LocalCrops(2, 20, (0.1, 0.3))),
])
def test_the_small_crops_the_config_asks_for(overrides, expected):
    assert local_crops(load_config(None, [*ENABLED, *overrides])) == expected
    assert local_crops(load_config(None, overrides)) is None  # disabled: none


@pytest.mark.parametrize(("overrides", "message"), [
    (["multicrop.local_crops=0"], "'multicrop.local_crops' must be >= 1; got 0"),
    (["multicrop.local_size=29"], "'multicrop.local_size' must not exceed data.image_size=28 .*; got 29"),
    (["data.image_size=8"] + ["multicrop.local_size=12"], "'multicrop.local_size' must not exceed data.image_size=8"),
    (["multicrop.local_size=4"], "'multicrop.local_size' must be null or >= 8; got 4"),
    (["multicrop.local_scale=[0.14,0.05]"], r"'multicrop.local_scale' must be \[low, high\] with 0 < low <= high"),
    (["multicrop.local_scale=[0.05]"], r"'multicrop.local_scale' must be \[low, high\]"),
    (["multicrop.local_scale=[0,0.1]"], r"'multicrop.local_scale' must be \[low, high\]"),
    (["multicrop.weight=0"], "'multicrop.weight' must be > 0; got 0.0"),
    (["objective=supervised"], "'multicrop.enabled' needs objective=contrastive"),
])
def test_config_errors_name_the_keys(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*ENABLED, *overrides])


def test_a_disabled_section_is_not_validated_against_the_image_size():
    assert load_config(None, ["multicrop.local_size=40"]).multicrop.local_size == 40


def test_the_small_crops_cost_their_pixels_once_per_step():
    crops = 6 * 3.0 * (12 / 28) ** 2  # six trained queries at (12 / 28)^2 of a view each
    assert units_per_image(load_config(None, ENABLED), selecting=False) == pytest.approx(4 + crops)
    symmetric = load_config(None, [*ENABLED, "moco.symmetric=true", "moco.queue_size=4096"])
    assert units_per_image(symmetric, selecting=False) == pytest.approx(8 + crops)  # encoded once, scored twice
    hvs = load_config(None, [*ENABLED, "hvs.enabled=true", "hvs.num_views=3", "hvs.scorer=momentum"])
    assert units_per_image(hvs, selecting=True) == pytest.approx(3 + 3 + crops)


@pytest.mark.parametrize(("augment_on", "extra"), [
    ("device", ["hvs.enabled=true", "hvs.num_views=3", "hvs.score_with_mochi=true"]),
    ("cpu", ["fast_moco.enabled=true", "fast_moco.mode=replace"]),
])
def test_composes_with_mochi_hvs_and_fast_moco(quick_overrides, augment_on, extra):
    cfg = load_config(None, quick_overrides + ENABLED + [
        "multicrop.local_crops=2", f"data.augment_on={augment_on}", "data.workers=0", "moco.symmetric=true",
        "mochi.enabled=true", "mochi.warmup_epochs=0", "mochi.num_hard=16", "mochi.num_mix=8",
        "mochi.num_query_mix=4", *extra])
    trainer = Trainer(cfg)
    before = weights(trainer)
    batches = iter(trainer.parts.batches)
    metrics = [trainer.train_step(next(batches)) for _ in range(2)]
    assert all(math.isfinite(float(m["loss"])) for m in metrics)
    # MoCHi's synthetic negatives for every small crop too; HVS's analysis when it picks the pair.
    expected = {"proxy_top1", "mochi/logit_synthetic", "multicrop/proxy_top1", "multicrop/mochi/logit_synthetic"}
    if "hvs.enabled=true" in extra:
        expected.add("hvs/iou_selected")
    assert expected <= set(metrics[-1])
    after = trainer.model.state_dict()
    assert not torch.equal(before["encoder_q.backbone.conv1.weight"], after["encoder_q.backbone.conv1.weight"])
    trainer.close()


def test_resume_is_exact_with_multicrop_on(quick_overrides):
    assert_resume_is_exact(quick_overrides + ENABLED + ["multicrop.local_crops=2"])


@pytest.mark.slow
def test_multicrop_with_mochi_runs_under_two_processes(tiny_overrides, tmp_path):
    run_ranks(_train, 2, overrides_for(
        tiny_overrides, tmp_path, "multicrop", *ENABLED, "multicrop.local_crops=2", "optim.steps=2",
        "eval.knn_baseline=false", "eval.knn_pixels=false", "moco.symmetric=true", "mochi.enabled=true",
        "mochi.warmup_epochs=0", "mochi.num_hard=32", "mochi.num_mix=16", "mochi.num_query_mix=8"), tmp_path)
    r0 = identical_replicas(tmp_path)  # DDP averaged the small crops' gradients
    assert len(r0["losses"]) == 2 and all(math.isfinite(loss) for loss in r0["losses"])
