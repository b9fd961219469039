"""Running a command until a deadline: SIGTERM when its time is up (a training run then saves its checkpoint and
stops), then SIGKILL to its whole process group (its DataLoader workers too) after a grace period."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

GRACE_S = 15.0  # after SIGTERM: a training run writes its checkpoint (about a second for ResNet-18) and exits


@dataclass
class Outcome:
    """How a command ended: its exit code (None when it was stopped at the deadline), its output and duration."""

    code: int | None
    output: str
    seconds: float

    @property
    def status(self) -> str:
        """'ok', 'failed (exit N)' or 'stopped at the deadline'."""
        if self.code is None:
            return "stopped at the deadline"
        return "ok" if self.code == 0 else f"failed (exit {self.code})"


def stop(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM to the command alone (its workers must outlive its checkpoint), then SIGKILL to what is left of its
    process group `grace` seconds later."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:  # the whole group has ended
        pass
    process.wait()


def run_until(command: list[str], cwd: Path, env: dict[str, str], seconds: float,
              grace: float = GRACE_S) -> Outcome:
    """Run `command` (stdout and stderr together, in a process group of its own) for at most `seconds`, then stop
    it; an exception meanwhile (the caller's own stop signal) stops it too, and propagates."""
    start = time.monotonic()
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as output:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            code: int | None = process.wait(timeout=max(1.0, seconds))
        except subprocess.TimeoutExpired:
            code = None
            stop(process, grace)
        except BaseException:
            stop(process, grace)
            raise
        output.seek(0)
        text = output.read()
    return Outcome(code, text, round(time.monotonic() - start, 1))
