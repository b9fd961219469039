import errno
import json
import math
import os
import re
import stat

import pytest
import torch
from weight_files import small_training_checkpoint

from mochi_hvs.config import load_config
from mochi_hvs.errors import Interrupted, TrainingDiverged
from mochi_hvs.train import Trainer
from mochi_hvs.weights.atomic import NoSpaceError, save_atomic
from mochi_hvs.weights.checkpoint import FORMAT, load_checkpoint, load_file, nonfinite_entries, resolve_resume
from mochi_hvs.weights.errors import CheckpointError
from mochi_hvs.weights.loader import read_backbone_state


def test_atomic_save_leaves_no_temporary_and_replaces(tmp_path):
    path = tmp_path / "x.pth"
    save_atomic({"a": torch.ones(2)}, path)
    save_atomic({"a": torch.zeros(2)}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["x.pth"]
    assert torch.equal(load_file(path)["a"], torch.zeros(2))


def test_failed_save_keeps_the_previous_file(tmp_path):
    path = tmp_path / "x.pth"
    save_atomic({"v": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_atomic({"bad": Unpicklable()}, path)
    assert load_file(path)["v"] == 1
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


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_the_file_gets_the_usual_mode_and_its_folder_is_synced_after_the_rename(tmp_path, monkeypatch, umask):
    path = tmp_path / "x.pth"
    folder_syncs = []  # for each fsync of a folder: whether the file had been renamed into place by then
    real_fsync = os.fsync

    def recording_fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            folder_syncs.append(path.exists())
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    previous = os.umask(umask)
    try:
        save_atomic({"v": 1}, path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # what open(path, "wb") would have given
    assert folder_syncs == [True]


SHORT_WRITE = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"  # torch's zip writer, disk full


def full_disk(*args):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), RuntimeError(SHORT_WRITE)])
def test_a_full_disk_is_a_checkpoint_error_that_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, failure):
    path = tmp_path / "x.pth"
    save_atomic({"v": 1}, path)
    before = path.read_bytes()

    def write_some_then_fail(obj, handle):
        handle.write(b"part of a checkpoint")
        raise failure

    monkeypatch.setattr(torch, "save", write_some_then_fail)
    with pytest.raises(NoSpaceError, match=f"^no space left on {re.escape(str(tmp_path))} while writing x.pth$"):
        save_atomic({"v": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.pth"]


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
def test_resume_after_an_epoch_is_exact(quick_overrides, tmp_path, augment_on):
    over = quick_overrides + [f"data.augment_on={augment_on}", "data.workers=0", "data.train_subset=32"]  # 2 epochs
    # of 2 steps
    straight = Trainer(load_config(None, over + ["name=straight"]))
    straight.train()
    first = Trainer(load_config(None, over + ["name=split"]))
    run_epoch = first._run_epoch

    def one_epoch_then_crash(estimate):
        run_epoch(estimate)
        raise SystemExit("killed after the end-of-epoch checkpoint")

    first._run_epoch = one_epoch_then_crash
    with pytest.raises(SystemExit):
        first.train()
    second = Trainer(load_config(None, over + ["name=split"]), resume=tmp_path / "split" / "last.pth")
    assert second.position.epoch == 1 and second.position.global_step == 2
    second.train()
    assert_same_state(weights(straight), weights(second))
    assert torch.equal(straight.model.queue.features, second.model.queue.features)
    states = zip(straight.parts.optimizer.state_dict()["state"].values(),
                 second.parts.optimizer.state_dict()["state"].values(), strict=True)
    for a, b in states:
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])


def stop_after(trainer, steps):
    """Make trainer.train() stop, as SIGINT/SIGTERM would, once it has run `steps` steps."""
    real_step = trainer.train_step
    calls = []

    def step_then_stop(batch):
        out = real_step(batch)
        calls.append(1)
        if len(calls) == steps:
            trainer.request_stop()
        return out

    trainer.train_step = step_then_stop


def assert_resume_is_exact(overrides, steps=2, stop=1):
    """A run of `overrides` stopped after `stop` of its `steps` steps and resumed ends with the weights and queue of
    the same run straight through."""
    over = [*overrides, f"optim.steps={steps}", "eval.knn_baseline=false", "eval.knn_pixels=false"]
    straight = Trainer(load_config(None, over + ["name=straight"]))
    straight.train()
    cfg = load_config(None, over + ["name=split"])
    interrupted = Trainer(cfg)
    stop_after(interrupted, stop)
    with pytest.raises(Interrupted):
        interrupted.train()
    resumed = Trainer(cfg, resume=resolve_resume("auto", cfg.run_dir))
    assert resumed.position.global_step == stop
    resumed.train()
    assert resumed.position.global_step == steps
    assert_same_state(weights(straight), weights(resumed))  # the queue too, where the objective has one
    return resumed


def test_interrupt_mid_epoch_then_resume_is_exact(quick_overrides, tmp_path):
    over = quick_overrides + ["optim.epochs=1", "optim.warmup_epochs=0.5"]  # 4 steps, the first 2 warming up
    cfg = load_config(None, over)
    straight = Trainer(load_config(None, over + ["name=ref"]))
    straight.train()

    interrupted = Trainer(cfg)
    stop_after(interrupted, 1)  # mid-epoch and mid-warm-up
    with pytest.raises(Interrupted, match="--resume auto"):
        interrupted.train()
    resumed = Trainer(cfg, resume=resolve_resume("auto", cfg.run_dir))
    assert (resumed.position.epoch, resumed.position.batch_in_epoch) == (0, 1)
    resumed.train()
    assert resumed.position.global_step == 4
    assert_same_state(weights(straight), weights(resumed))
    last_steps = [t.parts.scheduler.state_dict()["last_epoch"] for t in (straight, resumed)]
    assert last_steps == [4, 4]


def test_resumed_run_reports_the_whole_runs_steps_and_seconds(tiny_overrides):
    """The summary of a resumed run counts every step and the training seconds of every segment (kept in the
    checkpoint), not only the last process's; a checkpoint from before the seconds were kept says where they start."""
    cfg = load_config(None, tiny_overrides + ["optim.steps=3"])
    interrupted = Trainer(cfg)
    stop_after(interrupted, 2)
    with pytest.raises(Interrupted):
        interrupted.train()
    first = load_checkpoint(cfg.run_dir / "last.pth")
    assert first["global_step"] == 2 and first["train_seconds"] > 0 and first["seconds_from_step"] == 0
    resumed = Trainer(cfg, resume=resolve_resume("auto", cfg.run_dir))
    summary = resumed.train()
    assert summary["steps"] == 3 and summary["train_seconds_from_step"] == 0
    final = load_checkpoint(cfg.run_dir / "last.pth")["train_seconds"]  # saved before the end-of-run monitors
    assert first["train_seconds"] < final <= summary["train_seconds"]
    resumed.close()

    legacy = {key: value for key, value in first.items() if key not in ("train_seconds", "seconds_from_step")}
    save_atomic(legacy, cfg.run_dir / "old.pth")
    old = Trainer(cfg, resume=cfg.run_dir / "old.pth", verify=False)
    assert (old.position.train_seconds, old.position.seconds_from_step) == (0.0, 2)


def test_checkpoint_holds_everything_needed(plain_run):
    state = load_checkpoint(plain_run.state.checkpoint_path)
    for key in ("model", "optimizer", "scheduler", "scaler", "epoch", "batch_in_epoch", "global_step", "rng", "config"):
        assert key in state, key
    assert "queue.features" in state["model"] and "queue.pointer" in state["model"]
    assert any(k.startswith("encoder_k.") for k in state["model"])
    cfg = plain_run.cfg
    assert int(state["model"]["queue.pointer"]) == (8 * cfg.optim.batch_size) % cfg.moco.queue_size
    torch.load(plain_run.state.checkpoint_path, weights_only=True)  # safe-loadable content only


@pytest.fixture
def complete(tmp_path):
    """The entries of a complete (small) training checkpoint."""
    small_training_checkpoint(tmp_path / "small.pth")
    return load_file(tmp_path / "small.pth")


@pytest.mark.parametrize(("change", "problem"), [
    (lambda c: {"format": FORMAT}, "'config' is missing; 'model' is missing"),
    (lambda c: {**c, "model": [1, 2]}, "'model' is of type list, not a state dict"),
    (lambda c: {**c, "model": {"encoder_q.backbone.conv1.weight": 3}},
     "'model' entry 'encoder_q.backbone.conv1.weight' is of type int"),
])
def test_a_checkpoint_without_a_usable_model_is_truncated_or_corrupt_for_every_reader(tmp_path, complete, change,
                                                                                      problem):
    path = tmp_path / "bad.pth"
    torch.save(change(complete), path)
    readers = [lambda: load_checkpoint(path, verify=False), lambda: load_checkpoint(path),
               lambda: read_backbone_state(path, verify=False), lambda: read_backbone_state(path)]
    for read in readers:
        with pytest.raises(CheckpointError, match=f"^checkpoint {re.escape(str(path))} is truncated or corrupt: "
                                                  + re.escape(problem)):
            read()


@pytest.mark.parametrize(("change", "problem"), [
    (lambda c: {k: v for k, v in c.items() if k != "rng"}, "'rng' is missing"),
    (lambda c: {**c, "optimizer": {"state": {}}}, "'optimizer.param_groups' is missing"),
    (lambda c: {**c, "global_step": "10"}, "'global_step' is of type str, not int"),
    (lambda c: {**c, "rng": {**c["rng"], "numpy": {**c["rng"]["numpy"], "keys": [1, 2]}}},
     "'rng.numpy.keys' is of type list, not Tensor"),
])
def test_a_checkpoint_missing_what_resuming_needs_is_truncated_or_corrupt(tmp_path, complete, change, problem):
    path = tmp_path / "bad.pth"
    torch.save(change(complete), path)
    for verify in (False, True):
        with pytest.raises(CheckpointError, match="is truncated or corrupt: " + re.escape(problem)):
            load_checkpoint(path, verify=verify)


def test_a_text_file_is_truncated_or_corrupt(tmp_path):
    path = tmp_path / "last.pth"
    path.write_text("epoch: 3\nlr: 0.1\n")
    for read in (load_checkpoint, read_backbone_state):
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            read(path)


def test_nonfinite_entries_names_every_non_finite_tensor_of_nested_state():
    state = {
        "model": {"w": torch.ones(3), "queue.features": torch.tensor([[0.0, float("nan")]]),
                  "steps": torch.tensor([2 ** 62]), "half": torch.tensor([1.0, float("inf")], dtype=torch.float16)},
        "optimizer": {0: {"momentum_buffer": torch.tensor([float("-inf")])}, 1: {"momentum_buffer": torch.zeros(1)}},
        "groups": [{"lr": 0.1, "more": (torch.ones(1), torch.tensor([float("inf")]))}],
    }
    assert nonfinite_entries(state) == ["model/queue.features", "model/half", "optimizer/0/momentum_buffer",
                                        "groups/0/more/1"]
    assert nonfinite_entries({"model": {"w": torch.ones(2)}}) == []


def test_an_update_that_makes_the_weights_non_finite_is_never_saved(tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["optim.steps=4", "checkpoint_every=1", "log_every=1"])
    trainer = Trainer(cfg)
    real_step = trainer.train_step
    seen = {}

    def step(batch):
        poisoned = trainer.position.global_step == 2  # the 3rd step: an infinite learning rate for its update only
        if poisoned:
            seen["checkpoint"] = trainer.state.checkpoint_path.read_bytes()
            for group in trainer.parts.optimizer.param_groups:
                group["lr"] = float("inf")
        out = real_step(batch)
        if poisoned:
            seen["loss"] = float(out["loss"])  # computed before the update: still finite
        return out

    trainer.train_step = step
    with pytest.raises(TrainingDiverged) as err:
        trainer.train()
    assert math.isfinite(seen["loss"])
    message = str(err.value)
    assert message.startswith("training diverged: at step 3 (epoch 1) the state to save holds non-finite values in "
                              "model/encoder_q.")
    assert message.endswith(f"it was not saved. Last good checkpoint: {trainer.state.checkpoint_path} (step 2)")
    assert trainer.state.checkpoint_path.read_bytes() == seen["checkpoint"]  # untouched, bit for bit
    resumed = Trainer(cfg, resume=trainer.state.checkpoint_path)
    assert resumed.position.global_step == 2
    resumed.train()
    assert resumed.position.global_step == 4
    assert not nonfinite_entries(load_checkpoint(resumed.state.checkpoint_path))


def test_stale_temporaries_of_the_checkpoint_go_at_start_and_after_each_save(tiny_cfg, capsys):
    run_dir = tiny_cfg.run_dir
    run_dir.mkdir(parents=True)
    stale = [".last.pth.k3x_9q0z.tmp", ".last.pth.0a1b2c3d.tmp"]  # left by writes killed before their rename
    others = ["notes.txt", ".last.pth.abc.tmp", ".last.pth.0a1b2c3d.tmp.bak", ".other.pth.0a1b2c3d.tmp",
              "last.pth.0a1b2c3d.tmp", ".last.pthX0a1b2c3d.tmp", ".last.pth.0A1B2C3D.tmp"]
    for name in stale + others:
        (run_dir / name).write_bytes(b"x")
    trainer = Trainer(tiny_cfg)
    assert "removed 2 temporary checkpoint file(s) left by interrupted writes" in capsys.readouterr().err
    assert not any((run_dir / name).exists() for name in stale)
    (run_dir / stale[0]).write_bytes(b"x")
    trainer.state.save()
    assert not (run_dir / stale[0]).exists()
    assert all((run_dir / name).read_bytes() == b"x" for name in others)


def test_a_full_disk_names_the_folder_and_the_step_of_the_intact_checkpoint(tiny_cfg, monkeypatch):
    trainer = Trainer(tiny_cfg)
    real_save = torch.save
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=f"^no space left on {re.escape(str(tiny_cfg.run_dir))} while writing the "
                                              "checkpoint; no checkpoint was written before$"):
        trainer.state.save()
    monkeypatch.setattr(torch, "save", real_save)
    trainer.position.global_step = 4
    trainer.state.save()
    before = trainer.state.checkpoint_path.read_bytes()
    trainer.position.global_step = 6
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="while writing the checkpoint; the previous one at step 4 is intact$"):
        trainer.state.save()
    assert trainer.state.checkpoint_path.read_bytes() == before
    assert not [p for p in tiny_cfg.run_dir.iterdir() if p.name.endswith(".tmp")]


def test_pretrain_cli_reports_a_full_disk_in_one_line(tiny_overrides, tmp_path, monkeypatch, capsys):
    from mochi_hvs import pretrain

    real_save, calls = torch.save, []

    def first_save_then_full(obj, handle):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, handle)

    monkeypatch.setattr(torch, "save", first_save_then_full)
    assert pretrain.main(["--set", *tiny_overrides, "optim.steps=2", "checkpoint_every=1"]) == 2
    err = capsys.readouterr().err
    run_dir = tmp_path / "tiny"
    # (the epoch's progress bar, still open when the error leaves the loop, may precede it on its line)
    assert err.count("error:") == 1 and err.split("error: ")[1].splitlines()[0] == (
        f"no space left on {run_dir} while writing the checkpoint; the previous one at step 1 is intact")
    assert "Traceback" not in err
    assert load_checkpoint(run_dir / "last.pth")["global_step"] == 1


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(quick_overrides):
    cfg = load_config(None, quick_overrides + ["optim.epochs=2"])  # 4 steps per epoch
    trainer = Trainer(cfg)
    real_step = trainer.train_step

    def poisoned(batch):
        out = real_step(batch)
        if trainer.position.global_step == 6:  # step index 6 (the 3rd step of epoch 2)
            out["loss"] = torch.tensor(float("nan"))
        return out

    trainer.train_step = poisoned
    with pytest.raises(TrainingDiverged, match="step 6") as err:
        trainer.train()
    assert str(trainer.state.checkpoint_path) in str(err.value)
    kept = load_checkpoint(trainer.state.checkpoint_path)
    assert kept["global_step"] == 4 and kept["epoch"] == 1


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
    cfg = load_config(None, quick_overrides + ["data.train_subset=32", "optim.epochs=2", "log_every=1"])  # 2 epochs
    # of 2 steps, each logged
    crashing = Trainer(cfg)
    real_step = crashing.train_step

    def crash_in_the_last_step(batch):
        if crashing.position.global_step == 3:  # step 3 ran (and was logged) after the checkpoint at step 2
            raise SystemExit("killed")
        return real_step(batch)

    crashing.train_step = crash_in_the_last_step
    with pytest.raises(SystemExit):
        crashing.train()
    steps, before = logged_steps(cfg.run_dir)
    assert steps == [1, 2, 3] and load_checkpoint(crashing.state.checkpoint_path)["global_step"] == 2
    resumed = Trainer(cfg, resume=crashing.state.checkpoint_path)
    resumed.train()
    resumed.close()
    steps, after = logged_steps(cfg.run_dir)
    assert steps == [1, 2, 3, 4]  # each step of a straight run once
    assert after[:2] == before[:2]  # the history up to the checkpoint is kept as it was
    losses = tensorboard_losses(cfg.run_dir)
    assert [step for step, _ in losses] == [1, 2, 3, 4]
    assert [value for _, value in losses] == [float(torch.tensor(line["train/loss"])) for line in after]


def test_a_checkpoint_every_that_divides_the_epoch_saves_the_epoch_end_once(quick_overrides):
    trainer = Trainer(load_config(None, quick_overrides + ["optim.epochs=1", "checkpoint_every=2"]))
    real_save = trainer.state.save
    saved = []

    def record_save(**kwargs):
        saved.append((trainer.position.global_step, trainer.position.epoch, trainer.position.batch_in_epoch))
        return real_save(**kwargs)

    trainer.state.save = record_save
    trainer.train()
    trainer.close()
    assert saved == [(2, 0, 2), (4, 1, 0)]


def test_resuming_a_finished_run_changes_nothing_and_returns_its_summary(quick_overrides):
    cfg = load_config(None, quick_overrides + ["optim.epochs=1"])
    summary = Trainer(cfg).fit()
    files = {name: (cfg.run_dir / name).read_bytes() for name in ("summary.json", "metrics.jsonl", "last.pth")}
    resumed = Trainer(cfg, resume=cfg.run_dir / "last.pth")
    resumed.monitors.knn = None  # evaluating again would fail here: a finished run is not evaluated twice
    assert resumed.fit() == json.loads(json.dumps(summary))
    assert {name: (cfg.run_dir / name).read_bytes() for name in files} == files
