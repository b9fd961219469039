"""HVS with the objectives that score pairs of views themselves (BYOL, TWIST, ReLICv2, MSBReg): each objective's pair
losses against its definition in float64 and against its own step's loss, the selection of the hardest pair, the
re-packing of the chosen views, scoring without side effects, an exact resume, the refusals and the cost."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from test_byol import bar, online, perturbed_target_model, target
from test_checkpoint import assert_resume_is_exact

from mochi_hvs.compute_cost import units_per_image
from mochi_hvs.config import ConfigError, load_config
from mochi_hvs.distributed import DistEnv
from mochi_hvs.models.moco import MoCo
from mochi_hvs.objectives.base import Objective, objective_of, wrapped_step
from mochi_hvs.objectives.byol import ByolStep, OnlineNetwork
from mochi_hvs.objectives.hard_views import HardViewStep
from mochi_hvs.objectives.msbreg import MsbregConfig, MsbregStep, RegularisedStep
from mochi_hvs.objectives.registry import OBJECTIVES, Forwards, Needs, register
from mochi_hvs.objectives.relicv2 import Relicv2Config, Relicv2Step
from mochi_hvs.objectives.twist import TwinNetwork, TwistConfig, TwistStep
from mochi_hvs.random_streams import StepRandom
from mochi_hvs.step import StepOutput
from mochi_hvs.train.build import build_model

CPU = torch.device("cpu")
PAIR_SCORING = {"byol": [], "twist": ["model.feature_dim=16"], "relicv2": [], "msbreg": []}


def rng(step: int = 3) -> StepRandom:
    return StepRandom(0, step, 0, CPU)


def off_diagonal_pairs(views: int) -> list[tuple[int, int]]:
    return [(a, b) for a in range(views) for b in range(views) if a != b]


def assert_step_losses_match(step, views: torch.Tensor, losses: torch.Tensor, batch_terms) -> None:
    """For every ordered pair (a, b), the step's loss on views a and b is the batch mean of losses[:, a, b] plus the
    terms of the whole batch (batch_terms(out) of the step's output)."""
    for a, b in off_diagonal_pairs(views.shape[1]):
        out = step(views[:, [a, b]], rng())
        expected = float(losses[:, a, b].mean()) + float(batch_terms(out))
        assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-5, abs=1e-6), (a, b)


def byol_shaped(predictor: bool) -> MoCo:
    """A float64 BYOL-shaped model (mlp_bn head, no shuffle-BN, one BatchNorm group) whose target differs from the
    online network."""
    torch.manual_seed(0)
    return perturbed_target_model(predictor=predictor).double()


def per_view(fn, model: MoCo, views: torch.Tensor) -> torch.Tensor:
    """bar(fn(model, view v)) for each view slot v on its own (a copy of the model: training-mode forwards),
    (B, V, D)."""
    reference = copy.deepcopy(model)
    with torch.no_grad():
        return torch.stack([bar(fn(reference, views[:, v])) for v in range(views.shape[1])], dim=1)


def test_byol_pair_losses_are_both_regression_losses_of_the_pair():
    model = byol_shaped(predictor=True)
    views = torch.randn(8, 3, 3, 16, 16, dtype=torch.float64)
    step = ByolStep(model, OnlineNetwork(model.encoder_q, model.predictor))
    losses = step.pair_losses(views, rng())
    q, z = per_view(online, model, views), per_view(target, model, views)
    for a, b in off_diagonal_pairs(3):
        expected = ((q[:, a] - z[:, b]) ** 2).sum(dim=1) + ((q[:, b] - z[:, a]) ** 2).sum(dim=1)
        torch.testing.assert_close(losses[:, a, b].double(), expected, rtol=1e-5, atol=1e-6)
    assert_step_losses_match(step, views, losses, lambda out: 0.0)


def test_twist_pair_losses_are_the_per_sample_kl_and_entropies_over_all_candidates():
    torch.manual_seed(0)
    lam1, tau, eps, classes = 0.3, 0.5, 1e-5, 16
    model = MoCo("resnet18", head="mlp_bn", feature_dim=classes, queue_size=None, shuffle_bn=False,
                 momentum_encoder=False).double()
    settings = TwistConfig(lam1=lam1, lam2=0.7, tau=tau, eps=eps)
    step = TwistStep(TwinNetwork(model.encoder_q, torch.nn.BatchNorm1d(classes, affine=False).double()), settings)
    views = torch.randn(8, 3, 3, 16, 16, dtype=torch.float64)
    losses = step.pair_losses(views, rng())
    with torch.no_grad():  # one forward of all candidates; the logits' BatchNorm over them all (biased variance)
        reference = copy.deepcopy(model)
        h = reference.encoder_q.head(reference.encoder_q.backbone(views.transpose(0, 1).flatten(0, 1)))
    z = ((h - h.mean(dim=0)) / torch.sqrt(h.var(dim=0, unbiased=False) + 1e-5)).unflatten(0, (3, 8)).transpose(0, 1)
    p, s = torch.softmax(z, dim=-1), torch.softmax(z / tau, dim=-1)

    def kl(x, y):
        return (x * (torch.log(x + eps) - torch.log(y + eps))).sum(dim=-1)

    def entropy(x):
        return -(x * torch.log(x + eps)).sum(dim=-1)

    for a, b in off_diagonal_pairs(3):
        expected = (kl(p[:, a], p[:, b]) + kl(p[:, b], p[:, a])) / 2 + (1 + lam1) * (entropy(s[:, a]) +
                                                                                       entropy(s[:, b])) / 2
        torch.testing.assert_close(losses[:, a, b].double(), expected, rtol=1e-5, atol=1e-6)
    # With two candidates, the step's one forward normalises exactly these views: its loss is the pair losses' mean
    # less lam2 x the batch-mean entropy (a term of the whole batch).
    pair = views[:, :2]
    assert_step_losses_match(step, pair, step.pair_losses(pair, rng()),
                             lambda out: -settings.lam2 * out.metrics["twist_batch_entropy"])


def test_relicv2_pair_losses_are_both_orders_terms_over_the_batch():
    temperature, alpha = 0.3, 2.0
    model = byol_shaped(predictor=False)
    views = torch.randn(8, 3, 3, 16, 16, dtype=torch.float64)
    step = Relicv2Step(model, model.encoder_q, Relicv2Config(temperature=temperature, alpha=alpha))
    losses = step.pair_losses(views, rng())

    def embed(m, x):
        return m.encoder_q.head(m.encoder_q.backbone(x))

    o, t = per_view(embed, model, views), per_view(target, model, views)

    def terms(u: int, v: int) -> torch.Tensor:
        """contrastive_i + alpha invariance_i of online view u against target view v, written out."""
        s = o[:, u] @ t[:, v].T / temperature
        row = torch.exp(s) / torch.exp(s).sum(dim=1, keepdim=True)
        col = torch.exp(s.T) / torch.exp(s.T).sum(dim=1, keepdim=True)
        return -torch.log(row.diagonal()) + alpha * (col * (torch.log(col) - torch.log(row))).sum(dim=1)

    for a, b in off_diagonal_pairs(3):
        torch.testing.assert_close(losses[:, a, b].double(), (terms(a, b) + terms(b, a)) / 2, rtol=1e-5, atol=1e-6)
    assert_step_losses_match(step, views, losses, lambda out: 0.0)


def test_msbreg_pair_losses_are_the_centroid_and_brownian_terms_with_the_steps_directions():
    weights = MsbregConfig(centroid=1.5, singular=0.7, brownian=0.5)
    model = byol_shaped(predictor=True)
    views = torch.randn(8, 3, 3, 16, 16, dtype=torch.float64)
    step = MsbregStep(model, OnlineNetwork(model.encoder_q, model.predictor), weights)
    losses = step.pair_losses(views, rng())
    o, t = per_view(online, model, views), per_view(target, model, views)
    u = bar(torch.randn(8, o.shape[2], generator=rng()("msbreg")).double())  # the step's directions
    for a, b in off_diagonal_pairs(3):
        centroid = 2 - 2 * (bar(o[:, a] + o[:, b]) * bar(t[:, a] + t[:, b])).sum(dim=1)
        brownian = 1 + ((o[:, a] + o[:, b]) / 2 * u).sum(dim=1)
        torch.testing.assert_close(losses[:, a, b].double(), 1.5 * centroid + 0.5 * brownian, rtol=1e-5, atol=1e-6)
    assert_step_losses_match(step, views, losses, lambda out: weights.singular * out.metrics["msbreg_singular"])


def built(name: str, *settings: str):
    """The objective's step as the builder wraps it with HVS (3 candidates), on a small float32 model with shuffle-BN
    and two BatchNorm groups."""
    cfg = load_config(None, [f"objective={name}", "model.head=mlp_bn", "model.bn_splits=2", "hvs.enabled=true",
                             "hvs.num_views=3", *PAIR_SCORING[name], *settings])
    torch.manual_seed(0)
    model = build_model(cfg, DistEnv())
    return model, wrapped_step(cfg, objective_of(cfg).build_step(model, [], lambda module: module, 10), model)


def candidates(batch: int = 8, views: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random views (B, V, 3, 16, 16), crop boxes (B, V, 4) and flips (B, V)."""
    corners = torch.rand(batch, views, 2, 2).sort(dim=2).values
    boxes = corners.transpose(2, 3).flatten(2)  # x0, y0, x1, y1
    return torch.randn(batch, views, 3, 16, 16), boxes, torch.rand(batch, views) < 0.5


@pytest.mark.parametrize("name", PAIR_SCORING)
def test_scoring_changes_no_state_and_draws_from_no_training_stream(name):
    model, step = built(name)
    views = candidates()[0]
    state = {key: value.clone() for key, value in model.state_dict().items()}
    generators = rng()
    streams = {stream: generators(stream).get_state() for stream in ("shuffle", "msbreg")}
    global_state = torch.get_rng_state()
    step.step.pair_losses(views, generators)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), f"scoring changed {key}"
    for stream, before in streams.items():
        assert torch.equal(generators(stream).get_state(), before), stream
    assert torch.equal(torch.get_rng_state(), global_state)
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("name", PAIR_SCORING)
def test_the_step_trains_each_samples_hardest_pair_by_its_own_loss(name):
    model, step = built(name)
    assert isinstance(step, HardViewStep)
    views, boxes, flips = candidates()
    losses = step.step.pair_losses(views, rng())
    out = step(views, rng(), boxes=boxes, flips=flips, epoch=0, step=3)
    hardest = [max(off_diagonal_pairs(3), key=lambda pair, i=i: float(losses[i, pair[0], pair[1]])) for i in range(8)]
    selected = torch.stack([losses[i, a, b] for i, (a, b) in enumerate(hardest)])
    assert float(out.metrics["hvs/loss_selected"]) == pytest.approx(float(selected.mean()), rel=1e-6)
    repacked = [torch.stack([values[i, list(pair)] for i, pair in enumerate(hardest)])
                for values in (views, boxes, flips)]
    expected = step.step(repacked[0], rng(), boxes=repacked[1], flips=repacked[2], epoch=0, step=3)
    assert torch.equal(out.loss, expected.loss)
    iou = out.per_sample["hvs/iou_selected"]
    assert iou.shape == (8,) and {"hvs/iou_random", "hvs/loss_candidates", "proxy_top1"} <= set(out.metrics)


class ScriptedStep:
    """A step whose pair losses are given, and which records what it is called with."""

    def __init__(self, losses: torch.Tensor) -> None:
        self.losses = losses
        self.calls: list[dict] = []
        self.scored: list[torch.Tensor] = []

    def __call__(self, views, rng, **kwargs) -> StepOutput:
        self.calls.append({"views": views, **kwargs})
        return StepOutput(views.sum(), None, metrics={"loss": views.sum()}, per_sample={"own": torch.ones(2)})

    def pair_losses(self, views, rng) -> torch.Tensor:
        self.scored.append(views)
        return self.losses


def hvs_settings(*settings: str):
    return load_config(None, ["objective=byol", "hvs.enabled=true", "hvs.num_views=3", *settings]).hvs


def test_the_wrapper_moves_the_chosen_pair_first_and_follows_hvs_settings():
    losses = torch.tensor([[[0.0, 1.0, 2.0], [3.0, 0.0, 9.0], [4.0, 5.0, 0.0]],   # hardest (1, 2), easiest (0, 1)
                           [[0.0, 7.0, 1.0], [2.0, 0.0, 3.0], [0.5, 6.0, 0.0]]])  # hardest (0, 1), easiest (2, 0)
    views, boxes, flips = candidates(batch=2)
    scripted = ScriptedStep(losses)
    step = HardViewStep(scripted, hvs_settings("hvs.select_every=2", "hvs.start_epoch=1", "hvs.score_resolution=8"))
    out = step(views, rng(), labels=None, boxes=boxes, epoch=1, step=4, flips=flips)
    call = scripted.calls[-1]
    for values, name in ((views, "views"), (boxes, "boxes"), (flips, "flips")):
        moved = call["views"] if name == "views" else call[name]
        assert torch.equal(moved, torch.stack([values[0, [1, 2]], values[1, [0, 1]]])), name
    assert scripted.scored[-1].shape == (2, 3, 3, 8, 8)  # scored at hvs.score_resolution
    assert float(out.metrics["hvs/loss_selected"]) == 8.0 and "own" in out.per_sample and "loss" in out.metrics
    easiest = HardViewStep(scripted, hvs_settings("hvs.mode=easiest"))
    easiest(views, rng(), boxes=boxes, epoch=0, step=0)
    assert torch.equal(scripted.calls[-1]["views"], torch.stack([views[0, [0, 1]], views[1, [2, 0]]]))
    scored = len(scripted.scored)
    for epoch, position in ((0, 4), (1, 5)):  # before start_epoch, off the select_every grid: views as drawn
        out = step(views, rng(), boxes=boxes, epoch=epoch, step=position, flips=flips)
        assert scripted.calls[-1]["views"] is views and scripted.calls[-1]["flips"] is flips
        assert not any(key.startswith("hvs/") for key in out.metrics)
    random = HardViewStep(scripted, hvs_settings("hvs.mode=random"))
    out = random(views, rng(), boxes=boxes)
    assert len(scripted.scored) == scored and "hvs/loss_selected" not in out.metrics  # random pairs: nothing scored
    assert not torch.equal(scripted.calls[-1]["views"][:, 0], scripted.calls[-1]["views"][:, 1])
    with pytest.raises(ValueError, match="crop boxes"):
        step(views, rng(), epoch=1, step=4)


def test_a_regulariser_wraps_the_selecting_step():
    model, step = built("byol", "msbreg.regularise=true")
    assert isinstance(step, RegularisedStep) and isinstance(step.step, HardViewStep)
    views, boxes, flips = candidates()
    out = step(views, rng(), boxes=boxes, flips=flips)
    assert {"msbreg_singular", "hvs/iou_selected"} <= set(out.metrics)


def test_resume_with_byol_is_exact_and_logs_hvs_metrics(quick_overrides):
    resumed = assert_resume_is_exact(quick_overrides + ["objective=byol", "model.head=mlp_bn", "hvs.enabled=true",
                                                        "hvs.num_views=3"])
    lines = [json.loads(line) for line in (resumed.cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("train/hvs/iou_selected" in line and "train/hvs/loss_selected" in line for line in lines)


@pytest.mark.parametrize("settings, message", [
    (["objective=supervised", "hvs.enabled=true"],
     "--set: 'hvs.enabled' needs objective=contrastive|byol|msbreg|relicv2|twist (objective=supervised takes no "
     "methods)"),
    (["objective=twist", "hvs.enabled=true", "hvs.scorer=momentum"],
     "--set: 'hvs.scorer' must be query with objective=twist (it scores pairs with its own loss; momentum is "
     "MoCo-v2's scoring); got 'momentum'"),
])
def test_hvs_is_refused_in_one_line_where_it_cannot_apply(settings, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, settings)
    assert str(err.value) == message


class Scored(Objective):
    """A toy objective that declares pair losses scored through three networks."""

    name, label = "scored", "scored-pretrained"
    needs = Needs(views=2, queue=False, pair_losses=True)

    def forwards(self) -> Forwards:
        return Forwards(trained=1, target=1, candidate=3)


@pytest.fixture
def scored():
    register(Scored)
    yield Scored
    del OBJECTIVES[Scored.name]


def test_scoring_is_priced_from_the_objectives_declarations(scored):
    def units(*settings: str, selecting: bool = True) -> float:
        return units_per_image(load_config(None, ["hvs.enabled=true", "hvs.num_views=3", *settings]), selecting)

    assert units("objective=scored") == 3 + 1 + 3 * 3  # its candidates through its three networks, no key reuse
    assert units("objective=byol") == 2 * 3 + 2 + 3 * 2
    assert units("objective=twist") == 2 * 3 + 3 * 1
    assert units("objective=byol", "hvs.score_resolution=14") == 2 * 3 + 2 + 3 * 2 / 4
    assert units("objective=byol", "hvs.mode=random") == units("objective=byol", selecting=False) == 2 * 3 + 2
    assert units("hvs.scorer=momentum") == 3 + 3 * 1  # MoCo-v2 as before: one scoring encoder, keys reused
