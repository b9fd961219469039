import json
import os
import socket
import subprocess
import sys

import pytest

from mochi_hvs import pretrain
from mochi_hvs.config import load_config
from mochi_hvs.run_files import LOCK
from mochi_hvs.run_lock import RunLock, RunLockedError, read_owner
from mochi_hvs.train import Trainer


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def write_lock(run_dir, pid, host=None):
    run_dir.mkdir(parents=True, exist_ok=True)
    owner = {"pid": pid, "host": host or socket.gethostname(), "started": "2024-01-01T00:00:00"}
    (run_dir / LOCK).write_text(json.dumps(owner))


def test_the_lock_names_its_owner_and_refuses_a_second_holder(tmp_path):
    run_dir = tmp_path / "runs" / "a"
    lock = RunLock.acquire(run_dir)
    owner = read_owner(run_dir / LOCK)
    assert (owner.pid, owner.host) == (os.getpid(), socket.gethostname())
    with pytest.raises(RunLockedError, match=rf"in use by pid {os.getpid()} on .*; lock file {run_dir / LOCK}"):
        RunLock.acquire(run_dir)
    lock.release()
    assert not (run_dir / LOCK).exists()
    RunLock.acquire(run_dir).release()


def test_release_removes_the_folders_acquiring_created_when_nothing_else_was_written(tmp_path):
    RunLock.acquire(tmp_path / "runs" / "a").release()
    assert list(tmp_path.iterdir()) == []
    lock = RunLock.acquire(tmp_path / "runs" / "b")
    (tmp_path / "runs" / "b" / "last.pth").write_bytes(b"x")
    lock.release()
    assert [p.name for p in (tmp_path / "runs" / "b").iterdir()] == ["last.pth"]


def test_a_stale_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path, capsys):
    pid = dead_pid()
    write_lock(tmp_path, pid)
    lock = RunLock.acquire(tmp_path)
    assert read_owner(tmp_path / LOCK).pid == os.getpid()
    assert f"taking over the stale lock {tmp_path / LOCK} of pid {pid}" in capsys.readouterr().err
    lock.release()


@pytest.mark.parametrize("holder", ["live process", "other host", "unreadable"])
def test_a_live_owner_another_host_or_an_unreadable_lock_is_refused(tmp_path, holder):
    if holder == "live process":
        write_lock(tmp_path, os.getppid())
    elif holder == "other host":
        write_lock(tmp_path, dead_pid(), host="another-host.example")
    else:
        (tmp_path / LOCK).write_text("")
    with pytest.raises(RunLockedError, match="in use by"):
        RunLock.acquire(tmp_path)
    assert (tmp_path / LOCK).exists()  # never removed by the refused process


def test_a_second_trainer_on_the_same_run_folder_is_refused_until_the_first_is_closed(quick_overrides):
    cfg = load_config(None, quick_overrides)
    first = Trainer(cfg)
    with pytest.raises(RunLockedError, match=f"lock file {cfg.run_dir / LOCK}"):
        Trainer(cfg)
    first.close()
    Trainer(cfg).close()
    assert not (cfg.run_dir / LOCK).exists()


def test_the_lock_is_released_after_fit_and_after_a_failed_step(quick_overrides):
    cfg = load_config(None, quick_overrides + ["optim.steps=1", "eval.knn_baseline=false"])
    Trainer(cfg).fit()
    assert not (cfg.run_dir / LOCK).exists()
    cfg = load_config(None, quick_overrides + ["optim.steps=1", "eval.knn_baseline=false", "name=failing"])
    failing = Trainer(cfg)
    assert (cfg.run_dir / LOCK).exists()

    def broken_step(batch):
        raise RuntimeError("step failed")

    failing.train_step = broken_step
    with pytest.raises(RuntimeError, match="step failed"):
        failing.fit()
    assert not (cfg.run_dir / LOCK).exists()


def test_pretrain_refuses_a_held_run_folder_in_one_line(quick_overrides, tmp_path, capsys):
    cfg = load_config(None, quick_overrides)
    write_lock(cfg.run_dir, os.getppid())
    status = pretrain.main(["--set", *quick_overrides, "--resume", "auto"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert err == [f"error: run folder {cfg.run_dir} is in use by pid {os.getppid()} on {socket.gethostname()} "
                   f"(started 2024-01-01T00:00:00); lock file {cfg.run_dir / LOCK}. Wait for that run to end, "
                   "pick another name (--set name=...), or delete the lock file if no such run is going on"]
    assert sorted(p.name for p in cfg.run_dir.iterdir()) == [LOCK]  # nothing written beside the lock


def test_a_fresh_start_in_a_folder_holding_a_run_is_refused_and_leaves_it_as_it_was(quick_overrides, capsys):
    cfg = load_config(None, quick_overrides + ["optim.steps=1"])
    trainer = Trainer(cfg)
    trainer.train()
    trainer.close()
    checkpoint = cfg.run_dir / "last.pth"
    files = {p.name: p.read_bytes() for p in cfg.run_dir.iterdir() if p.is_file()}
    capsys.readouterr()
    status = pretrain.main(["--set", *quick_overrides, "optim.steps=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert err == [f"error: {cfg.run_dir} already holds a run ({checkpoint}): continue it with --resume auto, or "
                   "start a new one under another name (--set name=NEW) or after removing that folder"]
    assert {p.name: p.read_bytes() for p in cfg.run_dir.iterdir() if p.is_file()} == files  # nothing overwritten
    assert pretrain.main(["--set", *quick_overrides, "optim.steps=2", "--resume", "auto"]) == 0
