import math

import pytest
import torch

from mochi_hvs import pretrain
from mochi_hvs.config import Config, ConfigError, load_config, to_dict
from mochi_hvs.train import Trainer
from mochi_hvs.weights.checkpoint import load_checkpoint
from mochi_hvs.weights.resume_changes import ABSENT, APPLY, REFUSE, Change, check_resume_changes, config_changes, policy


@pytest.mark.parametrize(("key", "expected"), [
    ("optim.lr", APPLY), ("optim.epochs", APPLY), ("optim.batch_size", REFUSE), ("moco.temperature", APPLY),
    ("moco.queue_size", REFUSE), ("moco.symmetric", REFUSE), ("model.arch", REFUSE), ("model.init_from", REFUSE),
    ("data.root", APPLY), ("data.train_subset", REFUSE), ("mochi.path", APPLY), ("mochi.num_hard", REFUSE),
    ("hvs.num_views", REFUSE), ("eval.knn_k", APPLY), ("seed", REFUSE), ("device", APPLY), ("name", APPLY),
    ("future.setting", REFUSE), ("data.unknown_flag", REFUSE),
])
def test_policy_takes_the_longest_matching_entry_and_refuses_what_it_does_not_know(key, expected):
    assert policy(key) == expected


def test_config_changes_lists_differing_keys_with_defaults_for_keys_the_checkpoint_lacks():
    stored = to_dict(Config())
    stored["optim"]["lr"] = 0.03
    del stored["eval"]["knn_fp16"]  # a key added after the checkpoint was written: its default
    stored["moco"]["legacy"] = 1  # a key this version no longer has
    cfg = Config()
    cfg.moco.queue_size = 1024
    changes = config_changes(stored, cfg)
    assert changes == [Change("moco.queue_size", 4096, 1024), Change("optim.lr", 0.03, 0.06),
                       Change("moco.legacy", 1, ABSENT)]
    assert [change.applied for change in changes] == [False, True, False]
    assert config_changes(to_dict(cfg), cfg) == []


def test_refused_changes_are_named_together_in_one_line():
    changes = [Change("optim.lr", 0.06, 0.5), Change("seed", 0, 1), Change("moco.queue_size", 64, 128)]
    with pytest.raises(ConfigError) as err:
        check_resume_changes(changes, "runs/x/last.pth")
    message = str(err.value)
    assert "\n" not in message and "optim.lr" not in message
    assert "--resume runs/x/last.pth" in message and "seed 0 -> 1; moco.queue_size 64 -> 128" in message
    check_resume_changes(changes[:1], "runs/x/last.pth")  # applied changes alone pass


# ------------------------------------------------------------------------------------------- in a resumed run

@pytest.fixture
def one_step_checkpoint(quick_overrides):
    """A run of one step (quick config) and its checkpoint."""
    trainer = Trainer(load_config(None, quick_overrides + ["optim.steps=1"]))
    trainer.train()
    trainer.close()
    return trainer.state.checkpoint_path


def test_a_structural_change_on_resume_is_one_error_line_naming_the_keys(quick_overrides, one_step_checkpoint,
                                                                         capsys):
    before = sorted(p.name for p in one_step_checkpoint.parent.iterdir())
    data = one_step_checkpoint.read_bytes()
    capsys.readouterr()
    status = pretrain.main(["--set", *quick_overrides, "optim.steps=1", "moco.queue_size=128", "model.feature_dim=64",
                            "--resume", "auto"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: --resume {one_step_checkpoint}: these settings differ")
    assert "model.feature_dim 128 -> 64; moco.queue_size 64 -> 128" in err[0]
    assert one_step_checkpoint.read_bytes() == data
    assert sorted(p.name for p in one_step_checkpoint.parent.iterdir()) == before  # nothing written


@pytest.mark.parametrize("change, message", [
    ("seed=1", "seed 0 -> 1"), ("optim.name=adamw", "optim.name 'sgd' -> 'adamw'"),
])
def test_a_seed_or_optimiser_change_on_resume_is_refused(quick_overrides, one_step_checkpoint, change, message):
    with pytest.raises(ConfigError, match=message):
        Trainer(load_config(None, quick_overrides + ["optim.steps=1", change]), resume=one_step_checkpoint)


def test_a_new_learning_rate_and_sgd_momentum_are_really_used_after_resume_and_stored(quick_overrides,
                                                                                      one_step_checkpoint, capsys):
    cfg = load_config(None, quick_overrides + ["optim.steps=2", "optim.lr=0.5", "optim.momentum=0.8"])
    capsys.readouterr()
    resumed = Trainer(cfg, resume=one_step_checkpoint)
    err = capsys.readouterr().err
    for line in ("resume: optim.lr 0.06 -> 0.5 (applied)", "resume: optim.momentum 0.9 -> 0.8 (applied)",
                 "resume: optim.steps 1 -> 2 (applied)"):
        assert line in err
    group = resumed.parts.optimizer.param_groups[0]
    cosine_at_1_of_2 = 0.5 * (1 + math.cos(math.pi * 1 / 2))  # the cosine schedule of the extended run at step 1
    assert group["lr"] == 0.5 * cosine_at_1_of_2 and group["momentum"] == 0.8
    assert resumed.parts.scheduler.base_lrs == [0.5]
    used = []
    resumed.parts.optimizer.register_step_pre_hook(
        lambda optimizer, *_: used.append((optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["momentum"])))
    resumed.train()
    resumed.close()
    assert used == [(0.5 * cosine_at_1_of_2, 0.8)]
    stored = load_checkpoint(resumed.state.checkpoint_path)
    assert (stored["config"]["optim"]["lr"], stored["config"]["optim"]["momentum"]) == (0.5, 0.8)
    assert stored["optimizer"]["param_groups"][0]["initial_lr"] == 0.5
    assert stored["scheduler"]["base_lrs"] == [0.5]


def test_an_unchanged_resume_prints_no_change_and_keeps_the_stored_optimiser_state(quick_overrides,
                                                                                   one_step_checkpoint, capsys):
    capsys.readouterr()
    resumed = Trainer(load_config(None, quick_overrides + ["optim.steps=1"]), resume=one_step_checkpoint)
    assert "resume: " not in capsys.readouterr().err
    stored = load_checkpoint(one_step_checkpoint)
    assert resumed.parts.optimizer.param_groups[0]["lr"] == stored["optimizer"]["param_groups"][0]["lr"]
    restored = resumed.parts.optimizer.state_dict()["state"]
    for key, value in stored["optimizer"]["state"].items():
        assert torch.equal(restored[key]["momentum_buffer"], value["momentum_buffer"])
    resumed.close()
