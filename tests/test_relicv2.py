"""ReLICv2: its contrastive and invariance terms, loss and gradient against the definitions in float64 (with and
without multi-crop's small crops), the EMA target, composition and an exact resume (multi-crop's acceptance, cost and
HVS with small crops: test_multicrop_objectives.py)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from test_byol import (
    assert_online_gradients_match,
    assert_the_target_moves_only_by_the_ema,
    bar,
    perturbed_target_model,
)
from test_checkpoint import assert_resume_is_exact

from mochi_hvs.config import ConfigError, load_config
from mochi_hvs.models.moco import MoCo
from mochi_hvs.objectives.relicv2 import Relicv2Config, Relicv2Step
from mochi_hvs.random_streams import StepRandom

RELIC = ["objective=relicv2", "model.head=mlp_bn"]


def reference_pair(o: torch.Tensor, t: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Contrastive and invariance terms of one (online view, target view) pair, written out: S = o t^T / tau;
    contrastive = mean_i (log sum_j exp S_ij - S_ii); row_i(j) = exp S_ij / sum_k exp S_ik, col_i(j) = exp S_ji /
    sum_k exp S_ki (no gradient); invariance = mean_i sum_j col_i(j) (log col_i(j) - log row_i(j))."""
    s = o @ t.T / tau
    contrastive = (torch.log(torch.exp(s).sum(dim=1)) - torch.diagonal(s)).mean()
    row = torch.exp(s) / torch.exp(s).sum(dim=1, keepdim=True)
    sd = s.detach()
    col = torch.exp(sd.T) / torch.exp(sd.T).sum(dim=1, keepdim=True)
    invariance = (col * (torch.log(col) - torch.log(row))).sum(dim=1).mean()
    return contrastive, invariance


def reference_loss(model: MoCo, views: torch.Tensor, crops: torch.Tensor | None, tau: float, alpha: float):
    """The mean over every (online view u, target view v != u) pair of contrastive + alpha invariance; the online
    side encodes each large view as one batch and all small crops as one crop-major batch (as the step does, so that
    BatchNorm sees the same batches)."""
    def online(x):
        return bar(model.encoder_q.head(model.encoder_q.backbone(x)))

    def target(x):
        with torch.no_grad():
            return bar(model.encoder_k.head(model.encoder_k.backbone(x)))

    large = [views[:, 0], views[:, 1]]
    onlines = [online(v) for v in large]
    if crops is not None:
        count = crops.shape[1]
        onlines += list(online(crops.transpose(0, 1).flatten(0, 1)).unflatten(0, (count, -1)))
    targets = [target(v) for v in large]
    terms = [reference_pair(o, t, tau) for u, o in enumerate(onlines) for v, t in enumerate(targets) if u != v]
    contrastive = torch.stack([c for c, _ in terms]).mean()
    invariance = torch.stack([i for _, i in terms]).mean()
    return contrastive + alpha * invariance, contrastive, invariance, len(terms)


@pytest.mark.parametrize("tau, alpha, crops", [(0.2, 1.0, 0), (0.5, 3.0, 0), (0.2, 1.0, 3)])
def test_the_terms_the_loss_and_its_gradient_are_the_definitions_in_float64(tau, alpha, crops):
    torch.manual_seed(0)
    model = perturbed_target_model(predictor=False)
    views = torch.randn(8, 2, 3, 16, 16)
    small = torch.randn(8, crops, 3, 8, 8) if crops else None
    reference = copy.deepcopy(model).double()
    step = Relicv2Step(model, model.encoder_q, Relicv2Config(temperature=tau, alpha=alpha))
    out = step(views, StepRandom(0, 0, 0, torch.device("cpu")), local_views=small)
    out.loss.backward()
    expected, contrastive, invariance, pairs = reference_loss(
        reference, views.double(), None if small is None else small.double(), tau, alpha)
    expected.backward()
    assert pairs == 2 + 2 * crops
    assert float(out.loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert float(out.metrics["relicv2_contrastive"]) == pytest.approx(float(contrastive.detach()), rel=1e-5)
    assert float(out.metrics["relicv2_invariance"]) == pytest.approx(float(invariance.detach()), rel=1e-4)
    assert float(invariance.detach()) > 1e-3  # the invariance term is far from its trivial value
    assert_online_gradients_match(model, reference)
    assert out.keys is None
    assert out.signal.uniform_loss == pytest.approx(math.log(8))


def test_the_invariance_term_is_zero_when_both_views_see_the_same_distribution():
    """With o = t for a symmetric similarity matrix, each image's row and column distributions coincide."""
    from mochi_hvs.objectives.relicv2 import pair_terms

    x = torch.nn.functional.normalize(torch.randn(6, 5, dtype=torch.float64), dim=1)
    terms = pair_terms(x, x, 0.3)
    assert float(terms.invariance) == pytest.approx(0.0, abs=1e-7)
    assert float(terms.contrastive) > 0


def test_the_target_gets_no_gradient_and_moves_only_by_the_ema(quick_overrides):
    assert_the_target_moves_only_by_the_ema(quick_overrides + RELIC, "relicv2")


@pytest.mark.parametrize("extra", [[], ["multicrop.enabled=true", "multicrop.local_crops=2"]])
def test_resume_is_exact(quick_overrides, extra):
    resumed = assert_resume_is_exact(quick_overrides + RELIC + extra)
    assert resumed.model.queue is None and resumed.model.predictor is None


@pytest.mark.parametrize("setting, message", [
    ("mochi.enabled=true", "--set: 'mochi.enabled' needs an objective with a memory queue (objective=contrastive); "
                           "objective=relicv2 has none"),
    ("fast_moco.enabled=true",
     "--set: 'fast_moco.enabled' needs objective=contrastive (objective=relicv2 takes no methods)"),
    ("relicv2.temperature=0", "--set: 'relicv2.temperature' must be > 0; got 0.0"),
    ("relicv2.momentum=2", "--set: 'relicv2.momentum' must be in [0, 1]; got 2.0"),
])
def test_bad_compositions_and_settings_are_refused_in_one_line(setting, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["objective=relicv2", setting])
    assert str(err.value) == message

