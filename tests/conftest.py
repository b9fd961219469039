"""Shared fixtures: a small, fast training configuration on the real embedded dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from weight_files import our_checkpoint

from mochi_hvs.config import load_config
from mochi_hvs.train import Trainer


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` need a CUDA GPU: where torch sees none they are still collected, and skipped."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def tiny_settings(output_dir: Path) -> list[str]:
    """A few seconds of real MoCo training: 128 Fashion-MNIST images, batch 16 (8 steps per epoch), ResNet-18 at
    28 px."""
    return [
        f"output_dir={output_dir}", "name=tiny", "data.train_subset=128", "optim.batch_size=16",
        "moco.queue_size=128", "model.bn_splits=2", "optim.epochs=2", "log_every=2",
        "eval.knn_train_subset=200", "eval.knn_test_subset=100", "eval.batch_size=100",
    ]


@pytest.fixture
def tiny_overrides(tmp_path) -> list[str]:
    """The tiny run (tiny_settings) in the test's own folder."""
    return tiny_settings(tmp_path)


@pytest.fixture
def tiny_cfg(tiny_overrides):
    return load_config(None, tiny_overrides)


QUICK = ["data.train_subset=64", "moco.queue_size=64"]  # the tiny run on half its images: 4 steps per epoch


@pytest.fixture
def quick_overrides(tiny_overrides) -> list[str]:
    """The tiny run on 64 images, 4 steps of 16 per epoch (runs, resumes and their logs)."""
    return tiny_overrides + QUICK


@pytest.fixture(scope="session")
def plain_run(tmp_path_factory) -> Trainer:
    """The quick run of plain MoCo-v2 (quick_overrides unchanged, 2 epochs of 4 steps), trained once for the
    session: the tests that hold a method's run against it, or read its checkpoint, only read it."""
    trainer = Trainer(load_config(None, tiny_settings(tmp_path_factory.mktemp("plain")) + QUICK))
    trainer.train()
    trainer.close()
    return trainer


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A freshly built MoCo training checkpoint (ResNet-18, Fashion-MNIST normalisation) for the evaluator commands,
    written once for the session: the evaluators only read it."""
    cfg = load_config(None, ["data.mean=[0.286,0.286,0.286]", "data.std=[0.353,0.353,0.353]", "optim.batch_size=32",
                             "moco.queue_size=64", "model.bn_splits=4"])
    path = tmp_path_factory.mktemp("checkpoint") / "last.pth"
    torch.manual_seed(0)  # the weights every test saw when it was built per test (after the autouse seed)
    our_checkpoint(path, cfg)
    return path
