"""The supervised reference: the same backbone, views and optimiser trained with labels."""

import json
import math

import pytest
import torch

from mochi_hvs import supervised
from mochi_hvs.config import ConfigError, load_config
from mochi_hvs.data.datasets import labelled_splits
from mochi_hvs.data.loader import eval_loader
from mochi_hvs.evaluation.features import extract_features
from mochi_hvs.objectives.supervised import classifier_network
from mochi_hvs.pretrain import report
from mochi_hvs.train import Trainer
from mochi_hvs.weights.loader import read_backbone_state


def test_the_supervised_reference_learns_to_classify(tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["objective=supervised", "optim.epochs=6", "optim.lr=0.01",
                                              "eval.knn_baseline=false"])
    trainer = Trainer(cfg)
    summary = trainer.fit()
    assert summary["objective"] == "supervised" and "pixels_knn_top1" in summary
    _, test = labelled_splits("fashion_mnist", None, None, 500, seed=0)
    network = classifier_network(trainer.model).eval()
    with torch.no_grad():
        logits = torch.cat([network(batch.images) for batch in eval_loader(test, cfg.data, 100, workers=0)])
    accuracy = (logits.argmax(dim=1) == torch.from_numpy(test.labels)).float().mean().item()
    # Above chance (0.1 over 10 classes) by 5 binomial standard deviations of 500 test images: a network that did
    # not learn passes with probability under 1e-6. What it reaches depends on the kernels and the thread count
    # (128 labelled images, 48 steps of 16: from 0.28 to about 0.42 seen).
    chance = 0.1
    assert accuracy > chance + 5 * math.sqrt(chance * (1 - chance) / len(test.labels))
    lines = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [line["train/loss"] for line in lines if "train/loss" in line]
    assert losses[-1] < losses[0] and int(trainer.model.queue.pointer) == 0  # nothing is enqueued
    state, meta = read_backbone_state(cfg.run_dir / "last.pth")  # evaluators read it as any checkpoint
    assert meta.arch == "resnet18" and "fc.weight" not in state


def test_supervised_takes_no_method_and_needs_labels(tiny_overrides):
    with pytest.raises(ConfigError, match="'hvs.enabled' needs objective=contrastive"):
        load_config(None, ["objective=supervised", "hvs.enabled=true"])
    with pytest.raises(ConfigError, match="'objective' must be one of .*supervised"):
        load_config(None, ["objective=simclr"])


def test_the_supervised_command_names_its_run_after_the_recipe(tiny_overrides, monkeypatch):
    seen = []
    monkeypatch.setattr("mochi_hvs.pretrain.main", lambda argv: seen.append(argv) or 0)
    assert supervised.main(["--config", "configs/moco_v2.yaml", "--set", "optim.epochs=1"]) == 0
    assert seen[-1][-2:] == ["objective=supervised", "name=moco_v2_supervised"]
    assert supervised.main(["--config", "configs/moco_v2.yaml", "--set", "name=mine"]) == 0
    assert seen[-1][-1] == "objective=supervised"


def test_end_of_run_table_reads_the_trained_backbone_against_its_start_and_the_pixels():
    table = report({"steps": 10, "train_seconds": 5.0, "knn_k": 200, "knn_top1": 80.0, "init_knn_top1": 73.15,
                    "pixels_knn_top1": 79.5, "init_from": None, "objective": "contrastive"})
    assert table.splitlines()[2:] == [f"MoCo-pretrained{80.0:>24.2f}%", f"random init{73.15:>28.2f}%",
                                      f"raw pixels{79.5:>29.2f}%"]
    assert report({"steps": 1, "train_seconds": 1.0, "knn_k": 20, "knn_top1": 90.0,
                   "objective": "supervised"}).splitlines()[2].startswith("supervised")


def test_pixel_features_through_the_monitor_match_an_independent_knn(tiny_overrides):
    import numpy as np

    from mochi_hvs.evaluation.pixels import pixel_model

    cfg = load_config(None, tiny_overrides)
    bank, test = labelled_splits("fashion_mnist", None, 200, 100, seed=0)
    features, labels = extract_features(pixel_model(bank, cfg.data.mean, cfg.data.std),
                                        eval_loader(bank, cfg.data, 100, workers=0), torch.device("cpu"))
    raw = bank.array.reshape(len(bank), -1).astype(np.float64) / 255.0
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    assert np.allclose(features.numpy(), expected, atol=1e-5) and np.array_equal(labels.numpy(), bank.labels)
