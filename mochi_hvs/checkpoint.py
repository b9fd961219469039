"""Atomic checkpoint files with clear errors, and RNG state capture."""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "mochi_hvs.checkpoint"
LAST = "last.pth"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or not ours."""


def save_atomic(obj: Any, path: str | Path) -> Path:
    """torch.save to a temporary file in the target folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """torch.load(weights_only=True) with a readable error for missing, truncated or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt and cannot be read ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''})") from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a state dictionary")
    return obj


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one of our training checkpoints (checks the format marker)."""
    obj = load_file(path, map_location)
    if obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a mochi_hvs training checkpoint (no '{FORMAT}' marker)")
    return obj


def resolve_resume(resume: str | None, run_dir: Path) -> Path | None:
    """`auto`: the run folder's last checkpoint if there is one; a path: that file; None: start fresh."""
    if resume is None:
        return None
    if resume == "auto":
        candidate = run_dir / LAST
        return candidate if candidate.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise CheckpointError(f"--resume {resume}: no such checkpoint")
    return path


def capture_rng() -> dict[str, Any]:
    """RNG states of torch (CPU and CUDA), numpy and Python, in weights_only-loadable types."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of capture_rng."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
