"""LC-loss (local contrast): the dense maps and heads, the correspondence from crop boxes and flips (against cases
worked out by hand), the loss against a direct computation, the flips recorded on both data paths, config errors,
composition with MoCHi, HVS, Fast-MoCo and the symmetric loss, resume, and two processes."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_checkpoint import assert_resume_is_exact, weights
from test_distributed import _train, overrides_for, run_ranks
from torchvision.transforms import v2

from mochi_hvs.compute_cost import units_per_image
from mochi_hvs.config import ConfigError, load_config
from mochi_hvs.data import batch_augment as ba
from mochi_hvs.data.augment import FLIP_P, GRAYSCALE_P, JITTER, JITTER_P, post_crop_transform
from mochi_hvs.data.batches import DeviceAugmentedBatches, LoaderBatches
from mochi_hvs.data.datasets import load_fashion_mnist
from mochi_hvs.data.views import ViewSampler
from mochi_hvs.methods import Method, ViewChoice
from mochi_hvs.methods.fast_moco import FastMoco
from mochi_hvs.methods.hvs import Hvs
from mochi_hvs.methods.lc import LocalContrast, correspondence, image_to_view, local_contrast_loss, view_to_image
from mochi_hvs.methods.multicrop import MultiCrop
from mochi_hvs.models import MoCo
from mochi_hvs.models.backbone import build_backbone
from mochi_hvs.models.resnet import feature_map_side
from mochi_hvs.random_streams import StepRandom
from mochi_hvs.step import ContrastiveStep
from mochi_hvs.train import Trainer
from mochi_hvs.weights.resume_changes import APPLY, REFUSE, policy

ENABLED = ["lc.enabled=true", "data.image_size=56"]
CPU = torch.device("cpu")


# ----------------------------------------------------------------------------------------------- the dense maps


@pytest.mark.parametrize(("size", "small_stem"), [(28, False), (56, False), (64, False), (20, False), (28, True),
                                                  (32, True), (9, True)])
def test_the_feature_map_side_is_what_the_backbone_produces(size, small_stem):
    net, _ = build_backbone("resnet18", small_stem)
    up_to_layer4 = nn.Sequential(*list(net.children())[:-2]).eval()
    with torch.no_grad():
        side = up_to_layer4(torch.randn(1, 3, size, size)).shape[-1]
    assert feature_map_side(size, small_stem) == side
    assert feature_map_side(28) == 1 and feature_map_side(56) == 2 and feature_map_side(224) == 7


def lc_moco(shuffle_bn=True, hidden_dim=None):
    """A small MoCo in eval mode (BatchNorm on running statistics: a sample's outputs do not depend on its batch)
    with the dense heads LC-loss gives it."""
    torch.manual_seed(0)
    model = MoCo("resnet18", bn_splits=1, feature_dim=16, queue_size=64, shuffle_bn=shuffle_bn)
    model.eval()
    cfg = load_config(None, [*ENABLED, "lc.dim=8", f"lc.hidden_dim={hidden_dim or 'null'}", "lc.weight=0.7",
                             "lc.temperature=0.3"])
    return model, LocalContrast(cfg, model)


def dense_reference(encoder, x):
    """The dense embeddings computed apart: torchvision's layers up to layer4, the dense head, L2 per location."""
    up_to_layer4 = nn.Sequential(*list(encoder.backbone.children())[:-2])
    return F.normalize(encoder.dense_head(up_to_layer4(x)), dim=1)


def test_the_dense_map_comes_from_the_same_forward_and_leaves_the_embeddings_unchanged():
    torch.manual_seed(0)
    model = MoCo("resnet18", bn_splits=1, feature_dim=16, queue_size=64).eval()
    x = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        plain = model.encoder_q(x)
        model.add_dense_heads(8, 32)
        calls = []
        model.encoder_q.backbone.layer4.register_forward_hook(lambda *_: calls.append(1))
        out = model.encoder_q(x, dense=True)
        unasked = model.encoder_q(x)
    assert torch.equal(out.embedding, plain.embedding)  # the pooled features are ResNet.forward's, bit for bit
    assert torch.equal(out.pooled, plain.pooled) and plain.pooled.shape == (3, model.feature_width)
    assert plain.dense is None and unasked.dense is None  # a dense map only where asked, even with a dense head
    assert len(calls) == 2  # one pass through the backbone gives both (and one for the forward without a map)
    dense = out.dense
    assert dense.shape == (3, 8, 2, 2)
    assert torch.allclose(dense.norm(dim=1), torch.ones(3, 2, 2))
    assert torch.allclose(dense, dense_reference(model.encoder_q, x), atol=1e-6)
    head = model.encoder_q.dense_head
    assert [type(m) for m in head] == [nn.Conv2d, nn.ReLU, nn.Conv2d] and head[0].out_channels == 32
    assert head[0].kernel_size == (1, 1) and head[2].kernel_size == (1, 1)


def test_the_key_side_dense_map_is_unshuffled_with_the_keys_for_one_view_and_for_several():
    model, _ = lc_moco(shuffle_bn=True)
    views = torch.randn(6, 3, 3, 56, 56)
    with torch.no_grad():
        keys = model.key(views[:, 0], torch.Generator().manual_seed(1), dense=True)
        plain = model.encoder_k(views[:, 0])
        assert torch.allclose(keys.embedding, plain.embedding, atol=1e-6)
        assert torch.allclose(keys.pooled, plain.pooled, atol=1e-5)
        assert torch.allclose(keys.dense, dense_reference(model.encoder_k, views[:, 0]), atol=1e-6)
        several = model.key(views, torch.Generator().manual_seed(2), dense=True)
        assert several.dense.shape == (6, 3, 8, 2, 2) and several.embedding.shape == (6, 3, 16)
        for v in range(3):
            assert torch.allclose(several.dense[:, v], dense_reference(model.encoder_k, views[:, v]), atol=1e-6)
        assert model.key(views, torch.Generator().manual_seed(2)).dense is None


def test_the_key_dense_head_is_a_frozen_copy_that_follows_by_momentum():
    model, _ = lc_moco()
    q_head, k_head = model.encoder_q.dense_head, model.encoder_k.dense_head
    assert all(torch.equal(a, b) for a, b in zip(q_head.parameters(), k_head.parameters(), strict=True))
    assert all(p.requires_grad for p in q_head.parameters()) and not any(p.requires_grad for p in k_head.parameters())
    before = [p.clone() for p in k_head.parameters()]
    with torch.no_grad():
        for p in q_head.parameters():
            p.add_(1.0)
    model.momentum_update(0.75)
    for old, new in zip(before, k_head.parameters(), strict=True):
        assert torch.allclose(new, old + 0.25)
    assert {"encoder_q.dense_head.0.weight", "encoder_k.dense_head.2.bias"} <= set(model.state_dict())


# ------------------------------------------------------------------------------------------------ correspondence


def test_correspondence_on_a_2x2_map_worked_out_by_hand():
    # Query view: the top-left quarter of the image, box (0, 0, 0.5, 0.5), not flipped. Its cell centres (u, v) in
    # the view: 0 (0.25, 0.25), 1 (0.75, 0.25), 2 (0.25, 0.75), 3 (0.75, 0.75); in the image x = 0.5 u, y = 0.5 v:
    # 0 (0.125, 0.125), 1 (0.375, 0.125), 2 (0.125, 0.375), 3 (0.375, 0.375).
    # Key view: box (0.25, 0, 0.75, 0.5), flipped. Cells 0 and 2 (x = 0.125) lie left of it: no match. Cells 1 and
    # 3 (x = 0.375) sit at (0.375 - 0.25) / 0.5 = 0.25 across the key crop, which the flip shows at 1 - 0.25 =
    # 0.75: column 1; at y = 0.125 -> 0.25, row 0, and y = 0.375 -> 0.75, row 1. So 1 -> key cell 1, 3 -> key cell 3.
    cells, matched = correspondence(torch.tensor([[0.0, 0.0, 0.5, 0.5]]), torch.tensor([False]),
                                    torch.tensor([[0.25, 0.0, 0.75, 0.5]]), torch.tensor([True]), 2)
    assert matched.tolist() == [[False, True, False, True]]
    assert cells[matched].tolist() == [1, 3]
    # Without the key's flip the same points are seen at 0.25 across: column 0.
    cells, matched = correspondence(torch.tensor([[0.0, 0.0, 0.5, 0.5]]), torch.tensor([False]),
                                    torch.tensor([[0.25, 0.0, 0.75, 0.5]]), torch.tensor([False]), 2)
    assert cells[matched].tolist() == [0, 2]


def test_correspondence_on_a_4x4_map_worked_out_by_hand():
    # Query view: the whole image, flipped. Cell (r, c) has its centre at u = (c + 0.5) / 4 in the view, which is
    # x = 1 - u = (3.5 - c) / 4 of the image, and y = (r + 0.5) / 4.
    # Key view: the bottom-right quarter, box (0.5, 0.5, 1, 1), not flipped: x >= 0.5 needs c <= 1, y >= 0.5 needs
    # r >= 2. There u_k = 2x - 1 = (1.5 - c) / 2: c = 0 -> 0.75 (column 3), c = 1 -> 0.25 (column 1); and
    # v_k = 2y - 1 = (r - 1.5) / 2: r = 2 -> 0.25 (row 1), r = 3 -> 0.75 (row 3).
    # So (2, 0) -> (1, 3), (2, 1) -> (1, 1), (3, 0) -> (3, 3), (3, 1) -> (3, 1): cells 8 -> 7, 9 -> 5, 12 -> 15,
    # 13 -> 13, and the other twelve have no match.
    # A second sample swaps the roles: query the bottom-right quarter unflipped, key the whole image flipped. Its
    # cell (r, c) is at x = 0.5 + (c + 0.5) / 8, y = 0.5 + (r + 0.5) / 8, always inside the key crop; the key view
    # shows x at 1 - x = (3.5 - c) / 8: column floor(4 (3.5 - c) / 8) = 1 for c = 0, 1 and 0 for c = 2, 3; and
    # row floor(4 y) = 2 for r = 0, 1 and 3 for r = 2, 3.
    cells, matched = correspondence(torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 1.0, 1.0]]),
                                    torch.tensor([True, False]),
                                    torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]),
                                    torch.tensor([False, True]), 4)
    assert matched[0].nonzero().flatten().tolist() == [8, 9, 12, 13]
    assert cells[0, [8, 9, 12, 13]].tolist() == [7, 5, 15, 13]
    assert matched[1].all()
    assert cells[1].view(4, 4).tolist() == [[9, 9, 8, 8], [9, 9, 8, 8], [13, 13, 12, 12], [13, 13, 12, 12]]


def test_a_view_matched_with_itself_maps_every_cell_to_itself_and_points_round_trip():
    torch.manual_seed(0)
    low = torch.rand(5, 2) * 0.5
    boxes = torch.cat([low, low + 0.2 + torch.rand(5, 2) * 0.3], dim=1)
    flips = torch.tensor([True, False, True, True, False])
    cells, matched = correspondence(boxes, flips, boxes, flips, 4)
    assert matched.all() and torch.equal(cells, torch.arange(16).expand(5, -1))
    points = torch.rand(5, 7, 2)
    back, inside = image_to_view(view_to_image(points, boxes, flips), boxes, flips)
    assert inside.all() and torch.allclose(back, points, atol=1e-6)


# ------------------------------------------------------------------------------------------------------ the loss


def reference_loss(q, k, cells, matched, temperature):
    """Per matched location, -log softmax of its positive among all key locations of the batch, averaged."""
    keys = k.reshape(-1, k.shape[-1])
    terms = []
    for i in range(q.shape[0]):
        for p in range(q.shape[1]):
            if matched[i, p]:
                logits = keys @ q[i, p] / temperature
                terms.append(torch.logsumexp(logits, dim=0) - logits[i * q.shape[1] + cells[i, p]])
    return torch.stack(terms).mean()


def test_the_loss_matches_a_direct_computation():
    torch.manual_seed(0)
    q = F.normalize(torch.randn(3, 4, 5, dtype=torch.float64), dim=-1)
    k = F.normalize(torch.randn(3, 4, 5, dtype=torch.float64), dim=-1)
    cells = torch.randint(4, (3, 4))
    matched = torch.rand(3, 4) < 0.6
    matched[0, 0] = True
    loss, metrics = local_contrast_loss(q, k, cells, matched, 0.3)
    assert torch.allclose(loss, reference_loss(q, k, cells, matched, 0.3), atol=1e-12)
    assert math.isclose(float(metrics["lc/matched"]), float(matched.double().mean()))
    logits = torch.einsum("bpd,nd->bpn", q, k.flatten(0, 1))
    target = torch.arange(3)[:, None] * 4 + cells
    hits = logits.argmax(dim=2) == target
    assert math.isclose(float(metrics["lc/top1"]), float(hits[matched].double().mean()))


def test_no_match_gives_zero_loss_that_still_reaches_the_parameters():
    q = F.normalize(torch.randn(2, 4, 5), dim=-1).requires_grad_()
    k = F.normalize(torch.randn(2, 4, 5), dim=-1)
    loss, metrics = local_contrast_loss(q, k, torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.bool),
                                        0.2)
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(metrics["lc/matched"]) == 0.0
    assert q.grad is not None and torch.equal(q.grad, torch.zeros_like(q))


def random_geometry(batch, views, seed=0):
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(batch, views, 2, generator=generator) * 0.4
    high = low + 0.35 + torch.rand(batch, views, 2, generator=generator) * 0.25
    return torch.cat([low, high], dim=2), torch.rand(batch, views, generator=generator) < 0.5


def direction_reference(model, views, boxes, flips, query_view, key_view, temperature):
    """One direction's local loss from dense maps computed apart (query view through f_q, key view through f_k)."""
    rows = torch.arange(views.shape[0])
    x_q, x_k = views[rows, query_view], views[rows, key_view]
    with torch.no_grad():
        q_map = dense_reference(model.encoder_q, x_q)
        k_map = dense_reference(model.encoder_k, x_k)
    side = q_map.shape[-1]
    cells, matched = correspondence(boxes[rows, query_view], flips[rows, query_view], boxes[rows, key_view],
                                    flips[rows, key_view], side)
    flat = (q_map.flatten(2).transpose(1, 2), k_map.flatten(2).transpose(1, 2))
    return reference_loss(*flat, cells, matched, temperature)


@pytest.mark.parametrize("symmetric", [False, True])
def test_the_step_adds_the_weighted_local_loss_of_each_direction(symmetric):
    model, lc = lc_moco(shuffle_bn=True)
    views = torch.randn(8, 2, 3, 56, 56)
    boxes, flips = random_geometry(8, 2)
    rng = StepRandom(0, 0, 0, CPU)
    with_lc = ContrastiveStep(model, 0.2, symmetric, [lc])(views, rng, boxes=boxes, flips=flips)
    plain = ContrastiveStep(model, 0.2, symmetric)(views, StepRandom(0, 0, 0, CPU), boxes=boxes, flips=flips)
    zeros = torch.zeros(8, dtype=torch.long)
    terms = [direction_reference(model, views, boxes, flips, zeros, zeros + 1, 0.3)]
    if symmetric:
        terms.append(direction_reference(model, views, boxes, flips, zeros + 1, zeros, 0.3))
    assert torch.allclose(with_lc.loss - plain.loss, 0.7 * sum(terms), atol=1e-5)
    assert torch.allclose(with_lc.metrics["lc/loss"], sum(terms) / len(terms), atol=1e-5)
    assert 0 < float(with_lc.metrics["lc/matched"]) <= 1


class FixedPairs(Method):
    """Picks a given (query view, key view) per sample, with no keys to reuse."""

    section = "hvs"

    def __init__(self, query_view, key_view):
        self.query_view, self.key_view = query_view, key_view

    def choose_views(self, ctx):
        return ViewChoice(self.query_view, self.key_view)


def test_the_local_loss_uses_the_chosen_views_boxes_and_flips():
    model, lc = lc_moco()
    views = torch.randn(8, 3, 3, 56, 56)
    boxes, flips = random_geometry(8, 3, seed=1)
    query_view, key_view = torch.tensor([2, 0, 1, 2, 1, 0, 2, 1]), torch.tensor([0, 2, 0, 1, 2, 1, 1, 0])
    out = ContrastiveStep(model, 0.2, True, [FixedPairs(query_view, key_view), lc])(
        views, StepRandom(0, 0, 0, CPU), boxes=boxes, flips=flips)
    expected = 0.5 * (direction_reference(model, views, boxes, flips, query_view, key_view, 0.3)
                      + direction_reference(model, views, boxes, flips, key_view, query_view, 0.3))
    assert torch.allclose(out.metrics["lc/loss"], expected, atol=1e-5)


def test_with_hvs_the_local_loss_takes_the_reused_key_maps_of_the_selected_pair():
    model, lc = lc_moco()
    cfg = load_config(None, ["hvs.enabled=true", "hvs.num_views=3", "moco.symmetric=true", "moco.temperature=0.2"])
    hvs = Hvs(cfg, model)
    chosen = []
    choose = hvs.choose_views
    hvs.choose_views = lambda ctx: chosen.append(choose(ctx)) or chosen[-1]
    views = torch.randn(8, 3, 3, 56, 56)
    boxes, flips = random_geometry(8, 3, seed=2)
    out = ContrastiveStep(model, 0.2, True, [hvs, lc])(views, StepRandom(0, 0, 0, CPU), boxes=boxes, flips=flips)
    (choice,) = chosen
    assert choice.keys is not None  # the keys, and so the key maps, come from scoring
    expected = 0.5 * (direction_reference(model, views, boxes, flips, choice.query_view, choice.key_view, 0.3)
                      + direction_reference(model, views, boxes, flips, choice.key_view, choice.query_view, 0.3))
    assert torch.allclose(out.metrics["lc/loss"], expected, atol=1e-5)
    assert "hvs/iou_selected" in out.metrics


def test_with_fast_moco_added_the_local_loss_uses_the_whole_query_view():
    model, lc = lc_moco()
    cfg = load_config(None, ["fast_moco.enabled=true", "fast_moco.mode=add", "data.image_size=56"])
    views = torch.randn(4, 2, 3, 56, 56)
    boxes, flips = random_geometry(4, 2, seed=3)
    out = ContrastiveStep(model, 0.2, False, [FastMoco(cfg, model), lc])(
        views, StepRandom(0, 0, 0, CPU), boxes=boxes, flips=flips)
    zeros = torch.zeros(4, dtype=torch.long)
    expected = direction_reference(model, views, boxes, flips, zeros, zeros + 1, 0.3)
    assert torch.allclose(out.metrics["lc/loss"], expected, atol=1e-5)


def with_crops(crops, seed):
    """Multi-crop's config beside LC-loss, and a batch of 4 samples: 2 views of 56 px, their boxes and flips, and
    `crops` small crops with their boxes."""
    cfg = load_config(None, [*ENABLED, "multicrop.enabled=true", f"multicrop.local_crops={crops}"])
    side = cfg.multicrop.size(cfg.data.image_size)
    views, local_views = torch.randn(4, 2, 3, 56, 56), torch.randn(4, crops, 3, side, side)
    boxes, flips = random_geometry(4, 2, seed=seed)
    return cfg, views, {"boxes": boxes, "flips": flips, "local_views": local_views,
                        "local_boxes": torch.rand(4, crops, 4)}


@pytest.mark.parametrize("symmetric", [False, True])
def test_with_multicrop_the_local_loss_stays_on_the_global_pair_and_the_crops_still_count(symmetric):
    model, lc = lc_moco()
    cfg, views, batch = with_crops(3, seed=4)
    boxes, flips = batch["boxes"], batch["flips"]
    both = ContrastiveStep(model, 0.2, symmetric, [MultiCrop(cfg, model), lc])(views, StepRandom(0, 0, 0, CPU),
                                                                              **batch)
    crops_only = ContrastiveStep(model, 0.2, symmetric, [MultiCrop(cfg, model)])(views, StepRandom(0, 0, 0, CPU),
                                                                                **batch)
    zeros = torch.zeros(4, dtype=torch.long)
    terms = [direction_reference(model, views, boxes, flips, zeros, zeros + 1, 0.3)]
    if symmetric:
        terms.append(direction_reference(model, views, boxes, flips, zeros + 1, zeros, 0.3))
    assert torch.allclose(both.metrics["lc/loss"], sum(terms) / len(terms), atol=1e-5)
    assert torch.allclose(both.loss - crops_only.loss, 0.7 * sum(terms), atol=1e-5)  # the crops' term is in both
    assert "multicrop/proxy_top1" in both.metrics


@pytest.mark.parametrize("crops_on", [False, True])
def test_the_same_tensors_fed_twice_give_the_current_weights_loss_and_a_working_backward(crops_on):
    # Over-fitting one batch: the second step's dense maps (and multi-crop's queries) come from the updated weights.
    model, lc = lc_moco()
    cfg, views, batch = with_crops(2, seed=5)
    boxes, flips = batch["boxes"], batch["flips"]
    crops = [MultiCrop(cfg, model)] if crops_on else []
    step, global_only = ContrastiveStep(model, 0.2, True, [*crops, lc]), ContrastiveStep(model, 0.2, True, crops)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    zeros = torch.zeros(4, dtype=torch.long)
    local = []
    for _ in range(2):
        out = step(views, StepRandom(0, 0, 0, CPU), **batch)
        terms = (direction_reference(model, views, boxes, flips, zeros, zeros + 1, 0.3)
                 + direction_reference(model, views, boxes, flips, zeros + 1, zeros, 0.3))
        with torch.no_grad():
            rest = global_only(views, StepRandom(0, 0, 0, CPU), **batch).loss
        assert torch.allclose(out.loss, rest + 0.7 * terms, atol=1e-5)
        optimizer.zero_grad()
        out.loss.backward()
        assert model.encoder_q.dense_head[0].weight.grad.abs().sum() > 0
        optimizer.step()
        local.append(float(out.metrics["lc/loss"]))
    assert abs(local[1] - local[0]) > 1e-3  # the weights moved: a stale map would be caught


def test_the_local_loss_needs_the_flips():
    model, lc = lc_moco()
    boxes, _ = random_geometry(4, 2)
    with pytest.raises(ValueError, match="needs the crop boxes and the flips"):
        ContrastiveStep(model, 0.2, False, [lc])(torch.randn(4, 2, 3, 56, 56), StepRandom(0, 0, 0, CPU), boxes=boxes)


# ----------------------------------------------------------------------------------------- flips on the data paths


def ramp_image(batch=1, width=40):
    """Grey images brightening from left to right (0.2 to 0.6): jitter and grayscale keep the order of columns."""
    ramp = torch.linspace(0.2 * 255, 0.6 * 255, width).round().to(torch.uint8)
    return ramp.view(1, 1, 1, width).expand(batch, 3, width, width).contiguous()


def right_darker(views):
    """Per view (..., 3, S, S): its right edge is darker than its left, i.e. the ramp was flipped."""
    return views[..., :, :, -2:].mean(dim=(-3, -2, -1)) < views[..., :, :, :2].mean(dim=(-3, -2, -1))


def test_the_device_path_records_which_views_it_flipped():
    aug = ba.BatchViewAugmenter(64, 16, "mocov2_small", [0.0] * 3, [1.0] * 3)
    views, boxes, flips = aug.with_flips(ramp_image(2), torch.Generator().manual_seed(0))
    assert flips.shape == (2, 64) and flips.dtype == torch.bool
    assert torch.equal(flips, right_darker(views))
    assert 0.3 < float(flips.float().mean()) < 0.7
    again, again_boxes = aug(ramp_image(2), torch.Generator().manual_seed(0))  # the same draws without the flags
    assert torch.equal(again, views) and torch.equal(again_boxes, boxes)


def test_the_cpu_path_records_which_views_it_flipped():
    sampler = ViewSampler(64, 16, post_crop_transform("mocov2_small", 16, [0.0] * 3, [1.0] * 3))
    torch.manual_seed(0)
    views, boxes, flips = sampler.with_flips(ramp_image()[0])
    assert flips.shape == (64,) and flips.dtype == torch.bool
    assert torch.equal(flips, right_darker(views))
    assert 0.3 < float(flips.float().mean()) < 0.7
    assert not ViewSampler(4, 16, lambda x: x.float())(ramp_image()[0])[0].isnan().any()
    assert not ViewSampler(4, 16, lambda x: x.float()).with_flips(ramp_image()[0])[2].any()  # no flip step


def test_recording_the_flip_leaves_the_cpu_views_unchanged():
    # The pipeline as it was, with torchvision's RandomHorizontalFlip: the same views from the same seed.
    before = v2.Compose([v2.RandomApply([v2.ColorJitter(*JITTER)], p=JITTER_P), v2.RandomGrayscale(p=GRAYSCALE_P),
                         v2.RandomHorizontalFlip(p=FLIP_P), v2.ToDtype(torch.float32, scale=True),
                         v2.Normalize([0.5] * 3, [0.25] * 3)])
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    torch.manual_seed(3)
    old, old_boxes = ViewSampler(16, 16, before)(image)
    old_next = torch.rand(1)
    torch.manual_seed(3)
    new, new_boxes, _ = ViewSampler(16, 16, post_crop_transform("mocov2_small", 16, [0.5] * 3, [0.25] * 3)).with_flips(
        image)
    assert torch.equal(old, new) and torch.equal(old_boxes, new_boxes)
    assert torch.equal(torch.rand(1), old_next)  # and the global stream is left at the same place


@pytest.mark.parametrize("source", [DeviceAugmentedBatches, LoaderBatches])
def test_both_batch_sources_carry_the_flips(source):
    cfg = load_config(None, ["data.workers=0"])
    images = load_fashion_mnist(None, train=False).subset(torch.arange(32).numpy())
    batch = next(iter(source(images, cfg.data, 3, 16, seed=5, device=CPU)))
    assert batch.flips.shape == (16, 3) and batch.flips.dtype == torch.bool
    assert batch.flips.any() and not batch.flips.all()


# ----------------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.image_size=28"], r"'lc.enabled' needs a last feature map of at least 2 x 2 locations to match; "
                             r"data.image_size=28 with model.small_stem=false gives 1 x 1"),
    (["lc.weight=0"], "'lc.weight' must be > 0; got 0.0"),
    (["lc.temperature=-1"], "'lc.temperature' must be > 0; got -1.0"),
    (["lc.dim=0"], "'lc.dim' must be positive; got 0"),
    (["lc.hidden_dim=0"], "'lc.hidden_dim' must be null or positive; got 0"),
    (["fast_moco.enabled=true"], "'lc.enabled' cannot be combined with fast_moco.mode=replace"),
    (["objective=supervised"], "'lc.enabled' needs objective=contrastive"),
])
def test_config_errors_name_the_keys(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*ENABLED, *overrides])


def test_a_small_stem_at_28_px_is_accepted_and_a_disabled_section_is_not_checked_against_the_map():
    assert load_config(None, ["lc.enabled=true", "model.small_stem=true"]).lc.enabled
    assert not load_config(None, ["lc.weight=2"]).lc.enabled  # 28 px, 1 x 1 map: fine while off
    assert load_config(None, [*ENABLED, "fast_moco.enabled=true", "fast_moco.mode=add"]).lc.enabled
    assert load_config(None, [*ENABLED, "multicrop.enabled=true"]).lc.enabled


def test_the_shipped_recipes_enable_lc_on_maps_it_can_match():
    small = load_config("configs/moco_lc.yaml")
    assert small.lc.enabled and feature_map_side(small.data.image_size, small.model.small_stem) == 2
    base = load_config("configs/moco_v2.yaml")
    assert (small.optim, small.moco, small.model) == (base.optim, base.moco, base.model)
    paper = load_config("configs/imagenet/moco_lc_r50.yaml")
    assert paper.lc.enabled and paper.lc.hidden_dim == 2048 and feature_map_side(paper.data.image_size) == 7
    assert paper.model.arch == "resnet50" and paper.moco.queue_size == 65536


def test_lc_costs_no_extra_forward_and_a_resume_may_retune_only_its_weight_and_temperature():
    assert units_per_image(load_config(None, ENABLED), selecting=False) == 4
    assert policy("lc.weight") == policy("lc.temperature") == APPLY
    assert policy("lc.enabled") == policy("lc.dim") == policy("lc.hidden_dim") == REFUSE


# --------------------------------------------------------------------------------------------------------- training


def test_a_few_steps_with_mochi_hvs_and_the_symmetric_loss_train_the_dense_heads(quick_overrides):
    cfg = load_config(None, quick_overrides + ENABLED + [
        "moco.symmetric=true", "mochi.enabled=true", "mochi.warmup_epochs=0", "mochi.num_hard=16", "mochi.num_mix=8",
        "mochi.num_query_mix=4", "hvs.enabled=true", "hvs.num_views=3", "hvs.score_with_mochi=true"])
    trainer = Trainer(cfg)
    before = weights(trainer)
    batches = iter(trainer.parts.batches)
    metrics = [trainer.train_step(next(batches)) for _ in range(2)]
    assert all(math.isfinite(float(m["loss"])) for m in metrics)
    assert {"lc/loss", "lc/matched", "lc/top1", "mochi/logit_synthetic", "hvs/iou_selected"} <= set(metrics[-1])
    assert 0 < float(metrics[-1]["lc/matched"]) <= 1
    after = trainer.model.state_dict()
    for key in ("encoder_q.dense_head.0.weight", "encoder_k.dense_head.0.weight"):
        assert not torch.equal(before[key], after[key]), key
    trainer.close()


def test_a_few_steps_with_multicrop_and_hvs_train_the_dense_heads_on_the_global_pair(quick_overrides):
    cfg = load_config(None, quick_overrides + ENABLED + [
        "moco.symmetric=true", "multicrop.enabled=true", "multicrop.local_crops=2", "hvs.enabled=true",
        "hvs.num_views=3"])
    trainer = Trainer(cfg)
    before = weights(trainer)
    batches = iter(trainer.parts.batches)
    metrics = [trainer.train_step(next(batches)) for _ in range(2)]
    assert all(math.isfinite(float(m["loss"])) for m in metrics)
    assert {"lc/loss", "lc/matched", "multicrop/proxy_top1", "hvs/iou_selected"} <= set(metrics[-1])
    after = trainer.model.state_dict()
    assert not torch.equal(before["encoder_q.dense_head.0.weight"], after["encoder_q.dense_head.0.weight"])
    trainer.close()


def test_resume_is_exact_with_lc_on(quick_overrides):
    resumed = assert_resume_is_exact(quick_overrides + ENABLED)
    assert "encoder_q.dense_head.0.weight" in weights(resumed)  # the dense heads are in the state compared


@pytest.mark.slow
def test_lc_with_hvs_runs_under_two_processes(tiny_overrides, tmp_path):
    run_ranks(_train, 2, overrides_for(
        tiny_overrides, tmp_path, "lc", *ENABLED, "optim.steps=2", "eval.knn_baseline=false", "eval.knn_pixels=false",
        "moco.symmetric=true", "moco.queue_size=256", "hvs.enabled=true", "hvs.num_views=2"), tmp_path)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert len(r0["losses"]) == 2 and all(math.isfinite(loss) for loss in r0["losses"])
    assert torch.equal(r0["queue"], r1["queue"])
    assert "encoder_q.dense_head.0.weight" in r0["params"]
    for key, value in r0["params"].items():
        if key.startswith("encoder_q."):
            assert torch.equal(value, r1["params"][key]), key  # DDP averaged the dense head's gradients too
