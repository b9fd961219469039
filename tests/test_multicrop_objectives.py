"""Multi-crop with the objectives that read the small crops themselves: for BYOL, TWIST and MSBReg (ReLICv2's in
test_relicv2.py), the loss with small crops and every trained gradient against float64 computations of the
definitions, the target that never sees a small crop, a step fed the same tensors twice, and runs on Fashion-MNIST
that resume bit-exactly; for all four, HVS that keeps scoring the large views only, the config's acceptance and
one-line refusals, and the compute cost."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from test_byol import BYOL, assert_online_gradients_match, bar, online, per_crop, perturbed_target_model, target
from test_checkpoint import assert_resume_is_exact
from test_hvs_objectives import built, candidates, off_diagonal_pairs
from test_msbreg import MSBREG, reference_terms
from test_twist import CLASSES, TWIST, paper_logits, paper_pair_terms

from mochi_hvs.compute_cost import units_per_image
from mochi_hvs.config import ConfigError, load_config, local_crops
from mochi_hvs.models.moco import MoCo
from mochi_hvs.objectives.byol import ByolStep, OnlineNetwork
from mochi_hvs.objectives.msbreg import MsbregConfig, MsbregStep
from mochi_hvs.objectives.twist import TwinNetwork, TwistConfig, TwistStep, uniform_loss
from mochi_hvs.random_streams import StepRandom
from mochi_hvs.train import Trainer

CROPS = ["multicrop.enabled=true", "multicrop.local_crops=2"]
RELIC = ["objective=relicv2", "model.head=mlp_bn"]


def rng() -> StepRandom:
    return StepRandom(0, 0, 0, torch.device("cpu"))


# ------------------------------------------------------------------------------------------------------------ BYOL


def byol_reference(model: MoCo, views: torch.Tensor, crops: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """solo-learn's multi-crop BYOL, written out: the sum over every (online view a, target view b != a) pair of
    mean_i ||bar(q_a,i) - bar(z_b,i)||^2, a over the two large views and the small crops (q: online prediction),
    b over the two large views (z: target projection, no gradient); and the number of pairs."""
    predictions = [online(model, views[:, 0]), online(model, views[:, 1])]
    if crops is not None:
        predictions += per_crop(lambda x: online(model, x), crops)
    targets = [target(model, views[:, 0]), target(model, views[:, 1])]
    terms = [((bar(p) - bar(z)) ** 2).sum(dim=1).mean()
             for a, p in enumerate(predictions) for b, z in enumerate(targets) if a != b]
    return sum(terms), len(terms)


def byol_step(model: MoCo) -> ByolStep:
    return ByolStep(model, OnlineNetwork(model.encoder_q, model.predictor or torch.nn.Identity()))


@pytest.mark.parametrize("predictor, crops", [(True, 3), (False, 2), (True, 1)])
def test_byol_loss_with_small_crops_and_its_gradient_are_the_definition_in_float64(predictor, crops):
    torch.manual_seed(0)
    model = perturbed_target_model(predictor=predictor)
    views, small = torch.randn(8, 2, 3, 16, 16), torch.randn(8, crops, 3, 8, 8)
    reference = copy.deepcopy(model).double()
    out = byol_step(model)(views, rng(), local_views=small)
    out.loss.backward()
    expected, pairs = byol_reference(reference, views.double(), small.double())
    expected.backward()
    assert pairs == 2 + 2 * crops
    assert float(out.loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert_online_gradients_match(model, reference)  # the predictor's too; none reaches the target
    assert len(out.trained) == 2 and all(t.shape == (8, 16) for t in out.trained)  # the large views' predictions
    # without small crops: the symmetrised loss of the two large views, as before multi-crop
    plain, _ = byol_reference(reference, views.double(), None)
    assert float(byol_step(model)(views, rng()).loss.detach()) == pytest.approx(float(plain.detach()), rel=1e-5)


def test_byol_target_never_sees_a_small_crop_and_the_crops_take_one_online_forward():
    torch.manual_seed(0)
    model = perturbed_target_model()
    seen = {"online": [], "target": []}
    model.encoder_q.register_forward_hook(lambda module, args, out: seen["online"].append(tuple(args[0].shape)))
    model.encoder_k.register_forward_hook(lambda module, args, out: seen["target"].append(tuple(args[0].shape)))
    byol_step(model)(torch.randn(8, 2, 3, 16, 16), rng(), local_views=torch.randn(8, 3, 3, 8, 8))
    assert seen["target"] == [(8, 3, 16, 16), (8, 3, 16, 16)]
    assert sorted(seen["online"]) == [(8, 3, 16, 16), (8, 3, 16, 16), (24, 3, 8, 8)]


# ----------------------------------------------------------------------------------------------------------- TWIST


def twist_model() -> tuple[MoCo, TwistStep, TwistConfig]:
    torch.manual_seed(0)
    model = MoCo("resnet18", head="mlp_bn", feature_dim=CLASSES, queue_size=None, shuffle_bn=False,
                 momentum_encoder=False)
    settings = TwistConfig(lam1=0.3, lam2=0.7, tau=0.5)
    return model, TwistStep(TwinNetwork(model.encoder_q, torch.nn.BatchNorm1d(CLASSES, affine=False)), settings), \
        settings


def twist_reference(model: MoCo, views: torch.Tensor, crops: torch.Tensor | None,
                    settings: TwistConfig) -> tuple[list[torch.Tensor], int]:
    """bytedance/TWIST's multi-crop loss (engine.py, "sparse", no momentum encoder), written out: the logits of the
    two large views (one backbone batch) and of the small crops (another, crop-major), the head and the logits'
    BatchNorm over all of them (paper_logits); then the two-view loss of every pair (large view i, any later view j),
    each of its terms averaged over the pairs; and the number of pairs."""
    large = torch.cat([views[:, 0], views[:, 1]])
    batches = [large] if crops is None else [large, crops.transpose(0, 1).reshape(-1, *crops.shape[2:])]
    z = paper_logits(model, *batches).split(len(views))
    pairs = [paper_pair_terms(z[i], z[j], settings.lam1, settings.lam2, settings.tau, settings.eps)
             for i in range(2) for j in range(i + 1, len(z))]
    return [torch.stack(terms).mean() for terms in zip(*pairs, strict=True)], len(pairs)


@pytest.mark.parametrize("crops", [1, 3])
def test_twist_loss_with_small_crops_its_terms_and_its_gradient_are_the_official_codes_in_float64(crops):
    model, step, settings = twist_model()
    views, small = torch.randn(8, 2, 3, 16, 16), torch.randn(8, crops, 3, 8, 8)
    reference = copy.deepcopy(model).double()
    out = step(views, rng(), local_views=small)
    out.loss.backward()
    expected, pairs = twist_reference(reference, views.double(), small.double(), settings)
    expected[0].backward()
    assert pairs == 1 + 2 * crops
    got = [out.metrics[k] for k in ("loss", "twist_kl", "twist_sample_entropy", "twist_batch_entropy")]
    for value, reference_value in zip(got, expected, strict=True):
        assert float(value) == pytest.approx(float(reference_value.detach()), rel=1e-5, abs=1e-6)
    assert float(expected[1].detach()) > 1e-3  # the consistency term is far from its trivial value
    assert_online_gradients_match(model, reference)  # every parameter: one network, no target
    assert len(out.trained) == 2 and all(t.shape == (8, CLASSES) for t in out.trained)  # the large views' logits
    assert out.signal.uniform_loss == pytest.approx(uniform_loss(CLASSES, settings))  # unchanged by the crops


def test_twist_normalises_the_logits_of_every_view_together_and_encodes_each_resolution_once():
    model, step, _ = twist_model()
    shapes = []
    model.encoder_q.backbone.register_forward_hook(lambda module, args, out: shapes.append(tuple(args[0].shape)))
    step(torch.randn(8, 2, 3, 16, 16), rng(), local_views=torch.randn(8, 3, 3, 8, 8))
    assert shapes == [(16, 3, 16, 16), (24, 3, 8, 8)]  # the large views in one batch, the small crops in another
    logit_bn = step.network.logit_bn
    assert int(logit_bn.num_batches_tracked) == 1  # one BatchNorm over the (2 + 3) x 8 rows


# ------------------------------------------------------------------------------------------------------ both steps


# ---------------------------------------------------------------------------------------------------------- MSBReg


def msbreg_step(model: MoCo, weights: tuple[float, float, float] = (1.0, 1.0, 0.1)) -> MsbregStep:
    settings = MsbregConfig(centroid=weights[0], singular=weights[1], brownian=weights[2])
    return MsbregStep(model, OnlineNetwork(model.encoder_q, model.predictor), settings)


@pytest.mark.parametrize("crops, weights", [(1, (1.0, 1.0, 0.1)), (3, (0.5, 2.0, 1.5))])
def test_msbreg_terms_with_small_crops_and_the_gradient_are_the_definitions_in_float64(crops, weights):
    # The crops are online views of the multi-view centroid and of both dispersive terms; the target's centroid is
    # of the two large views.
    torch.manual_seed(0)
    model = perturbed_target_model()
    views, small = torch.randn(8, 2, 3, 16, 16), torch.randn(8, crops, 3, 8, 8)
    reference = copy.deepcopy(model).double()
    out = msbreg_step(model, weights)(views, rng(), local_views=small)
    out.loss.backward()
    expected = reference_terms(reference, views.double(), weights, small.double())
    expected[0].backward()
    got = [out.metrics[k] for k in ("loss", "msbreg_centroid", "msbreg_singular", "msbreg_brownian")]
    for value, reference_value in zip(got, expected, strict=True):
        assert float(value) == pytest.approx(float(reference_value.detach()), rel=1e-5, abs=1e-6)
    without = reference_terms(copy.deepcopy(model).double(), views.double(), weights)
    assert abs(float(without[1].detach()) - float(expected[1].detach())) > 1e-3  # the crops move the centroid
    assert_online_gradients_match(model, reference)
    assert len(out.trained) == 2  # the regulariser's embeddings stay the large views'


@pytest.mark.parametrize("objective", ["byol", "twist", "msbreg"])
def test_the_same_tensors_fed_twice_give_the_current_weights_loss_and_a_working_backward(objective):
    # Over-fitting one batch: the second step encodes the small crops again with the updated weights (nothing kept
    # from the first step, the old multi-crop cache's defect) and back-propagates through its own graph.
    if objective == "byol":
        torch.manual_seed(0)
        model = perturbed_target_model()
        step = byol_step(model)

        def expected(m, v, c):
            return byol_reference(m, v, c)[0]
    elif objective == "msbreg":
        torch.manual_seed(0)
        model = perturbed_target_model()
        step = msbreg_step(model)

        def expected(m, v, c):
            return reference_terms(m, v, (1.0, 1.0, 0.1), c)[0]
    else:
        model, step, settings = twist_model()

        def expected(m, v, c):
            return twist_reference(m, v, c, settings)[0][0]
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trained, lr=0.5)
    views, small = torch.randn(8, 2, 3, 16, 16), torch.randn(8, 2, 3, 8, 8)
    losses = []
    for _ in range(2):
        reference = copy.deepcopy(model).double()  # the current weights
        out = step(views, rng(), local_views=small)
        current = expected(reference, views.double(), small.double()).detach()
        assert float(out.loss.detach()) == pytest.approx(float(current), rel=1e-5)
        optimizer.zero_grad()
        out.loss.backward()
        assert all(p.grad is not None for p in trained) and model.encoder_q.head[0].weight.grad.abs().sum() > 0
        optimizer.step()
        losses.append(float(out.loss.detach()))
    assert abs(losses[1] - losses[0]) > 1e-3  # the weights moved: a stale loss would be caught


@pytest.mark.parametrize("name", ["byol", "twist", "relicv2", "msbreg"])
def test_hvs_scores_the_large_views_only_and_the_small_crops_ride_along_with_the_chosen_pair(name):
    model, step = built(name, *CROPS)
    views, boxes, flips = candidates()
    small = torch.randn(8, 2, 3, 8, 8)
    losses = step.step.pair_losses(views, rng())  # the pair losses take no small crops
    out = step(views, rng(), boxes=boxes, flips=flips, epoch=0, step=3, local_views=small)
    hardest = [max(off_diagonal_pairs(3), key=lambda pair, i=i: float(losses[i, pair[0], pair[1]])) for i in range(8)]
    selected = torch.stack([losses[i, a, b] for i, (a, b) in enumerate(hardest)])
    assert float(out.metrics["hvs/loss_selected"]) == pytest.approx(float(selected.mean()), rel=1e-6)
    repacked = [torch.stack([values[i, list(pair)] for i, pair in enumerate(hardest)])
                for values in (views, boxes, flips)]
    expected = step.step(repacked[0], rng(), boxes=repacked[1], flips=repacked[2], epoch=0, step=3, local_views=small)
    assert torch.equal(out.loss, expected.loss)
    without = step.step(repacked[0], rng(), boxes=repacked[1], flips=repacked[2], epoch=0, step=3)
    assert not torch.equal(out.loss, without.loss)  # the crops' pairs are in the trained loss


# ---------------------------------------------------------------------------------------------- config and cost


@pytest.mark.parametrize("objective", [BYOL, TWIST, RELIC, MSBREG])
def test_multicrop_is_taken_and_its_crops_cost_online_forwards_only(objective):
    cfg = load_config(None, [*objective, "multicrop.enabled=true"])
    crops = local_crops(cfg)
    small = 3 * crops.count * (crops.size / cfg.data.image_size) ** 2  # trained forwards at their pixels' cost
    target = 0 if objective == TWIST else 2  # the target's forwards: the two large views, never a small crop
    assert units_per_image(cfg, selecting=False) == pytest.approx(2 * 3 + target + small)
    hvs = load_config(None, [*objective, "multicrop.enabled=true", "hvs.enabled=true", "hvs.num_views=3"])
    candidates_cost = 3 * (1 if objective == TWIST else 2)  # 3 candidates through each network the scoring reads
    assert units_per_image(hvs, selecting=True) == pytest.approx(2 * 3 + target + candidates_cost + small)


def test_multicrop_is_refused_in_one_line_naming_the_objectives_that_take_it():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["objective=supervised", "multicrop.enabled=true"])
    assert str(err.value) == ("--set: 'multicrop.enabled' needs objective=contrastive|byol|msbreg|relicv2|twist "
                              "(objective=supervised takes no methods)")


@pytest.mark.parametrize("objective", [BYOL, TWIST, RELIC, MSBREG])
def test_multicrop_weight_other_than_one_is_refused_where_the_objective_weighs_the_crops_itself(objective):
    name = objective[0].split("=")[1]
    with pytest.raises(ConfigError) as err:
        load_config(None, [*objective, "multicrop.enabled=true", "multicrop.weight=2"])
    assert str(err.value) == ("--set: 'multicrop.weight' is MoCo-v2's weight on the small crops' loss: "
                              f"objective={name} weighs them by its own loss and reads none, so it must stay 1; "
                              "got 2.0")
    assert load_config(None, [*objective, "multicrop.weight=2"]).multicrop.weight == 2  # disabled: not read


# ---------------------------------------------------------------------------------------- Fashion-MNIST, resume


@pytest.mark.parametrize("objective", [BYOL, TWIST, MSBREG])
def test_on_fashion_mnist_the_crops_reach_the_online_network_only(quick_overrides, objective):
    cfg = load_config(None, quick_overrides + objective + CROPS + ["optim.steps=1"])
    trainer = Trainer(cfg)
    model = trainer.model
    sides = {"online": [], "target": []}
    model.encoder_q.backbone.register_forward_hook(lambda module, args, out: sides["online"].append(args[0].shape[-1]))
    if model.encoder_k is not None:
        model.encoder_k.backbone.register_forward_hook(
            lambda module, args, out: sides["target"].append(args[0].shape[-1]))
    metrics = trainer.train_step(next(iter(trainer.parts.batches)))
    assert math.isfinite(float(metrics["loss"]))
    assert sorted(set(sides["online"])) == [12, 28]  # 2 small crops of 12 px beside the 28 px views
    assert set(sides["target"]) <= {28}  # BYOL's target: the large views only
    trainer.close()


@pytest.mark.parametrize("objective", [BYOL, TWIST, MSBREG])
def test_resume_with_multicrop_is_exact(quick_overrides, objective):
    resumed = assert_resume_is_exact(quick_overrides + objective + CROPS)
    assert resumed.cfg.multicrop.enabled
