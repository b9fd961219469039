import math

import pytest

from mochi_hvs.config import load_config
from mochi_hvs.schedule import lr_multiplier, momentum_at
from mochi_hvs.train.build import base_lr


def test_linear_warm_up_reaches_the_base_lr_at_its_last_step():
    assert [lr_multiplier(s, 100, 4, "cosine") for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_multiplier(4, 100, 4, "cosine") == 1.0  # cosine starts from the top after the warm-up


def test_cosine_falls_from_one_to_zero_over_the_steps_after_warm_up():
    total, warmup = 110, 10
    assert lr_multiplier(warmup + 50, total, warmup, "cosine") == pytest.approx(0.5)
    assert lr_multiplier(warmup + 25, total, warmup, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_multiplier(total, total, warmup, "cosine") == pytest.approx(0.0)
    assert lr_multiplier(total + 5, total, warmup, "cosine") == pytest.approx(0.0)  # clamped past the end


def test_step_decay_divides_by_ten_at_each_milestone():
    values = [lr_multiplier(s, 100, 0, "step", [30, 60]) for s in (0, 29, 30, 59, 60, 99)]
    assert values == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert lr_multiplier(50, 100, 0, "constant") == 1.0


def test_unknown_schedules_are_refused():
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_multiplier(0, 10, 0, "linear")
    with pytest.raises(ValueError, match="unknown momentum schedule"):
        momentum_at(0, 10, 0.99, "linear")


def test_key_encoder_momentum_constant_or_cosine_towards_one():
    assert momentum_at(7, 100, 0.99, "constant") == 0.99
    assert momentum_at(0, 100, 0.99, "cosine") == pytest.approx(0.99)
    assert momentum_at(50, 100, 0.99, "cosine") == pytest.approx(0.995)
    assert momentum_at(100, 100, 0.99, "cosine") == pytest.approx(1.0)


def test_linear_lr_scaling_rule():
    assert base_lr(load_config(None, ["optim.lr=0.03", "optim.batch_size=512", "optim.base_batch_size=256",
                                      "moco.queue_size=4096"])) == pytest.approx(0.06)
    assert base_lr(load_config(None, ["optim.lr=0.03", "optim.batch_size=512", "moco.queue_size=4096"])) == 0.03
