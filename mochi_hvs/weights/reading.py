"""What a weights or checkpoint file holds, read by its content (not its name) without running code: safetensors
files, torch files through torch.load(weights_only=True), plain pickles through the numpy-only unpickler. Every
failure is one CheckpointError."""

from __future__ import annotations

import io
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, UnsafeFileError
from .safe_pickle import NumpyUnpickler, RefusedGlobal
from .safetensors_format import is_safetensors, read_safetensors

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's (zip) format
SAFETENSORS, TORCH, PICKLE = "safetensors", "torch", "pickle"  # the kinds of file read
TORCH_REFUSAL = re.compile(r"GLOBAL ([\w.]+)")  # how torch.load(weights_only=True) names a global it refused


def _refused_global(err: Exception) -> str | None:
    """The global a safe unpickler refused to call (ours, or torch's weights_only one), or None."""
    if isinstance(err, RefusedGlobal):
        return err.name
    match = TORCH_REFUSAL.search(str(err)) if isinstance(err, pickle.UnpicklingError) else None
    return match.group(1) if match else None


@dataclass(frozen=True)
class FileContent:
    """What a file holds: its mapping (a safetensors file's: its tensors), its kind and a safetensors file's
    metadata."""

    obj: dict[str, Any]
    kind: str
    metadata: dict[str, str] = field(default_factory=dict)


def _read(path: Path, map_location: str | torch.device) -> FileContent:
    """The content of a safetensors file, a torch file (weights_only) or a plain pickle of numpy arrays. Files that
    are not zip archives are parsed from memory: a damaged length field in a pickle then cannot make a file read
    allocate the size it claims."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
        if is_safetensors(head, path.stat().st_size):
            tensors, metadata = read_safetensors(path)
            return FileContent(tensors, SAFETENSORS, metadata)
        if head.startswith(ZIP_MAGIC):
            return FileContent(torch.load(path, map_location=map_location, weights_only=True), TORCH)
        content = io.BytesIO(path.read_bytes())
        first = NumpyUnpickler(content).load()  # a legacy torch file starts with a magic number
        if isinstance(first, dict):
            return FileContent(first, PICKLE)
        content.seek(0)
        return FileContent(torch.load(content, map_location=map_location, weights_only=True), TORCH)
    except Exception as err:  # the reader of a damaged file can fail in any way; all but a refusal mean one thing
        if refused := _refused_global(err):
            raise UnsafeFileError(f"{path} is refused: reading it would run code (its pickle calls {refused}); "
                                  "weights are read as data only (tensors, numbers, strings, containers), so "
                                  "re-save its tensors as safetensors if you trust it") from err
        reason = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt and cannot be read "
                              f"({type(err).__name__}: {reason})") from err


def read_file(path: str | Path, map_location: str | torch.device = "cpu") -> FileContent:
    """What a weights or checkpoint file holds; a missing file, or one that holds no mapping, is a
    CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    content = _read(path, map_location)
    if not isinstance(content.obj, dict):
        raise CheckpointError(f"{path} does not hold a state dictionary")
    return content
