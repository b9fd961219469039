"""Fast-MoCo: patch splitting and combinations, the loss against a direct computation, training, resume, config
errors and composition with MoCHi, HVS and two processes."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from test_checkpoint import assert_resume_is_exact, weights
from test_distributed import _train, identical_replicas, overrides_for, run_ranks

from mochi_hvs.compute_cost import units_per_image
from mochi_hvs.config import ConfigError, load_config
from mochi_hvs.methods.fast_moco import FastMoco, combine_features, patch_subsets, split_patches
from mochi_hvs.models import MoCo
from mochi_hvs.random_streams import StepRandom
from mochi_hvs.step import ContrastiveStep
from mochi_hvs.train import Trainer

ENABLED = ["fast_moco.enabled=true"]


@pytest.mark.parametrize("grid", [1, 2, 3])
def test_the_patches_tile_the_image_in_row_major_order(grid):
    x = torch.randn(2, 3, 6 * grid, 4 * grid)
    patches = split_patches(x, grid)
    assert patches.shape == (grid * grid, 2, 3, 6, 4)
    rows = [torch.cat([patches[r * grid + c] for c in range(grid)], dim=3) for r in range(grid)]
    assert torch.equal(torch.cat(rows, dim=2), x)
    assert torch.equal(patches[grid - 1], x[:, :, :6, -4:])  # the first row's last patch: top right


def test_an_image_that_does_not_divide_into_equal_patches_is_refused():
    with pytest.raises(ValueError, match="does not split into 3 x 3"):
        split_patches(torch.randn(1, 3, 28, 28), 3)


@pytest.mark.parametrize(("patches", "size"), [(4, 2), (4, 1), (4, 4), (9, 3), (16, 15)])
def test_the_subsets_are_every_combination_once(patches, size):
    subsets = patch_subsets(patches, size)
    expected = list(itertools.combinations(range(patches), size))
    assert subsets.shape == (math.comb(patches, size), size)
    assert [tuple(row) for row in subsets.tolist()] == expected
    assert len({frozenset(row) for row in subsets.tolist()}) == len(expected)  # distinct subsets


def test_a_combined_feature_is_the_mean_of_its_members():
    features = torch.randn(4, 3, 5, dtype=torch.float64)
    combos = list(itertools.combinations(range(4), 2))
    combined = combine_features(features, patch_subsets(4, 2))
    assert combined.shape == (6, 3, 5)
    for row, members in enumerate(combos):
        assert torch.allclose(combined[row], sum(features[i] for i in members) / 2)


def small_moco():
    torch.manual_seed(0)
    model = MoCo("resnet18", bn_splits=1, feature_dim=16, queue_size=64, shuffle_bn=False)
    model.eval()  # BatchNorm on running statistics: a patch's features do not depend on the batch around it
    return model


def reference_loss(model, views, temperature, grid, size, mode, weight):
    """Fast-MoCo's loss computed directly: each patch through the backbone alone, every combination's mean feature
    through the head, its logits against the key and the queue by hand, cross-entropy with the positive first."""
    with torch.no_grad():
        x_q, x_k = views[:, 0], views[:, 1]
        k = F.normalize(model.encoder_k(x_k).embedding, dim=1)
        side = x_q.shape[-1] // grid
        features = [model.encoder_q.backbone(x_q[:, :, r * side:(r + 1) * side, c * side:(c + 1) * side])
                    for r in range(grid) for c in range(grid)]
        queue = model.queue.features

        def info_nce(q):
            logits = torch.cat([(q * k).sum(dim=1, keepdim=True), q @ queue.t()], dim=1) / temperature
            return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()

        combos = list(itertools.combinations(range(grid * grid), size))
        term = sum(info_nce(F.normalize(model.encoder_q.head(sum(features[i] for i in c) / size), dim=1))
                   for c in combos) / len(combos)
        whole = info_nce(model.encoder_q(x_q).embedding) if mode == "add" else 0.0
        return whole + weight * term


@pytest.mark.parametrize(("grid", "size", "mode", "weight"), [(2, 2, "replace", 1.0), (2, 3, "add", 0.5),
                                                               (2, 1, "replace", 2.0)])
def test_the_loss_matches_a_direct_computation(grid, size, mode, weight):
    model = small_moco()
    cfg = load_config(None, [*ENABLED, f"fast_moco.grid={grid}", f"fast_moco.subset={size}",
                             f"fast_moco.mode={mode}", f"fast_moco.weight={weight}"])
    views = torch.randn(4, 2, 3, 28, 28)
    step = ContrastiveStep(model, 0.2, False, [FastMoco(cfg, model)])
    out = step(views, StepRandom(0, 0, 0, torch.device("cpu")))
    assert torch.allclose(out.loss, reference_loss(model, views, 0.2, grid, size, mode, weight), atol=1e-5)
    assert "proxy_top1" in out.metrics
    assert ("fast_moco/proxy_top1" in out.metrics) == (mode == "add")  # replace: the combinations are the queries


def test_one_patch_of_the_whole_view_replacing_the_query_is_plain_moco_v2():
    model = small_moco()
    cfg = load_config(None, [*ENABLED, "fast_moco.grid=1", "fast_moco.subset=1"])
    views = torch.randn(4, 2, 3, 28, 28)
    fast = ContrastiveStep(model, 0.2, False, [FastMoco(cfg, model)])(views, StepRandom(0, 0, 0, torch.device("cpu")))
    plain = ContrastiveStep(model, 0.2, False)(views, StepRandom(0, 0, 0, torch.device("cpu")))
    assert torch.equal(fast.loss, plain.loss)


def test_a_few_training_steps_train_the_query_encoder(quick_overrides):
    trainer = Trainer(load_config(None, quick_overrides + ENABLED))
    before = weights(trainer)
    batches = iter(trainer.parts.batches)
    losses = [float(trainer.train_step(next(batches))["loss"]) for _ in range(2)]
    assert all(math.isfinite(loss) for loss in losses)
    after = trainer.model.state_dict()
    assert not torch.equal(before["encoder_q.backbone.conv1.weight"], after["encoder_q.backbone.conv1.weight"])
    assert not torch.equal(before["encoder_q.head.0.weight"], after["encoder_q.head.0.weight"])
    trainer.close()


def test_resume_is_exact_with_fast_moco_on(quick_overrides):
    assert_resume_is_exact(quick_overrides + ENABLED)


def test_the_patches_cost_one_query_view():
    plain = units_per_image(load_config(None, []), selecting=False)
    assert units_per_image(load_config(None, ENABLED), selecting=False) == plain == 4
    assert units_per_image(load_config(None, [*ENABLED, "fast_moco.mode=add"]), selecting=False) == 4 + 3


@pytest.mark.parametrize(("overrides", "message"), [
    (["fast_moco.grid=3"], "'fast_moco.grid' must divide data.image_size=28 into equal patches; got 3"),
    (["fast_moco.grid=0"], "'fast_moco.grid' must be >= 1; got 0"),
    (["fast_moco.subset=5"], r"'fast_moco.subset' must be in \[1, fast_moco.grid\^2 = 4\]; got 5"),
    (["fast_moco.grid=4", "fast_moco.subset=8"], r"'fast_moco.subset' with fast_moco.grid=4 gives C\(16, 8\) = 12870 "
                                                 "combinations"),
    (["fast_moco.weight=0"], "'fast_moco.weight' must be > 0; got 0.0"),
    (["fast_moco.mode=both"], "'fast_moco.mode' must be one of replace, add; got 'both'"),
    (["objective=supervised"], "'fast_moco.enabled' needs objective=contrastive"),
])
def test_config_errors_name_the_keys(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*ENABLED, *overrides])


def test_a_disabled_section_is_not_validated_against_the_image_size():
    assert load_config(None, ["fast_moco.grid=3"]).fast_moco.grid == 3


@pytest.mark.parametrize("mode", ["replace", "add"])
def test_composes_with_mochi_and_hvs(quick_overrides, mode):
    cfg = load_config(None, quick_overrides + ENABLED + [
        f"fast_moco.mode={mode}", "moco.symmetric=true", "mochi.enabled=true", "mochi.warmup_epochs=0",
        "mochi.num_hard=16", "mochi.num_mix=8", "mochi.num_query_mix=4", "hvs.enabled=true", "hvs.num_views=3",
        "hvs.score_with_mochi=true"])
    trainer = Trainer(cfg)
    batches = iter(trainer.parts.batches)
    metrics = [trainer.train_step(next(batches)) for _ in range(2)]
    assert all(math.isfinite(float(m["loss"])) for m in metrics)
    # MoCHi's synthetic negatives for every combined query: its metrics for the combinations, prefixed when they
    # are added to the whole view's query.
    prefix = "fast_moco/" if mode == "add" else ""
    assert {f"{prefix}mochi/logit_synthetic", "hvs/iou_selected", "proxy_top1"} <= set(metrics[-1])
    trainer.close()


@pytest.mark.slow
def test_fast_moco_with_mochi_runs_under_two_processes(tiny_overrides, tmp_path):
    run_ranks(_train, 2, overrides_for(
        tiny_overrides, tmp_path, "fast_moco", *ENABLED, "optim.steps=2", "eval.knn_baseline=false",
        "eval.knn_pixels=false", "mochi.enabled=true", "mochi.warmup_epochs=0", "mochi.num_hard=32",
        "mochi.num_mix=16", "mochi.num_query_mix=8"), tmp_path)
    r0 = identical_replicas(tmp_path)  # DDP averaged the combinations' gradients
    assert len(r0["losses"]) == 2 and all(math.isfinite(loss) for loss in r0["losses"])
