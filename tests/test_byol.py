"""BYOL: its loss and gradient against the paper's definition in float64, the EMA target, its composition errors,
learning on real data, and an exact resume."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from test_checkpoint import assert_resume_is_exact

from mochi_hvs.compute_cost import units_per_image
from mochi_hvs.config import ConfigError, load_config
from mochi_hvs.models.moco import MoCo
from mochi_hvs.objectives.byol import ByolStep, OnlineNetwork
from mochi_hvs.random_streams import StepRandom
from mochi_hvs.train import Trainer

BYOL = ["objective=byol", "model.head=mlp_bn"]


def online(model: MoCo, x: torch.Tensor) -> torch.Tensor:
    """The online prediction q_theta(g_theta(f_theta(x))); the projection itself for a model without predictor."""
    projection = model.encoder_q.head(model.encoder_q.backbone(x))
    return projection if model.predictor is None else model.predictor(projection)


def target(model: MoCo, x: torch.Tensor) -> torch.Tensor:
    """The target projection sg(g_xi(f_xi(x)))."""
    with torch.no_grad():
        return model.encoder_k.head(model.encoder_k.backbone(x))


def per_crop(encode, crops: torch.Tensor) -> list[torch.Tensor]:
    """encode(x) of the small crops (B, L, C, h, w), all L x B of them as one batch, crop l of sample n at row
    l * B + n (the steps' crop-major batch, so that BatchNorm sees the same rows): L tensors (B, ...)."""
    count, batch = crops.shape[1], crops.shape[0]
    return list(encode(crops.transpose(0, 1).reshape(count * batch, *crops.shape[2:])).reshape(count, batch, -1))


def bar(x: torch.Tensor) -> torch.Tensor:
    """x / ||x||_2 per row."""
    return x / torch.sqrt((x * x).sum(dim=1, keepdim=True))


def paper_loss(model: MoCo, v: torch.Tensor, v_prime: torch.Tensor) -> torch.Tensor:
    """Grill et al. 2020, eq. 2 symmetrised: L = ||q_bar - z'_bar||^2 + ||q'_bar - z_bar||^2, averaged over the batch,
    with q = q_theta(g_theta(f_theta(v))), z' = sg(g_xi(f_xi(v'))) and x_bar = x / ||x||_2."""
    def mse(p, z):
        return ((bar(p) - bar(z)) ** 2).sum(dim=1)

    return (mse(online(model, v), target(model, v_prime)) + mse(online(model, v_prime), target(model, v))).mean()


def assert_online_gradients_match(model: MoCo, reference: MoCo) -> None:
    """Every online parameter's float32 gradient is the float64 reference's, per tensor; the target has none."""
    trained = dict(model.named_parameters())
    checked = 0
    for name, p in reference.named_parameters():
        if name.startswith("encoder_k."):
            assert p.grad is None and trained[name].grad is None  # no gradient reaches the target
            continue
        # float32 against float64, per parameter tensor (biases before a BatchNorm: zero gradient, up to rounding)
        assert (trained[name].grad.double() - p.grad).norm() <= 1e-4 * p.grad.norm() + 1e-6, name
        checked += 1
    assert checked == len([n for n in trained if n.startswith(("encoder_q.", "predictor."))])


def perturbed_target_model(feature_dim: int = 16, predictor: bool = True) -> MoCo:
    """A BYOL-shaped model (mlp_bn head, a predictor unless told otherwise, no queue) whose target differs from the
    online network, as after some training."""
    model = MoCo("resnet18", head="mlp_bn", feature_dim=feature_dim, queue_size=None, predictor=predictor,
                 shuffle_bn=False)
    with torch.no_grad():
        for p in model.encoder_k.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("predictor", [True, False])
def test_the_loss_and_its_gradient_are_the_papers_in_float64(predictor):
    torch.manual_seed(0)
    model = perturbed_target_model(predictor=predictor)
    views = torch.randn(8, 2, 3, 16, 16)
    reference = copy.deepcopy(model).double()
    step = ByolStep(model, OnlineNetwork(model.encoder_q, model.predictor or torch.nn.Identity()))
    out = step(views, StepRandom(0, 0, 0, torch.device("cpu")))
    out.loss.backward()
    expected = paper_loss(reference, views[:, 0].double(), views[:, 1].double())
    expected.backward()
    assert float(out.loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert_online_gradients_match(model, reference)
    assert out.keys is None and out.signal.uniform_loss is None  # no queue; no uniform value to be pinned at


def assert_the_target_moves_only_by_the_ema(overrides: list[str], section: str) -> None:
    """Two steps of the real loop with `section`.momentum=0.9: the target gets no gradient, each step moves it exactly
    by the EMA of the online network (tau on the paper's cosine from tau_base), and the online network trains."""
    cfg = load_config(None, overrides + ["optim.steps=2", f"{section}.momentum=0.9"])
    trainer = Trainer(cfg)
    model = trainer.model
    assert model.queue is None and not any(p.requires_grad for p in model.encoder_k.parameters())
    for step in range(2):
        online = [p.detach().clone() for p in model.encoder_q.parameters()]
        target = [p.detach().clone() for p in model.encoder_k.parameters()]
        tau = trainer.parts.objective.target_momentum(step, trainer.parts.total_steps)
        batch = next(iter(trainer.parts.batches))
        trainer.train_step(batch)
        trainer.position.global_step += 1
        for before, p_online, after in zip(target, online, model.encoder_k.parameters(), strict=True):
            assert after.grad is None
            assert torch.equal(after, torch.lerp(before, p_online, 1 - tau))  # xi <- tau xi + (1 - tau) theta
            expected = tau * before.double() + (1 - tau) * p_online.double()
            torch.testing.assert_close(after.double(), expected, rtol=0, atol=1e-6)
        assert any(not torch.equal(a, b) for a, b in zip(online, model.encoder_q.parameters(), strict=True))
    # the paper's schedule: tau_base at the start, raised to 1 on a cosine
    assert tau == pytest.approx(1 - 0.1 * (1 + torch.cos(torch.tensor(torch.pi / 2)).item()) / 2)
    trainer.close()


def test_the_target_gets_no_gradient_and_moves_only_by_the_ema(quick_overrides):
    assert_the_target_moves_only_by_the_ema(quick_overrides + BYOL, "byol")


def test_mochi_refuses_byol_in_one_line():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["objective=byol", "mochi.enabled=true"])
    assert str(err.value) == ("--set: 'mochi.enabled' needs an objective with a memory queue "
                              "(objective=contrastive); objective=byol has none")
    with pytest.raises(ConfigError, match="'byol.momentum' must be in"):
        load_config(None, ["objective=byol", "byol.momentum=1.5"])


def test_byol_costs_both_views_through_both_networks():
    assert units_per_image(load_config(None, BYOL), selecting=False) == 2 * 3 + 2 * 1


def test_a_few_steps_on_fashion_mnist_reduce_the_loss(quick_overrides):
    cfg = load_config(None, quick_overrides + BYOL + ["log_every=1", "optim.steps=12"])
    trainer = Trainer(cfg)
    trainer.train()
    trainer.close()
    lines = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [line["train/loss"] for line in lines if "train/loss" in line]
    assert len(losses) == 12 and sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses
    assert not trainer.monitors.collapse.last.collapsed


def test_resume_is_exact(quick_overrides):
    assert_resume_is_exact(quick_overrides + BYOL)


def test_without_its_predictor_the_model_has_none_and_trains(quick_overrides):
    cfg = load_config(None, quick_overrides + BYOL + ["byol.predictor=false", "optim.steps=1"])
    trainer = Trainer(cfg)
    assert trainer.model.predictor is None and not any(k.startswith("predictor.") for k in trainer.model.state_dict())
    metrics = trainer.train_step(next(iter(trainer.parts.batches)))
    assert 0 < float(metrics["loss"]) < 4  # 2 - 2 cos per view pair, summed over both directions
    trainer.close()
