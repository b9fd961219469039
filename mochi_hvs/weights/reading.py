"""What a weights or checkpoint file holds, read by its content (not its name) without running code: torch files
through torch.load(weights_only=True), plain pickles through the numpy-only unpickler. Every failure is one
CheckpointError."""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, UnsafeFileError
from .safe_pickle import NumpyUnpickler, RefusedGlobal

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's (zip) format; anything else is a plain or legacy-torch pickle
TORCH_REFUSAL = re.compile(r"GLOBAL ([\w.]+)")  # how torch.load(weights_only=True) names a global it refused


def _refused_global(err: Exception) -> str | None:
    """The global a safe unpickler refused to call (ours, or torch's weights_only one), or None."""
    if isinstance(err, RefusedGlobal):
        return err.name
    match = TORCH_REFUSAL.search(str(err)) if isinstance(err, pickle.UnpicklingError) else None
    return match.group(1) if match else None


def _read(path: Path, map_location: str | torch.device) -> Any:
    """The object in a torch file (weights_only) or in a plain pickle of numpy arrays. Files that are not zip
    archives are parsed from memory: a damaged length field in a pickle then cannot make a file read allocate the
    size it claims."""
    try:
        with open(path, "rb") as handle:
            zipped = handle.read(len(ZIP_MAGIC)) == ZIP_MAGIC
        if zipped:
            return torch.load(path, map_location=map_location, weights_only=True)
        content = io.BytesIO(path.read_bytes())
        first = NumpyUnpickler(content).load()  # a legacy torch file starts with a magic number
        if isinstance(first, dict):
            return first
        content.seek(0)
        return torch.load(content, map_location=map_location, weights_only=True)
    except Exception as err:  # the reader of a damaged file can fail in any way; all but a refusal mean one thing
        if refused := _refused_global(err):
            raise UnsafeFileError(f"{path} is refused: reading it would run code (its pickle calls {refused}); "
                                  "weights are read as data only (tensors, numbers, strings, containers), so "
                                  "re-save its tensors as safetensors if you trust it") from err
        reason = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt and cannot be read "
                              f"({type(err).__name__}: {reason})") from err


def read_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The mapping a weights or checkpoint file holds; a missing file, or one that holds no mapping, is a
    CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    obj = _read(path, map_location)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a state dictionary")
    return obj
