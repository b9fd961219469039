"""SIGINT / SIGTERM outside the training loop: during start-up and during the final evaluation."""

import signal

import pytest

import mochi_hvs.train.build as build
from mochi_hvs import pretrain
from mochi_hvs.config import load_config
from mochi_hvs.evaluation.knn import KnnMonitor
from mochi_hvs.run_files import LOCK


class UnhandledSignal(Exception):
    pass


@pytest.fixture(autouse=True)
def safety_net():
    """Whatever the code under test leaves unhandled ends this test, not the test process."""

    def unhandled(signum, frame):
        raise UnhandledSignal(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, unhandled) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def signal_on_call(function, sig):
    def wrapped(*args, **kwargs):
        signal.raise_signal(sig)
        return function(*args, **kwargs)

    return wrapped


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_start_up_stops_cleanly_saying_nothing_was_trained(quick_overrides, tmp_path, monkeypatch,
                                                                            capsys, sig):
    monkeypatch.setattr(build, "load_images", signal_on_call(build.load_images, sig))  # while loading data
    status = pretrain.main(["--set", *quick_overrides])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 130
    assert err == [f"interrupted: stopped during start-up, before the first step in {tmp_path / 'tiny'}: nothing was "
                   "trained there"]
    assert not (tmp_path / "tiny").exists()
    assert signal.getsignal(signal.SIGTERM).__name__ == "unhandled"  # the previous handlers are back


def test_a_signal_during_start_up_of_a_resume_names_the_untouched_checkpoint(quick_overrides, monkeypatch, capsys):
    assert pretrain.main(["--set", *quick_overrides, "optim.steps=1", "eval.knn_baseline=false"]) == 0
    checkpoint = load_config(None, quick_overrides).run_dir / "last.pth"
    data = checkpoint.read_bytes()
    capsys.readouterr()
    monkeypatch.setattr(build.MoCo, "__init__", signal_on_call(build.MoCo.__init__, signal.SIGTERM))
    status = pretrain.main(["--set", *quick_overrides, "optim.steps=2", "--resume", "auto"])
    assert status == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"interrupted: stopped during start-up, before the first step in {checkpoint.parent}: nothing was trained "
        f"there since the checkpoint {checkpoint}, which is untouched: resume from it again")
    assert checkpoint.read_bytes() == data and not (checkpoint.parent / LOCK).exists()


def test_a_signal_during_the_final_evaluation_names_the_saved_checkpoint_and_how_to_evaluate_it(
        quick_overrides, tmp_path, monkeypatch, capsys):
    evaluate = KnnMonitor.evaluate
    monkeypatch.setattr(KnnMonitor, "evaluate", signal_on_call(evaluate, signal.SIGTERM))
    over = ["--set", *quick_overrides, "optim.steps=1", "eval.knn_baseline=false"]
    status = pretrain.main(over)
    err = capsys.readouterr().err.strip().splitlines()
    checkpoint = tmp_path / "tiny" / "last.pth"
    assert status == 130
    assert err[-1] == (f"interrupted: stopped during the final evaluation; training had finished and its checkpoint "
                       f"{checkpoint} is saved. Evaluate it with `python eval/knn.py --checkpoint {checkpoint}`, or "
                       "rerun the final evaluation with --resume auto")
    assert checkpoint.is_file() and not (tmp_path / "tiny" / "summary.json").exists()
    assert not (tmp_path / "tiny" / LOCK).exists()
    monkeypatch.setattr(KnnMonitor, "evaluate", evaluate)
    assert pretrain.main([*over, "--resume", "auto"]) == 0  # as the message says: nothing left to train
    assert (tmp_path / "tiny" / "summary.json").is_file()
