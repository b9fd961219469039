"""Settings that are easy to break silently: each reaches the part of the run it configures."""

import pytest
import torch

from mochi_hvs.config import load_config
from mochi_hvs.distributed import DistEnv
from mochi_hvs.retrieval import FaissTopK, TorchTopK
from mochi_hvs.schedule import momentum_at
from mochi_hvs.train import Trainer
from mochi_hvs.train.build import build_model


def test_sync_bn_makes_every_batch_norm_synchronised_under_several_processes():
    cfg = load_config(None, ["model.sync_bn=true", "model.bn_splits=1"])
    distributed = build_model(cfg, DistEnv(rank=0, world_size=2))
    norms = [m for m in distributed.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    alone = build_model(cfg, DistEnv())  # one process: nothing to synchronise with
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in alone.modules())


def test_bn_splits_are_shared_out_over_the_processes():
    cfg = load_config(None, ["model.bn_splits=8"])
    model = build_model(cfg, DistEnv(rank=1, world_size=4))
    splits = {m.num_splits for m in model.modules() if hasattr(m, "num_splits")}
    assert splits == {2}


def test_momentum_schedule_sets_the_key_encoder_momentum_of_each_step(tiny_overrides):
    trainer = Trainer(load_config(None, tiny_overrides + ["moco.momentum_schedule=cosine", "moco.momentum=0.9"]))
    batches = iter(trainer.parts.batches)
    seen = []
    for step in range(3):
        trainer.position.global_step = step
        seen.append(float(trainer.train_step(next(batches))["momentum"]))
    trainer.close()
    total = trainer.parts.total_steps
    assert seen == pytest.approx([momentum_at(s, total, 0.9, "cosine") for s in range(3)])
    assert seen[0] < seen[1] < seen[2]


def test_base_batch_size_scales_the_optimiser_lr(tiny_overrides):
    trainer = Trainer(load_config(None, tiny_overrides + ["optim.lr=0.1", "optim.base_batch_size=64",
                                                          "optim.schedule=constant"]))
    assert trainer.parts.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 16 / 64)
    trainer.close()


def test_lr_milestones_are_epochs_of_the_step_schedule(tiny_overrides):
    trainer = Trainer(load_config(None, tiny_overrides + ["optim.schedule=step", "optim.lr_milestones=[1]",
                                                          "optim.lr=0.1"]))
    multiplier, per_epoch = trainer.parts.scheduler.lr_lambdas[0], trainer.parts.steps_per_epoch
    trainer.close()
    assert multiplier(per_epoch - 1) == 1.0 and multiplier(per_epoch) == pytest.approx(0.1)


def test_compile_compiles_both_encoders(tiny_overrides, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    trainer = Trainer(load_config(None, tiny_overrides + ["compile=true"]))
    assert compiled == [trainer.model.encoder_q, trainer.model.encoder_k]
    trainer.close()


@pytest.mark.parametrize("extra, backend", [([], TorchTopK), (["mochi.retrieval=faiss"], FaissTopK)])
def test_mochi_retrieval_and_path_settings_reach_the_mixer(tiny_overrides, extra, backend):
    if backend is FaissTopK:
        pytest.importorskip("faiss")
    over = ["mochi.enabled=true", "mochi.num_hard=32", "mochi.num_mix=16", "mochi.num_query_mix=8",
            "mochi.warmup_epochs=0", "mochi.faiss_index=ivf", "mochi.faiss_nlist=16", "mochi.faiss_nprobe=4",
            "mochi.path=reference", *extra]
    trainer = Trainer(load_config(None, tiny_overrides + over))
    (mochi,) = trainer.parts.methods
    retrieval = mochi.mixer.retrieval
    assert isinstance(retrieval, backend) and mochi.mixer.reference
    if backend is FaissTopK:
        assert (retrieval.kind, retrieval.nlist, retrieval.nprobe) == ("ivf", 16, 4)
    metrics = trainer.train_step(next(iter(trainer.parts.batches)))
    assert torch.isfinite(metrics["loss"]) and "mochi/logit_synthetic" in metrics
    trainer.close()
