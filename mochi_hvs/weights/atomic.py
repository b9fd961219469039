"""Atomic, durable file writes: a crash leaves the old file or the new one, never a mix; a full disk is one
NoSpaceError naming the folder."""

from __future__ import annotations

import errno
import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .errors import CheckpointError

NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class NoSpaceError(CheckpointError):
    """The disk (or quota) filled up while a file was written; the file it was to replace is untouched."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"no space left on {path.parent} while writing {path.name}")
        self.folder = path.parent


def _temporary_pattern(path: Path) -> re.Pattern[str]:
    """Names of the temporaries of writes of `path`: `.<name>.<8 hex digits>.tmp` as write_atomic makes them, and
    `.<name>.<8 of a-z, 0-9, _>.tmp` as tempfile.mkstemp made them in earlier versions."""
    return re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete the temporaries that interrupted writes of `path` left in its folder (nothing else); returns them."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = _temporary_pattern(path)
    stale = [p for p in path.parent.iterdir() if pattern.fullmatch(p.name) and p.is_file()]
    for leftover in stale:
        leftover.unlink(missing_ok=True)
    return stale


def _out_of_space(err: BaseException) -> bool:
    """ENOSPC/EDQUOT, or the short write that torch's zip writer reports as an enforce failure."""
    if isinstance(err, OSError):
        return err.errno in NO_SPACE_ERRNOS
    return isinstance(err, RuntimeError) and "inline_container.cc" in str(err)


@contextmanager
def _full_disk_reported(path: Path) -> Iterator[None]:
    try:
        yield
    except (OSError, RuntimeError) as err:
        if _out_of_space(err):
            raise NoSpaceError(path) from err
        raise


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, write: Callable[[BinaryIO], Any]) -> Path:
    """Write `path` through `write(handle)` into a temporary beside it (usual file mode), fsync it, rename it over
    `path` and fsync the folder: a crash leaves the old file or the new one, never a mix. A full disk raises
    NoSpaceError, with the temporary removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with _full_disk_reported(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask, as open() gives
        try:
            with os.fdopen(fd, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_folder(path.parent)
    return path


def save_atomic(obj: Any, path: str | Path) -> Path:
    """torch.save `obj` to `path` atomically (see write_atomic)."""
    return write_atomic(path, lambda handle: torch.save(obj, handle))
