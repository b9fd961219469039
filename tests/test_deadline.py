import os
import sys
import textwrap
from pathlib import Path

import pytest

from mochi_hvs.deadline import run_until

# Stands for a training run: on SIGTERM it "saves its checkpoint" (says so) and exits 130, as the trainer does.
TRAINING = textwrap.dedent("""
    import signal, sys, time
    def stop(*_):
        print("checkpoint saved", flush=True)
        sys.exit(130)
    signal.signal(signal.SIGTERM, stop)
    print("started", flush=True)
    time.sleep(60)
""")
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('started', flush=True); " \
           "time.sleep(60)"


def run(code: str, seconds: float, grace: float = 5.0):
    return run_until([sys.executable, "-c", code], Path.cwd(), dict(os.environ), seconds, grace)


@pytest.mark.parametrize("code, status", [("print('hi')", "ok"), ("import sys; sys.exit(3)", "failed (exit 3)")])
def test_a_command_that_ends_in_time_reports_its_exit(code, status):
    outcome = run(code, 30)
    assert outcome.status == status and outcome.code == (0 if status == "ok" else 3)


def test_at_the_deadline_the_command_is_asked_to_stop_and_may_save_first():
    outcome = run(TRAINING, 3)
    assert outcome.code is None and outcome.status == "stopped at the deadline"
    assert outcome.output.split() == ["started", "checkpoint", "saved"]
    assert outcome.seconds < 30  # not the command's own 60 s


def test_a_command_that_ignores_the_stop_is_killed_after_the_grace_period():
    outcome = run(STUBBORN, 3, grace=1)
    assert outcome.code is None and outcome.output.strip() == "started" and outcome.seconds < 30
