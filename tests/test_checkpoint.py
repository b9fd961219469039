import json

import pytest
import torch

from mochi_hvs.checkpoint import CheckpointError, load_checkpoint, resolve_resume, save_atomic
from mochi_hvs.config import load_config
from mochi_hvs.engine import Interrupted, Trainer, TrainingDiverged


def test_atomic_save_leaves_no_temporary_and_replaces(tmp_path):
    path = tmp_path / "x.pth"
    save_atomic({"format": "mochi_hvs.checkpoint", "a": torch.ones(2)}, path)
    save_atomic({"format": "mochi_hvs.checkpoint", "a": torch.zeros(2)}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["x.pth"]
    assert torch.equal(load_checkpoint(path)["a"], torch.zeros(2))


def test_failed_save_keeps_the_previous_file(tmp_path):
    path = tmp_path / "x.pth"
    save_atomic({"format": "mochi_hvs.checkpoint", "v": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_atomic({"bad": Unpicklable()}, path)
    assert load_checkpoint(path)["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["x.pth"]


def test_truncated_and_garbage_files_give_clear_errors(tmp_path):
    path = tmp_path / "x.pth"
    save_atomic({"format": "mochi_hvs.checkpoint", "w": torch.randn(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pth")
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="not a mochi_hvs training checkpoint"):
        load_checkpoint(path)


def test_resolve_resume(tmp_path):
    assert resolve_resume(None, tmp_path) is None
    assert resolve_resume("auto", tmp_path) is None
    (tmp_path / "last.pth").write_bytes(b"x")
    assert resolve_resume("auto", tmp_path) == tmp_path / "last.pth"
    with pytest.raises(CheckpointError):
        resolve_resume(str(tmp_path / "nope.pth"), tmp_path)


def weights(trainer):
    state = trainer.model.state_dict()
    return {k: v.clone() for k, v in state.items()}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("augment_on", ["device", "cpu"])
def test_resume_after_an_epoch_is_exact(tiny_overrides, tmp_path, augment_on):
    over = tiny_overrides + [f"data.augment_on={augment_on}", "data.workers=0"]
    straight = Trainer(load_config(None, over + ["name=straight"]))
    straight.train()
    first = Trainer(load_config(None, over + ["name=split"]))
    run_epoch = first._run_epoch

    def one_epoch_then_crash():
        run_epoch()
        raise SystemExit("killed after the end-of-epoch checkpoint")

    first._run_epoch = one_epoch_then_crash
    with pytest.raises(SystemExit):
        first.train()
    second = Trainer(load_config(None, over + ["name=split"]), resume=tmp_path / "split" / "last.pth")
    assert second.position.epoch == 1 and second.position.global_step == 8
    second.train()
    assert_same_state(weights(straight), weights(second))
    assert torch.equal(straight.model.queue.features, second.model.queue.features)
    states = zip(straight.optimizer.state_dict()["state"].values(), second.optimizer.state_dict()["state"].values(),
                 strict=True)
    for a, b in states:
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])


def test_interrupt_mid_epoch_then_resume_is_exact(tiny_overrides, tmp_path):
    cfg = load_config(None, tiny_overrides + ["optim.epochs=1", "optim.warmup_epochs=0.5"])
    straight = Trainer(load_config(None, tiny_overrides + ["optim.epochs=1", "optim.warmup_epochs=0.5", "name=ref"]))
    straight.train()

    interrupted = Trainer(cfg)
    real_step = interrupted.train_step
    calls = []

    def step_then_stop(batch):
        out = real_step(batch)
        calls.append(1)
        if len(calls) == 3:
            interrupted.request_stop()  # what SIGINT/SIGTERM does
        return out

    interrupted.train_step = step_then_stop
    with pytest.raises(Interrupted, match="--resume auto"):
        interrupted.train()
    resumed = Trainer(cfg, resume=resolve_resume("auto", cfg.run_dir))
    assert (resumed.position.epoch, resumed.position.batch_in_epoch) == (0, 3)
    resumed.train()
    assert resumed.position.global_step == 8
    assert_same_state(weights(straight), weights(resumed))
    assert straight.scheduler.state_dict()["last_epoch"] == resumed.scheduler.state_dict()["last_epoch"] == 8


def test_checkpoint_holds_everything_needed(tiny_cfg):
    trainer = Trainer(tiny_cfg)
    trainer.train()
    state = load_checkpoint(trainer.checkpoint_path)
    for key in ("model", "optimizer", "scheduler", "scaler", "epoch", "batch_in_epoch", "global_step", "rng", "config"):
        assert key in state, key
    assert "queue.features" in state["model"] and "queue.pointer" in state["model"]
    assert any(k.startswith("encoder_k.") for k in state["model"])
    assert int(state["model"]["queue.pointer"]) == (16 * 32) % 128
    torch.load(trainer.checkpoint_path, weights_only=True)  # safe-loadable content only


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["optim.epochs=2"])
    trainer = Trainer(cfg)
    real_step = trainer.train_step

    def poisoned(batch):
        out = real_step(batch)
        if trainer.position.global_step == 10:  # step index 10 (the 3rd step of epoch 2)
            out["loss"] = torch.tensor(float("nan"))
        return out

    trainer.train_step = poisoned
    with pytest.raises(TrainingDiverged, match="step 10") as err:
        trainer.train()
    assert str(trainer.checkpoint_path) in str(err.value)
    kept = load_checkpoint(trainer.checkpoint_path)
    assert kept["global_step"] == 8 and kept["epoch"] == 1


def test_metric_window_means_nan_handling_and_first_non_finite_step():
    from mochi_hvs.tracking import MetricWindow

    window = MetricWindow(first_step=10)
    for loss in (1.0, 3.0):
        window.add({"loss": torch.tensor(loss), "lr": torch.tensor(0.1), "oracle": torch.tensor(float("nan"))}, 0.0, 4)
    means, first_bad = window.reduce()
    assert means["loss"] == 2.0 and abs(means["lr"] - 0.1) < 1e-7 and first_bad is None
    assert means["oracle"] != means["oracle"]  # NaN: a metric undefined at every step stays undefined
    assert means["images_per_s"] > 0
    window = MetricWindow(first_step=10)
    for loss in (1.0, float("inf")):
        window.add({"loss": torch.tensor(loss)}, 0.0, 4)
    assert window.reduce()[1] == 11


def logged_steps(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line["step"] for line in lines], lines


def tensorboard_losses(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars("train/loss")]


def test_a_resumed_run_supersedes_the_logs_written_after_its_checkpoint(quick_overrides):
    cfg = load_config(None, quick_overrides + ["optim.epochs=2"])  # 4 steps per epoch, logged every 2
    crashing = Trainer(cfg)
    real_step = crashing.train_step

    def crash_in_the_last_step(batch):
        if crashing.position.global_step == 7:  # steps 5-7 ran (step 6 logged) after the checkpoint at step 4
            raise SystemExit("killed")
        return real_step(batch)

    crashing.train_step = crash_in_the_last_step
    with pytest.raises(SystemExit):
        crashing.train()
    steps, before = logged_steps(cfg.run_dir)
    assert steps == [2, 4, 6] and load_checkpoint(crashing.checkpoint_path)["global_step"] == 4
    resumed = Trainer(cfg, resume=crashing.checkpoint_path)
    resumed.train()
    resumed.close()
    steps, after = logged_steps(cfg.run_dir)
    assert steps == [2, 4, 6, 8]  # each step of a straight run once
    assert after[:2] == before[:2]  # the history up to the checkpoint is kept as it was
    losses = tensorboard_losses(cfg.run_dir)
    assert [step for step, _ in losses] == [2, 4, 6, 8]
    assert [value for _, value in losses] == [float(torch.tensor(line["train/loss"])) for line in after]


def test_a_checkpoint_every_that_divides_the_epoch_saves_the_epoch_end_once(quick_overrides):
    trainer = Trainer(load_config(None, quick_overrides + ["optim.epochs=1", "checkpoint_every=2"]))
    real_save = trainer.save
    saved = []

    def record_save():
        saved.append((trainer.position.global_step, trainer.position.epoch, trainer.position.batch_in_epoch))
        return real_save()

    trainer.save = record_save
    trainer.train()
    trainer.close()
    assert saved == [(2, 0, 2), (4, 1, 0)]
