"""A toolkit command stops cleanly from its first second: SIGINT or SIGTERM while the package is still importing
torch ends it with one `interrupted:` line and status 130 (mochi_hvs/startup.py)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mochi_hvs import startup

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("orig_argv, argv0, expected", [
    (["python", "-m", "mochi_hvs.pretrain", "--config", "x.yaml"], "-m", True),
    (["python", "-mmochi_hvs.study"], "-m", True),
    (["python", "-u", "-X", "importtime", "-m", "mochi_hvs.evaluation.knn"], "-m", True),
    (["python", "-W", "ignore", "-m", "mochi_hvs"], "-m", True),
    (["python", "-m", "mochi_hvs_other.tool"], "-m", False),
    (["python", "-m", "pytest", "tests"], "-m", False),
    (["python", "-c", "import mochi_hvs"], "-c", False),
    (["python", "train.py", "-m", "mochi_hvs.pretrain"], "train.py", False),  # -m here is the script's argument
    (["/venv/bin/python", "/venv/bin/mochi-pretrain", "--config", "x.yaml"], "/venv/bin/mochi-pretrain", True),
    (["/venv/bin/python", "/venv/bin/pytest"], "/venv/bin/pytest", False),
])
def test_a_command_is_told_from_the_interpreter_arguments(orig_argv, argv0, expected):
    assert startup.started_as_command(orig_argv, argv0) is expected


@pytest.fixture
def restored_handlers():
    previous = {sig: signal.getsignal(sig) for sig in startup.SIGNALS}
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def test_the_guard_ends_a_command_with_one_line_and_keeps_ignored_signals_ignored(restored_handlers, monkeypatch,
                                                                                   capsys):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell leaves it for a background job
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "mochi_hvs.pretrain"])
    startup.guard_command_start()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    with pytest.raises(SystemExit) as stop:
        signal.raise_signal(signal.SIGTERM)
    assert stop.value.code == 130
    assert capsys.readouterr().err.strip().splitlines() == ["interrupted: stopped by SIGTERM"]


def test_the_guard_leaves_a_library_user_alone(restored_handlers, monkeypatch):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    monkeypatch.setattr(sys, "orig_argv", ["python", "-c", "import mochi_hvs"])
    monkeypatch.setattr(sys, "argv", ["-c"])
    startup.guard_command_start()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def torch_is_loading(pid: int) -> bool:
    """Whether the process has mapped torch's C++ library: the package's __init__ runs (so the guard is in place)
    and the import of torch is under way, which takes a second or more after this point."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc to see torch loading")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_torch_is_still_importing_ends_the_command_like_one_later(tmp_path, sig):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "mochi_hvs.pretrain", "--config", str(ROOT / "configs/moco_mochi_hvs.yaml"),
               "--set", f"output_dir={tmp_path}"]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not torch_is_loading(process.pid) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(sig)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.strip().splitlines() == [f"interrupted: stopped by {sig.name}"]
    assert out == "" and list(tmp_path.iterdir()) == []
