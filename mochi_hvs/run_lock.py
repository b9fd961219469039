"""One writer per run folder: a lock file naming its owner (pid, host, start time), with stale-lock take-over."""

from __future__ import annotations

import atexit
import datetime
import json
import os
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import UserError
from .run_files import LOCK


class RunLockedError(UserError, RuntimeError):
    """Another live process (or one on another host) holds the run folder."""


@dataclass(frozen=True)
class LockOwner:
    """Who holds a run folder."""

    pid: int
    host: str
    started: str  # ISO 8601, local time

    @classmethod
    def this_process(cls) -> LockOwner:
        """The current process, started now."""
        return cls(os.getpid(), socket.gethostname(), datetime.datetime.now().isoformat(timespec="seconds"))

    def is_gone(self) -> bool:
        """True only when the owner is provably dead: same host and no process with its pid."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, owned by another user
            return False
        return False

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host} (started {self.started})"


def read_owner(path: Path) -> LockOwner | None:
    """The owner recorded in a lock file, or None when the file is gone, empty or unreadable."""
    try:
        return LockOwner(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


class RunLock:
    """The lock file of a run folder, held by this process until `release` (or interpreter exit)."""

    def __init__(self, path: Path, created_dirs: list[Path]) -> None:
        self.path = path
        self.created_dirs = created_dirs  # folders that acquiring created (removed on release when left empty)
        self.held = True
        atexit.register(self.release)

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        """Create `run_dir/run.lock` atomically (O_EXCL). A lock whose owner is gone (same host, no such pid) is
        taken over with a note; a live owner, one on another host or an unreadable lock is refused."""
        created_dirs = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK
        while not _create(path, LockOwner.this_process()):
            owner = read_owner(path)
            if owner is None or not owner.is_gone():
                raise RunLockedError(_refusal(path, owner))
            print(f"note: taking over the stale lock {path} of {owner}: that process is gone", file=sys.stderr)
            if read_owner(path) == owner:  # not replaced meanwhile by another process taking it over
                path.unlink(missing_ok=True)
        return cls(path, created_dirs)

    def release(self) -> None:
        """Remove the lock file (and the folders acquiring created, if nothing else was written there)."""
        if not self.held:
            return
        self.held = False
        atexit.unregister(self.release)
        self.path.unlink(missing_ok=True)
        _remove_empty(self.created_dirs)


def _create(path: Path, owner: LockOwner) -> bool:
    """Write the lock file if none exists; False when one does."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        json.dump(asdict(owner), handle)
        handle.flush()
        os.fsync(handle.fileno())
    return True


def _remove_empty(folders: list[Path]) -> None:
    """Remove these folders, innermost first, where they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _refusal(path: Path, owner: LockOwner | None) -> str:
    holder = "another process (the lock names no owner yet)" if owner is None else str(owner)
    return (f"run folder {path.parent} is in use by {holder}; lock file {path}. Wait for that run to end, pick "
            "another name (--set name=...), or delete the lock file if no such run is going on")
