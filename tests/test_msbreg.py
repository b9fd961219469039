"""MSBReg: its three terms, loss and gradient against our reading of the paper's definitions in float64 (the singular
value term through torch.linalg.svdvals), the singular value term's bounds, the Brownian directions' streams, the
regulariser added to MoCo-v2, BYOL and TWIST, exact resumes, its composition errors and its cost."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from test_byol import (
    assert_online_gradients_match,
    assert_the_target_moves_only_by_the_ema,
    bar,
    online,
    per_crop,
    perturbed_target_model,
    target,
)
from test_checkpoint import assert_resume_is_exact

from mochi_hvs.compute_cost import units_per_image
from mochi_hvs.config import ConfigError, load_config
from mochi_hvs.models.moco import MoCo
from mochi_hvs.objectives.byol import OnlineNetwork
from mochi_hvs.objectives.msbreg import (
    MsbregConfig,
    MsbregStep,
    RegularisedStep,
    brownian_directions,
    singular_value_loss,
)
from mochi_hvs.random_streams import StepRandom
from mochi_hvs.step import ContrastiveStep
from mochi_hvs.train import Trainer

MSBREG = ["objective=msbreg", "model.head=mlp_bn"]
CPU = torch.device("cpu")


def reference_singular(o: list[torch.Tensor]) -> torch.Tensor:
    """r sum_k p_k^2 - 1, p_k = s_k^2 / sum_j s_j^2 over the singular values s of the views' rows stacked and
    centred, r = min(N - 1, D)."""
    z = torch.cat(o)
    s = torch.linalg.svdvals(z - z.mean(dim=0))
    p = s**2 / (s**2).sum()
    return min(len(z) - 1, z.shape[1]) * (p**2).sum() - 1


def reference_brownian(o: list[torch.Tensor], seed: int, step: int) -> torch.Tensor:
    """mean_{i,v} (1 + o_v,i . u_i), u_i = g_i / ||g_i|| with g standard normal from the step's "msbreg" stream."""
    u = bar(torch.randn(o[0].shape, generator=StepRandom(seed, step, 0, CPU)("msbreg")).double())
    return torch.stack([1 + (o_v * u).sum(dim=1) for o_v in o]).mean()


def reference_terms(model: MoCo, views: torch.Tensor, weights: tuple[float, float, float],
                    crops: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The loss and its three terms (centroid, singular, brownian) of the module docstring, written out; the small
    crops (B, L, C, h, w), when given, are online views beside the two large ones (the target sees those two only)."""
    o = [bar(online(model, views[:, v])) for v in (0, 1)]
    if crops is not None:
        o += [bar(p) for p in per_crop(lambda x: online(model, x), crops)]
    t = [bar(target(model, views[:, v])) for v in (0, 1)]
    c_o, c_t = bar(sum(o) / len(o)), bar((t[0] + t[1]) / 2)
    terms = [(2 - 2 * (c_o * c_t).sum(dim=1)).mean(), reference_singular(o), reference_brownian(o, 0, 0)]
    return [sum(w * term for w, term in zip(weights, terms, strict=True)), *terms]


@pytest.mark.parametrize("weights", [(1.0, 1.0, 0.1), (0.5, 2.0, 1.5)])
def test_the_three_terms_the_loss_and_its_gradient_are_the_definitions_in_float64(weights):
    torch.manual_seed(0)
    model = perturbed_target_model()
    views = torch.randn(8, 2, 3, 16, 16)
    reference = copy.deepcopy(model).double()
    settings = MsbregConfig(centroid=weights[0], singular=weights[1], brownian=weights[2])
    step = MsbregStep(model, OnlineNetwork(model.encoder_q, model.predictor), settings)
    out = step(views, StepRandom(0, 0, 0, CPU))
    out.loss.backward()
    expected = reference_terms(reference, views.double(), weights)
    expected[0].backward()
    got = [out.metrics[k] for k in ("loss", "msbreg_centroid", "msbreg_singular", "msbreg_brownian")]
    for value, reference_value in zip(got, expected, strict=True):
        assert float(value) == pytest.approx(float(reference_value.detach()), rel=1e-5, abs=1e-6)
    centroid, singular = float(expected[1].detach()), float(expected[2].detach())
    assert centroid > 1e-3 and 0.1 < singular < 14  # terms away from their bounds (r = min(15, 16) = 15)
    assert_online_gradients_match(model, reference)
    assert out.keys is None and len(out.trained) == 2 and "proxy_top1" in out.metrics


def test_the_target_gets_no_gradient_and_moves_only_by_the_ema(quick_overrides):
    assert_the_target_moves_only_by_the_ema(quick_overrides + MSBREG, "msbreg")


def hadamard(n: int) -> torch.Tensor:
    """Sylvester's n x n Hadamard matrix (n a power of 2): orthogonal rows of +-1."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while len(h) < n:
        h = torch.cat([torch.cat([h, h], dim=1), torch.cat([h, -h], dim=1)])
    return h


@pytest.mark.parametrize("z", [
    torch.cat([hadamard(8), -hadamard(8)]),  # N = 16 > D = 8: covariance 16 I, spread over r = D directions
    3 * torch.eye(8, 12, dtype=torch.float64),  # N = 8 < D: a regular simplex, spread over r = N - 1 directions
], ids=["hadamard", "simplex"])
def test_the_singular_value_term_is_0_for_an_isotropic_batch(z):
    assert float(singular_value_loss(z)) == pytest.approx(0, abs=1e-12)
    assert float(reference_singular([z])) == pytest.approx(0, abs=1e-12)


def test_the_singular_value_term_is_r_minus_1_for_a_rank_one_batch():
    torch.manual_seed(0)
    offset, scales, direction = (torch.randn(shape, dtype=torch.float64) for shape in ((1, 12), (16, 1), (1, 12)))
    z = offset + scales * direction  # 16 points on one line
    assert float(singular_value_loss(z)) == pytest.approx(12 - 1, rel=1e-9)  # r = min(15, 12)
    random = torch.randn(16, 12, dtype=torch.float64)
    assert float(singular_value_loss(random)) == pytest.approx(float(reference_singular([random])), rel=1e-9)


def test_the_brownian_directions_are_the_steps_own_draws():
    def u(seed: int, step: int) -> torch.Tensor:
        return brownian_directions(StepRandom(seed, step, 0, CPU), 4, 8)

    assert torch.equal(u(0, 3), u(0, 3))  # redrawn exactly on resume
    assert not torch.allclose(u(0, 3), u(0, 4)) and not torch.allclose(u(0, 3), u(1, 3))
    torch.testing.assert_close(u(0, 3).norm(dim=1), torch.ones(4))


@pytest.mark.parametrize("singular, brownian", [(1.0, 0.1), (0.3, 2.0)])
def test_the_regulariser_adds_exactly_its_weighted_terms_to_moco_v2(singular, brownian):
    torch.manual_seed(0)
    model = MoCo("resnet18", feature_dim=16, queue_size=32, shuffle_bn=False)
    views = torch.randn(8, 2, 3, 16, 16)
    plain = ContrastiveStep(model, 0.2, symmetric=True)(views, StepRandom(0, 5, 0, CPU))
    settings = MsbregConfig(singular=singular, brownian=brownian, regularise=True)
    out = RegularisedStep(ContrastiveStep(model, 0.2, symmetric=True), settings)(views, StepRandom(0, 5, 0, CPU))
    with torch.no_grad():
        queries = [model.encoder_q(views[:, v]).embedding.double() for v in (0, 1)]  # both directions' queries
    expected_singular, expected_brownian = reference_singular(queries), reference_brownian(queries, 0, 5)
    expected = float(plain.loss.detach()) + singular * float(expected_singular) + brownian * float(expected_brownian)
    assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert float(out.metrics["loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(out.metrics["msbreg_singular"]) == pytest.approx(float(expected_singular), rel=1e-5, abs=1e-6)
    assert float(out.metrics["msbreg_brownian"]) == pytest.approx(float(expected_brownian), rel=1e-5)
    assert torch.equal(out.keys, plain.keys) and out.metrics["proxy_top1"] == plain.metrics["proxy_top1"]


@pytest.mark.parametrize("objective", [
    ["objective=contrastive"], ["objective=byol", "model.head=mlp_bn"],
    ["objective=twist", "model.head=mlp_bn", "model.feature_dim=16"], ["objective=relicv2", "model.head=mlp_bn"],
], ids=["contrastive", "byol", "twist", "relicv2"])
def test_the_builder_wraps_any_objective_that_hands_over_its_embeddings(objective, quick_overrides):
    trainer = Trainer(load_config(None, quick_overrides + objective + ["msbreg.regularise=true", "optim.steps=1"]))
    assert isinstance(trainer.parts.step, RegularisedStep)
    metrics = trainer.train_step(next(iter(trainer.parts.batches)))
    assert math.isfinite(float(metrics["loss"])) and {"msbreg_singular", "msbreg_brownian"} <= set(metrics)
    trainer.close()


def test_resume_is_exact(quick_overrides):
    assert_resume_is_exact(quick_overrides + MSBREG)


def test_resume_of_moco_v2_with_the_regulariser_is_exact(quick_overrides):
    assert_resume_is_exact(quick_overrides + ["msbreg.regularise=true", "msbreg.brownian=1.0"])


@pytest.mark.parametrize("settings, message", [
    (["objective=msbreg", "msbreg.regularise=true"],
     "--set: 'msbreg.regularise' adds MSBReg's terms to another objective's loss; objective=msbreg has them already"),
    (["objective=supervised", "msbreg.regularise=true"],
     "--set: 'msbreg.regularise' needs an objective whose step hands over its trained embeddings "
     "(objective=byol|burn|contrastive|dspnet|relicv2|twist); objective=supervised has none"),
    (["objective=msbreg", "msbreg.singular=-1"], "--set: 'msbreg.singular' must be >= 0; got -1.0"),
    (["objective=msbreg", "mochi.enabled=true"],
     "--set: 'mochi.enabled' needs an objective with a memory queue (objective=contrastive); objective=msbreg has "
     "none"),
    (["objective=msbreg", "msbreg.momentum=1.5"], "--set: 'msbreg.momentum' must be in [0, 1]; got 1.5"),
])
def test_bad_settings_are_refused_in_one_line(settings, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, settings)
    assert str(err.value) == message


def test_msbreg_costs_as_byol_and_the_regulariser_costs_nothing():
    assert units_per_image(load_config(None, MSBREG), selecting=False) == 2 * 3 + 2 * 1
    plain, regularised = (units_per_image(load_config(None, s), selecting=False)
                          for s in ([], ["msbreg.regularise=true"]))
    assert plain == regularised
