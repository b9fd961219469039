"""SHA-256 integrity digests: inside our training checkpoints and safetensors exports, and `sha256sum` sidecar
files beside exports.

A training checkpoint carries its digest as the entry ``sha256``, computed over a canonical traversal of
every other entry (mapping keys in order, types, tensor dtypes, shapes and bytes), so a payload and its
digest are always written together; a safetensors export carries the same kind of digest in its metadata (see
safetensors_format). Exports stay plain files that other tools load; their digest is also the
sidecar ``<file>.sha256`` in the format of ``sha256sum`` (so ``sha256sum -c <file>.sha256`` checks it too).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

DIGEST_KEY = "sha256"
SIDECAR_SUFFIX = ".sha256"
SIDECAR_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")


def _feed(digest: Any, obj: Any) -> None:
    """Feed `obj` to `digest` as an unambiguous token stream (every token says its type and length)."""
    if isinstance(obj, torch.Tensor):
        data = obj.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        digest.update(f"T{obj.dtype}{tuple(obj.shape)}{data.numel()}:".encode())
        digest.update(data.numpy().data)
    elif isinstance(obj, Mapping):
        digest.update(f"D{len(obj)}:".encode())
        for key, value in obj.items():
            _feed(digest, key)
            _feed(digest, value)
    elif isinstance(obj, (list, tuple)):
        digest.update(f"{type(obj).__name__}{len(obj)}:".encode())
        for item in obj:
            _feed(digest, item)
    else:
        text = repr(obj).encode()
        digest.update(f"S{type(obj).__name__}{len(text)}:".encode() + text)


def state_digest(state: Mapping[str, Any]) -> str:
    """Hex SHA-256 of a checkpoint object, its own `sha256` entry left out."""
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in state.items() if k != DIGEST_KEY})
    return digest.hexdigest()


def with_digest(state: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `state` that carries its own digest as the `sha256` entry."""
    return {**state, DIGEST_KEY: state_digest(state)}


def sidecar_path(path: str | Path) -> Path:
    """Where the `sha256sum`-format digest of `path` lives: `<file>.sha256`."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def file_digest(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sidecar_line(path: str | Path) -> str:
    """The `sha256sum` line of a file: digest, two spaces, its name."""
    return f"{file_digest(path)}  {Path(path).name}\n"


def recorded_in_sidecar(path: str | Path) -> str | None:
    """The digest recorded in the `<file>.sha256` sidecar of `path` (lower case); None when that is not a
    `sha256sum` line."""
    try:
        match = SIDECAR_LINE.fullmatch(sidecar_path(path).read_text(encoding="ascii").splitlines()[0])
    except (UnicodeDecodeError, IndexError):
        return None
    return match.group(1).lower() if match else None


def _mismatch(path: Path, actual: str, recorded: str, where: str) -> CheckpointError:
    return CheckpointError(f"{path} failed its integrity check: its SHA-256 {actual[:16]}... differs from the "
                           f"{recorded[:16]}... recorded {where}, so the file is corrupt or was changed after it "
                           "was written; --no-verify loads it anyway")


def embedded_digest(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(recorded, actual) digest of a loaded object that carries its own `sha256` entry; None when it has none."""
    return (str(obj[DIGEST_KEY]), state_digest(obj)) if DIGEST_KEY in obj else None


NOT_CHECKED = "digest not checked (--no-verify)"
VERIFIED = "SHA-256 verified"
UNVERIFIED = "no SHA-256 digest (a file from elsewhere, read as data): not verified"


def verify_digest(path: str | Path, embedded: tuple[str, str] | None, ours: bool = True) -> str:
    """Check a file against every SHA-256 digest it has: the one recorded inside it (`embedded`: recorded and
    actual digest; our checkpoints and safetensors exports) and a `<file>.sha256` sidecar (exports, or recorded by
    the user with sha256sum); returns what was checked, in words. A file with neither is refused when it is `ours`
    (ours always carry one), and read with that note otherwise."""
    path = Path(path)
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        recorded = recorded_in_sidecar(path)
        if recorded is None:
            raise CheckpointError(f"{sidecar} is not a sha256sum line ('<64 hex digits>  <file name>')")
        actual = file_digest(path)
        if actual != recorded:
            raise _mismatch(path, actual, recorded, f"in {sidecar.name}")
    if embedded is not None:
        recorded, actual = embedded
        if actual != recorded:
            raise _mismatch(path, actual, recorded, "inside it")
    elif not sidecar.is_file():
        if not ours:
            return UNVERIFIED
        raise CheckpointError(f"{path} has no integrity digest (no '{DIGEST_KEY}' entry inside, no {sidecar.name} "
                              f"beside it); --no-verify loads it anyway, or record one with "
                              f"`sha256sum {path.name} > {sidecar.name}`")
    return VERIFIED
