import math

import pytest
import torch
import torch.nn as nn

from mochi_hvs.config.evaluators import LinearSettings, SemisupSettings
from mochi_hvs.evaluation.classifier_training import changed_tensors, snapshot
from mochi_hvs.evaluation.linear import BackboneChanged, LinearProbe
from mochi_hvs.evaluation.semisup import SemisupFinetune
from mochi_hvs.models.backbone import build_backbone

CPU = torch.device("cpu")


def small_stem_backbone():
    torch.manual_seed(0)
    return build_backbone("resnet18")


@pytest.mark.parametrize("mode", ["classic", "lbfgs"])
def test_linear_probe_leaves_the_backbone_unchanged(tiny_cfg, mode):
    backbone, width = small_stem_backbone()
    backbone.train()  # the probe must switch BatchNorm to eval itself
    before = snapshot(backbone)
    settings = LinearSettings(mode=mode, epochs=1, batch_size=64, train_subset=300, test_subset=200)
    metrics = LinearProbe(tiny_cfg, settings, CPU).evaluate(backbone, width)
    assert changed_tensors(backbone, before) == []
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 100
    if mode == "lbfgs":  # the converged probe beats chance (10%) even on random-init features, and says how it fit
        assert metrics["top1"] > 20 and metrics["converged"] and metrics["l2"] in settings.l2_grid


def test_sklearn_probe_beats_chance(tiny_cfg):
    backbone, width = small_stem_backbone()
    settings = LinearSettings(mode="sklearn", train_subset=300, test_subset=200, sklearn_max_iter=200)
    assert LinearProbe(tiny_cfg, settings, CPU).evaluate(backbone, width)["top1"] > 20


class Drifting(nn.Module):
    """A backbone that (wrongly) changes its own weights when called."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 28 * 28, 8))

    def forward(self, x):
        with torch.no_grad():
            self.net[1].bias.add_(1.0)
        return self.net(x)


def test_the_sanity_check_catches_a_changed_backbone(tiny_cfg):
    settings = LinearSettings(train_subset=50, test_subset=20)
    with pytest.raises(BackboneChanged, match="net.1.bias"):
        LinearProbe(tiny_cfg, settings, CPU).evaluate(Drifting(), 8)


def test_semisup_finetunes_backbone_and_head_on_the_labelled_subset(tiny_cfg):
    backbone, width = small_stem_backbone()
    before = snapshot(backbone)
    settings = SemisupSettings(labels_per_class=4, epochs=1, batch_size=20, test_subset=100)
    finetune = SemisupFinetune(tiny_cfg, settings, CPU)
    metrics = finetune.evaluate(backbone, width)
    assert metrics["labelled_images"] == 40 and len(finetune.train) == 40
    assert changed_tensors(backbone, before)  # fine-tuning, unlike the probe, trains the backbone
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 100


def test_semisup_head_and_backbone_learning_rates_are_separate(tiny_cfg):
    backbone, width = small_stem_backbone()
    before = snapshot(backbone)
    settings = SemisupSettings(labels_per_class=4, epochs=1, lr_backbone=0.0, test_subset=50)
    SemisupFinetune(tiny_cfg, settings, CPU).evaluate(backbone, width)
    changed = changed_tensors(backbone, before)
    assert changed and all("running" in k or "num_batches" in k for k in changed)  # only BatchNorm statistics


def test_semisup_defaults_warm_up_over_the_first_epoch_then_decay_by_cosine(tiny_cfg, monkeypatch):
    """The learning rates the fine-tuning really steps with: linear warm-up over epoch 1, cosine to 0 after it,
    the backbone at lr_backbone / lr_head of the head throughout."""
    import mochi_hvs.evaluation.semisup as semisup_module

    stepped: list[tuple[float, float]] = []  # (backbone lr, head lr) at every optimiser step
    build = semisup_module.sgd_with_schedule

    def recording(*args, **kwargs):
        optimizer, scheduler = build(*args, **kwargs)
        optimizer.register_step_pre_hook(
            lambda opt, *_: stepped.append((opt.param_groups[0]["lr"], opt.param_groups[1]["lr"])))
        return optimizer, scheduler

    monkeypatch.setattr(semisup_module, "sgd_with_schedule", recording)
    settings = SemisupSettings(labels_per_class=8, batch_size=16, epochs=2, test_subset=20)  # 80 images: 5 steps/epoch
    assert (settings.lr_head, settings.warmup_epochs, settings.schedule) == (0.05, 1.0, "cosine")
    backbone, width = small_stem_backbone()
    SemisupFinetune(tiny_cfg, settings, CPU).evaluate(backbone, width)

    per_epoch, total = 5, 10
    assert len(stepped) == total
    head = [h for _, h in stepped]
    assert head[:per_epoch] == pytest.approx([0.05 * (i + 1) / per_epoch for i in range(per_epoch)])
    cosine = [0.05 * 0.5 * (1 + math.cos(math.pi * i / (total - per_epoch))) for i in range(total - per_epoch)]
    assert head[per_epoch:] == pytest.approx(cosine)
    assert [b for b, _ in stepped] == pytest.approx([h * 0.01 / 0.05 for h in head])


def test_a_new_head_is_drawn_from_its_seed_alone():
    from mochi_hvs.evaluation.linear import new_head

    torch.manual_seed(123)  # the global random state plays no part
    first = new_head(16, 4, CPU, seed=0)
    torch.manual_seed(456)
    again, other = new_head(16, 4, CPU, seed=0), new_head(16, 4, CPU, seed=1)
    assert torch.equal(first.weight, again.weight) and not torch.equal(first.weight, other.weight)
    assert float(first.weight.detach().std()) == pytest.approx(0.01, rel=0.3) and not first.bias.any()
