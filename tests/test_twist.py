"""TWIST: its three terms, loss and gradient against the paper's definitions in float64, no collapse on real data,
an exact resume, and its composition errors."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from test_checkpoint import assert_resume_is_exact

from mochi_hvs.compute_cost import units_per_image
from mochi_hvs.config import ConfigError, load_config
from mochi_hvs.models.moco import MoCo
from mochi_hvs.objectives.twist import TwinNetwork, TwistConfig, TwistStep, twist_terms, uniform_loss
from mochi_hvs.random_streams import StepRandom
from mochi_hvs.train import Trainer

CLASSES = 16
TWIST = ["objective=twist", "model.head=mlp_bn", f"model.feature_dim={CLASSES}"]


def paper_logits(model: MoCo, *batches: torch.Tensor) -> torch.Tensor:
    """Wang et al. 2021 (and bytedance/TWIST train.py's forward), written out: z = BN(g(cat(f(x) for each batch x)))
    for the batches in order, each through the backbone on its own, the head and the logits' BatchNorm (no affine,
    biased variance) over all their rows at once."""
    h = model.encoder_q.head(torch.cat([model.encoder_q.backbone(x) for x in batches]))
    mean = h.sum(dim=0) / len(h)
    return (h - mean) / torch.sqrt(((h - mean) ** 2).sum(dim=0) / len(h) + 1e-5)


def paper_pair_terms(z1: torch.Tensor, z2: torch.Tensor, lam1: float, lam2: float, tau: float,
                     eps: float) -> tuple[torch.Tensor, ...]:
    """The loss of two views' logits (bytedance/TWIST objective.py), written out: p = softmax(z), s = softmax(z / tau);
    kl = 1/2 (E_i KL(p1_i||p2_i) + E_i KL(p2_i||p1_i)), eh = 1/2 sum_v E_i H(s_v,i), he = 1/2 sum_v H(E_i s_v,i),
    loss = kl + (1 + lam1) eh - lam2 he, with log(x + eps) in every logarithm."""
    def softmax(x):
        e = torch.exp(x - x.max(dim=1, keepdim=True).values)
        return e / e.sum(dim=1, keepdim=True)

    def h_(p):
        return -(p * torch.log(p + eps)).sum(dim=-1)

    def kl_(p, q):
        return (p * (torch.log(p + eps) - torch.log(q + eps))).sum(dim=1)

    p1, p2, s1, s2 = softmax(z1), softmax(z2), softmax(z1 / tau), softmax(z2 / tau)
    kl = (kl_(p1, p2).mean() + kl_(p2, p1).mean()) / 2
    eh = (h_(s1).mean() + h_(s2).mean()) / 2
    he = (h_(s1.mean(dim=0)) + h_(s2.mean(dim=0))) / 2
    return kl + (1 + lam1) * eh - lam2 * he, kl, eh, he


def paper_terms(model: MoCo, v1: torch.Tensor, v2: torch.Tensor, lam1: float, lam2: float, tau: float,
                eps: float) -> tuple[torch.Tensor, ...]:
    """The loss and its terms (paper_pair_terms) of two views encoded in one forward (paper_logits)."""
    z1, z2 = paper_logits(model, torch.cat([v1, v2])).chunk(2)
    return paper_pair_terms(z1, z2, lam1, lam2, tau, eps)


@pytest.mark.parametrize("lam1, lam2, tau", [(0.0, 1.0, 1.0), (0.3, 0.7, 0.5)])
def test_the_three_terms_the_loss_and_its_gradient_are_the_papers_in_float64(lam1, lam2, tau):
    torch.manual_seed(0)
    model = MoCo("resnet18", head="mlp_bn", feature_dim=CLASSES, queue_size=None, shuffle_bn=False,
                 momentum_encoder=False)
    views = torch.randn(8, 2, 3, 16, 16)
    reference = copy.deepcopy(model).double()
    settings = TwistConfig(lam1=lam1, lam2=lam2, tau=tau)
    step = TwistStep(TwinNetwork(model.encoder_q, torch.nn.BatchNorm1d(CLASSES, affine=False)), settings)
    out = step(views, StepRandom(0, 0, 0, torch.device("cpu")))
    out.loss.backward()
    expected = paper_terms(reference, views[:, 0].double(), views[:, 1].double(), lam1, lam2, tau, settings.eps)
    expected[0].backward()
    got = [out.metrics[k] for k in ("loss", "twist_kl", "twist_sample_entropy", "twist_batch_entropy")]
    for value, reference_value in zip(got, expected, strict=True):
        assert float(value) == pytest.approx(float(reference_value.detach()), rel=1e-5, abs=1e-6)
    kl, eh = float(expected[1].detach()), float(expected[2].detach())
    assert kl > 1e-3 and eh < math.log(CLASSES) - 0.1  # terms far from their trivial values
    trained = dict(model.named_parameters())
    for name, p in reference.named_parameters():
        assert (trained[name].grad.double() - p.grad).norm() <= 1e-4 * p.grad.norm() + 1e-6, name
    assert out.keys is None and model.encoder_k is None
    assert out.signal.uniform_loss == pytest.approx((1 + lam1 - lam2) * -math.log(1 / CLASSES + settings.eps))


def test_the_uniform_value_is_the_loss_of_equal_logits():
    settings = TwistConfig(lam1=0.5)
    zeros = torch.zeros(4, CLASSES)
    assert float(twist_terms(zeros, zeros, settings).loss) == pytest.approx(uniform_loss(CLASSES, settings), rel=1e-6)


def test_no_collapse_on_fashion_mnist(quick_overrides):
    """~15 s of tiny steps on real images: the batch-mean entropy stays near log C while the twins become consistent.
    The floor is the expected entropy of the empirical distribution of B one-hot draws spread evenly over C classes
    (Miller-Madow: log C - (C - 1) / (2B)); a collapsing run heads to 0 (one class). Per-sample entropy does not
    drop yet at this length (measured: 2.39 -> 2.47 over 30 steps at lr 0.3, consistency is learnt first)."""
    steps, batch = 16, 32
    cfg = load_config(None, quick_overrides + TWIST + [
        "log_every=1", f"optim.steps={steps}", "optim.lr=0.3", f"optim.batch_size={batch}", "optim.warmup_epochs=0",
        "eval.knn_baseline=false", "eval.knn_pixels=false"])
    trainer = Trainer(cfg)
    trainer.train()
    trainer.close()
    lines = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [line for line in lines if "train/twist_batch_entropy" in line]
    assert len(trained) == steps
    batch_entropy = [line["train/twist_batch_entropy"] for line in trained]
    kl = [line["train/twist_kl"] for line in trained]
    floor = math.log(CLASSES) - (CLASSES - 1) / (2 * batch)
    assert min(batch_entropy) > floor, batch_entropy
    assert sum(kl[-3:]) < 0.5 * sum(kl[:3]), kl
    assert not trainer.monitors.collapse.last.collapsed


def test_resume_is_exact(quick_overrides):
    resumed = assert_resume_is_exact(quick_overrides + TWIST)
    assert resumed.model.encoder_k is None and "twist_logit_bn.running_mean" in resumed.model.state_dict()


@pytest.mark.parametrize("setting, message", [
    ("mochi.enabled=true", "--set: 'mochi.enabled' needs an objective with a memory queue (objective=contrastive); "
                           "objective=twist has none"),
    ("twist.tau=0", "--set: 'twist.tau' must be > 0; got 0.0"),
])
def test_mochi_and_bad_settings_are_refused_in_one_line(setting, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["objective=twist", setting])
    assert str(err.value) == message


def test_twist_costs_both_views_through_one_network():
    assert units_per_image(load_config(None, TWIST), selecting=False) == 2 * 3
