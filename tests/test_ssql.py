"""SSQL on MoCo-v2's step: the loss against a direct computation, one copy of weights, the seeded and resumable
bit-width draw, its cost and its refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_checkpoint import assert_resume_is_exact

from mochi_hvs.compute_cost import units_per_image
from mochi_hvs.config import ConfigError, load_config
from mochi_hvs.methods.ssql import Ssql, draw_bits
from mochi_hvs.models.fake_quant import BitWidths, QuantConv2d, quantized
from mochi_hvs.models.moco import MoCo
from mochi_hvs.random_streams import StepRandom
from mochi_hvs.step import ContrastiveStep
from mochi_hvs.train import Trainer

ENABLED = ["ssql.enabled=true"]


def test_the_draw_is_seeded_uniform_over_the_ranges_and_the_same_on_a_resume():
    draws = [draw_bits(7, step, [2, 8], [4, 8]) for step in range(400)]
    assert draws == [draw_bits(7, step, [2, 8], [4, 8]) for step in range(400)]  # a resumed run redraws them
    assert {bits.weight for bits in draws} == set(range(2, 9)) and {bits.activation for bits in draws} == {4, 5, 6,
                                                                                                           7, 8}
    assert draws != [draw_bits(8, step, [2, 8], [4, 8]) for step in range(400)]  # another seed, other draws
    assert draw_bits(7, 5, [3, 3], [6, 6]) == BitWidths(3, 6)
    counts = [sum(bits.weight == b for bits in draws) for b in range(2, 9)]
    assert min(counts) > 400 / 7 / 2  # roughly uniform


def small_moco() -> MoCo:
    torch.manual_seed(0)
    return MoCo("resnet18", bn_splits=1, feature_dim=16, queue_size=64, shuffle_bn=False)


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = torch.cat([(q * k).sum(dim=1, keepdim=True), q @ queue.t()], dim=1) / temperature
    return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()


@pytest.mark.parametrize("weight", [1.0, 0.25])
def test_the_loss_is_full_precision_plus_quantized_infonce(weight):
    model = small_moco()
    cfg = load_config(None, [*ENABLED, f"ssql.weight={weight}", "seed=3"])
    method = Ssql(cfg, model)
    views = torch.randn(4, 2, 3, 28, 28)
    out = ContrastiveStep(model, 0.2, False, [method])(views, StepRandom(3, 11, 0, torch.device("cpu")), step=11)
    bits = draw_bits(3, 11, [2, 8], [4, 8])
    with torch.no_grad():
        k = model.encoder_k(views[:, 1]).embedding
        q = F.normalize(model.encoder_q.head(model.encoder_q.backbone(views[:, 0])), dim=1)
        with quantized(model.encoder_q.backbone, bits):
            q_bits = F.normalize(model.encoder_q.head(model.encoder_q.backbone(views[:, 0])), dim=1)
        expected = info_nce(q, k, model.queue.features, 0.2) + weight * info_nce(q_bits, k, model.queue.features, 0.2)
    assert not torch.allclose(q, q_bits, atol=1e-3)  # the quantized branch is another network's forward
    assert torch.allclose(out.loss, expected, atol=1e-5)
    assert "ssql/proxy_top1" in out.metrics


def test_one_copy_of_weights_and_a_full_precision_momentum_encoder():
    model = small_moco()
    before = {name: id(p) for name, p in model.named_parameters()}
    keys = list(model.state_dict())
    Ssql(load_config(None, ENABLED), model)
    assert {name: id(p) for name, p in model.named_parameters()} == before and list(model.state_dict()) == keys
    assert isinstance(model.encoder_q.backbone.conv1, QuantConv2d)
    assert not any(isinstance(m, QuantConv2d) for m in model.encoder_k.modules())


def test_a_few_steps_train_and_resume_exactly(quick_overrides):
    trainer = Trainer(load_config(None, quick_overrides + ENABLED))
    batches = iter(trainer.parts.batches)
    losses = [float(trainer.train_step(next(batches))["loss"]) for _ in range(2)]
    assert all(math.isfinite(loss) for loss in losses)
    trainer.close()
    assert_resume_is_exact(quick_overrides + ENABLED)  # each step's bit-widths redrawn alike


def test_the_quantized_query_is_one_more_trained_query():
    plain = units_per_image(load_config(None, []), selecting=False)
    assert units_per_image(load_config(None, ENABLED), selecting=False) == plain + 3 == 7


@pytest.mark.parametrize(("overrides", "message"), [
    (["ssql.weight_bits=[1, 8]"], r"'ssql.weight_bits' must be in \[2, 8\]; got \[1, 8\]"),
    (["ssql.act_bits=[6, 4]"], r"'ssql.act_bits' must be \[low, high\] with low <= high; got \[6, 4\]"),
    (["ssql.act_bits=[4]"], r"'ssql.act_bits' must be \[low, high\] with low <= high; got \[4\]"),
    (["ssql.weight=0"], "'ssql.weight' must be > 0; got 0.0"),
    (["objective=byol"], "'ssql.enabled' needs objective=contrastive"),
])
def test_config_errors_name_the_keys(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*ENABLED, *overrides])
