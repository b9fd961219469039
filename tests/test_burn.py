"""BURN: the dynamic loss balance against its formula, the loss and its gradients against a float64 computation of
the definitions, the frozen teacher and the trained target, the multi-stage carry-over, training, an exact resume,
its cost and its refusals."""

from __future__ import annotations

import math

import pytest
import torch
from test_checkpoint import assert_resume_is_exact

from mochi_hvs.compute_cost import units_per_image
from mochi_hvs.config import ConfigError, load_config
from mochi_hvs.models.binary import binary_convolutions
from mochi_hvs.models.moco import MoCo
from mochi_hvs.objectives.base import objective_of
from mochi_hvs.objectives.burn import CLASSIFIER, TEACHER, burn_loss, loss_balance
from mochi_hvs.random_streams import StepRandom
from mochi_hvs.train import Trainer
from mochi_hvs.weights.errors import WeightsError


def burn(teacher) -> list[str]:
    """BURN on a binary ResNet-18 against `teacher`."""
    return ["objective=burn", "model.arch=binary/resnet18", f"burn.teacher={teacher}"]


@pytest.mark.parametrize(("start", "end"), [(0.1, 0.3), (0.5, 0.2)])
def test_the_loss_balance_follows_its_cosine(start, end):
    total = 90
    for step in (0, 1, 17, 45, 89, 90):
        expected = end - (end - start) * (1 + math.cos(math.pi * step / total)) / 2
        assert loss_balance(step, total, start, end) == pytest.approx(expected, abs=1e-15)
    assert loss_balance(0, total, start, end) == pytest.approx(start)
    assert loss_balance(45, total, start, end) == pytest.approx((start + end) / 2)
    assert loss_balance(total, total, start, end) == pytest.approx(end)


def test_the_loss_and_its_gradients_against_the_definitions():
    torch.manual_seed(0)
    z = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
    t = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
    lam, temperature = 0.3, 0.2
    ours, similarity, divergence = burn_loss(z, t, lam, temperature)

    z_ref, t_ref = z.detach().clone().requires_grad_(), t.detach().clone().requires_grad_()
    cosine_distance = ((z_ref / z_ref.norm(dim=1, keepdim=True) - t_ref / t_ref.norm(dim=1, keepdim=True)) ** 2).sum(1)
    p = torch.exp(t_ref / temperature) / torch.exp(t_ref / temperature).sum(dim=1, keepdim=True)
    q = torch.exp(z_ref / temperature) / torch.exp(z_ref / temperature).sum(dim=1, keepdim=True)
    kl = (p * torch.log(p / q)).sum(dim=1)
    reference = (1 - lam) * cosine_distance + lam * kl
    assert ours.dtype == torch.float64  # float64 in, float64 out: the reference's precision
    assert torch.allclose(ours, reference, atol=1e-12)
    assert torch.allclose(similarity, cosine_distance, atol=1e-12)
    assert torch.allclose(divergence, kl, atol=1e-12)

    ours.mean().backward()
    reference.mean().backward()
    assert torch.allclose(z.grad, z_ref.grad, atol=1e-12) and torch.allclose(t.grad, t_ref.grad, atol=1e-12)
    assert t.grad.abs().sum() > 0  # the target is trained too: it moves


def built_step(teacher, *overrides):
    cfg = load_config(None, [*burn(teacher), "model.feature_dim=16", "model.bn_splits=1", *overrides])
    torch.manual_seed(0)
    model = MoCo(cfg.model.arch, feature_dim=16, queue_size=None, momentum_encoder=False)
    objective = objective_of(cfg)
    objective.target_momentum(0, 100)
    return cfg, model, objective, objective.build_step(model, [], lambda module: module, 10)


def test_a_step_trains_the_binary_network_and_the_classifier_not_the_teacher(plain_run):
    cfg, model, objective, step = built_step(plain_run.cfg.run_dir / "last.pth")
    teacher, classifier = getattr(model, TEACHER), getattr(model, CLASSIFIER)
    model.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    running = teacher.network.bn1.running_mean.clone()
    views = torch.randn(8, 2, 3, 28, 28)
    objective.target_momentum(40, 100)
    out = step(views, StepRandom(0, 40, 0, torch.device("cpu")), step=40)
    lam = loss_balance(40, 100, 0.1, 0.3)
    assert out.metrics["lambda"].item() == pytest.approx(lam)

    with torch.no_grad():
        student = [model.encoder_q.head(model.encoder_q.backbone(views[:, i])) for i in (0, 1)]
        target = [classifier(teacher.network(views[:, i])) for i in (0, 1)]
        expected = (burn_loss(student[0], target[1], lam, 0.2)[0] + burn_loss(student[1], target[0], lam, 0.2)[0])
    assert torch.allclose(out.loss, expected.mean(), atol=1e-5)
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in classifier.parameters())
    assert model.encoder_q.backbone.layer1[0].conv1.weight.grad.abs().sum() > 0
    assert torch.equal(teacher.network.bn1.running_mean, running)  # frozen: eval-mode BatchNorm


@pytest.mark.parametrize(("until", "binary_from"), [(0.5, 50), (0.0, 0), (1.0, 100), (0.33, 33)])
def test_the_first_stage_keeps_real_weights_until_its_share_of_the_run(plain_run, until, binary_from):
    _, model, objective, step = built_step(plain_run.cfg.run_dir / "last.pth", f"burn.real_weights_until={until}")
    convs = binary_convolutions(model.encoder_q.backbone)
    views = torch.randn(8, 2, 3, 28, 28)
    for at in sorted({0, 32, 33, 49, 50, 99} | {binary_from - 1} - {-1}):
        out = step(views, StepRandom(0, at, 0, torch.device("cpu")), step=at)  # of 100 steps (built_step)
        assert {conv.binary_weights for conv in convs} == {at >= binary_from}, at
        assert out.metrics["binary_weights"].item() == float(at >= binary_from)


def test_a_later_stage_starts_its_classifier_and_head_from_a_burn_checkpoint(plain_run, quick_overrides):
    teacher = plain_run.cfg.run_dir / "last.pth"
    cfg = load_config(None, [*quick_overrides, *burn(teacher), "optim.steps=1", "eval.knn_baseline=false",
                             "eval.knn_pixels=false", "burn.real_weights_until=1", "model.feature_dim=16"])
    first = Trainer(cfg)
    first.train()
    first.close()
    trained = first.model.state_dict()
    _, model, _, _ = built_step(teacher, f"model.init_from={cfg.run_dir / 'last.pth'}")
    state = model.state_dict()
    carried = [key for key in trained if key.startswith((f"{CLASSIFIER}.", "encoder_q.head."))]
    assert len(carried) == 11 and all(torch.equal(state[key], trained[key]) for key in carried)  # 2 + 2 heads, BN
    assert not torch.equal(state["encoder_q.backbone.conv1.weight"], trained["encoder_q.backbone.conv1.weight"])
    with pytest.raises(WeightsError, match="its BURN classifier and head do not fit this run's"):
        built_step(teacher, f"model.init_from={cfg.run_dir / 'last.pth'}", "model.feature_dim=32")


def test_training_steps_and_an_exact_resume(plain_run, quick_overrides):
    overrides = quick_overrides + burn(plain_run.cfg.run_dir / "last.pth")
    trainer = Trainer(load_config(None, overrides))
    batches = iter(trainer.parts.batches)
    losses = [float(trainer.train_step(next(batches))["loss"]) for _ in range(2)]
    assert all(math.isfinite(loss) for loss in losses)
    trainer.close()
    assert_resume_is_exact(overrides)


def test_its_cost_is_two_trained_and_two_teacher_forwards(tmp_path):
    assert units_per_image(load_config(None, burn(tmp_path)), selecting=False) == 2 * 3 + 2 * 1


def test_the_teacher_path_takes_the_runs_seed_and_output_dir(tmp_path):
    cfg = load_config(None, [*burn("'{output_dir}/../teacher/seed{seed}/last.pth'"), f"output_dir={tmp_path}",
                             "seed=2"])
    path = cfg.burn.teacher_path(cfg)
    assert path == tmp_path / ".." / "teacher" / "seed2" / "last.pth"
    with pytest.raises(ConfigError, match=f"burn.teacher: no weights file at {path}"):
        objective_of(cfg).build_step(MoCo("binary/resnet18", queue_size=None, momentum_encoder=False), [],
                                     lambda module: module, 10)


@pytest.mark.parametrize(("overrides", "message"), [
    (["objective=burn"], "'burn.teacher' must name the pretrained floating-point feature extractor's weights"),
    (["burn.temperature=0"], "'burn.temperature' must be > 0; got 0.0"),
    (["burn.teacher='{run}/last.pth'"], "'burn.teacher' may name {seed} and {output_dir} only; got '{run}/last.pth'"),
    (["burn.lambda_end=1.5"], r"'burn.lambda_end' must be in \[0, 1\]; got 1.5"),
    (["burn.real_weights_until=1.5"], r"'burn.real_weights_until' must be in \[0, 1\]; got 1.5"),
])
def test_config_errors_name_the_keys(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*burn("t.pth"), *overrides] if overrides != ["objective=burn"] else overrides)
