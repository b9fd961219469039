"""The low-bit recipes learn on real data: a short BURN run lifts the binary ResNet-18 above its random
initialisation on kNN, and a short SSQL run lifts the ResNet-18 quantized at w2a4 above its random initialisation at
w2a4.

Deselected by default (`-m learning` runs them), as the default recipe's own learning check: on this dataset a random
ResNet-18 is a strong kNN baseline, and a run short enough for the suite (a few hundred steps of 64 images on 2
CPU cores, 10-15 minutes each on a shared 2-core machine) shows at most a few points above it; the studies
(configs/studies/compact_*.yaml) measure the recipes at their full budgets."""

from __future__ import annotations

import pytest

from mochi_hvs.config import load_config
from mochi_hvs.train import Trainer

SHORT = ["data.train_subset=2048", "optim.batch_size=64", "moco.queue_size=512", "model.bn_splits=4", "log_every=10",
         "eval.knn_every=0", "eval.knn_train_subset=1000", "eval.knn_test_subset=2000", "eval.batch_size=250",
         "eval.knn_k=20", "eval.knn_pixels=false"]


def short_run(recipe: str, tmp_path, *overrides: str) -> dict:
    """The summary of a short run of `recipe` on 2,048 Fashion-MNIST images."""
    cfg = load_config(recipe, [*SHORT, f"output_dir={tmp_path}", "name=short", *overrides])
    return Trainer(cfg).fit()


@pytest.mark.slow
@pytest.mark.learning
def test_burn_lifts_the_binary_network_above_its_random_init(plain_run, tmp_path):
    summary = short_run("configs/compact/burn.yaml", tmp_path, "optim.steps=150",
                        f"burn.teacher={plain_run.cfg.run_dir / 'last.pth'}")
    assert summary["knn_top1"] > summary["init_knn_top1"], summary


@pytest.mark.slow
@pytest.mark.learning
def test_ssql_lifts_the_w2a4_network_above_its_random_init(tmp_path):
    summary = short_run("configs/compact/ssql.yaml", tmp_path, "optim.steps=150",
                        "model.arch_kwargs={weight_bits: 2, act_bits: 4}")
    assert summary["knn_top1"] > summary["init_knn_top1"], summary
