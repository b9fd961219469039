"""Our training checkpoints: written atomically with their own SHA-256 digest; read back with their layout
(what reading a backbone, or resuming, needs) and digest checked; the finiteness of what is saved; RNG state
capture; which checkpoint a resume starts from."""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..run_files import LAST
from .atomic import save_atomic
from .errors import CheckpointError
from .integrity import embedded_digest, verify_digest, with_digest
from .reading import read_file

FORMAT = "mochi_hvs.checkpoint"
STATE_DICT = "state dict"  # schema marker: a mapping of names to tensors
WEIGHTS_SCHEMA: dict[str, Any] = {"config": dict, "model": STATE_DICT}  # what reading a backbone needs
CHECKPOINT_SCHEMA: dict[str, Any] = {  # what resuming needs (the layout Trainer.state_dict writes)
    **WEIGHTS_SCHEMA,
    "optimizer": {"state": dict, "param_groups": list},
    "scheduler": dict,
    "scaler": dict,
    "epoch": int,
    "batch_in_epoch": int,
    "global_step": int,
    "rng": {"torch": torch.Tensor, "cuda": list,
            "numpy": {"keys": torch.Tensor, "pos": int, "has_gauss": int, "gauss": float},
            "python": {"version": int, "state": list, "gauss": (float, type(None))}},
}


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path:
    """Atomically write a training checkpoint that carries its own SHA-256 digest."""
    return save_atomic(with_digest(state), path)


def _expected_type(expected: Any) -> tuple[type, ...] | type:
    return dict if isinstance(expected, dict) or expected is STATE_DICT else expected


def _describe(expected: Any) -> str:
    if isinstance(expected, dict):
        return "a mapping"
    if expected is STATE_DICT:
        return "a state dict"
    return " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))


def _schema_problems(obj: Mapping[str, Any], schema: Mapping[str, Any], where: str = "") -> list[str]:
    """What in `obj` does not fit `schema` (key -> type, tuple of types, nested schema, or STATE_DICT: a mapping of
    names to tensors)."""
    problems = []
    for key, expected in schema.items():
        name, value = where + key, obj.get(key)
        if key not in obj:
            problems.append(f"'{name}' is missing")
        elif not isinstance(value, _expected_type(expected)):
            problems.append(f"'{name}' is of type {type(value).__name__}, not {_describe(expected)}")
        elif isinstance(expected, dict):
            problems += _schema_problems(value, expected, name + ".")
        elif expected is STATE_DICT:
            problems += [f"'{name}' entry {k!r} is of type {type(v).__name__}, not a tensor" for k, v in value.items()
                         if not (isinstance(k, str) and isinstance(v, torch.Tensor))][:1]
    return problems


def _validate(obj: Mapping[str, Any], schema: Mapping[str, Any], path: Path) -> None:
    problems = _schema_problems(obj, schema)
    if problems:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {'; '.join(problems[:3])}"
                              + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""))


def check_layout(obj: Mapping[str, Any], path: str | Path) -> None:
    """One of our checkpoints must hold what reading a backbone needs (a config and a model state); other files
    pass."""
    if obj.get("format") == FORMAT:
        _validate(obj, WEIGHTS_SCHEMA, Path(path))


def load_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A weights or checkpoint file as a dict (see reading.read_file), ours checked by check_layout. Every failure
    is a one-line CheckpointError. The digest is not checked here: see integrity.verify_digest."""
    obj = read_file(path, map_location).obj
    check_layout(obj, path)
    return obj


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", verify: bool = True) -> dict[str, Any]:
    """One of our training checkpoints: format marker, layout and (with `verify`) SHA-256 digest checked."""
    obj = load_file(path, map_location)
    if obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a mochi_hvs training checkpoint (no '{FORMAT}' marker)")
    _validate(obj, CHECKPOINT_SCHEMA, Path(path))
    if verify:
        verify_digest(path, embedded_digest(obj))
    return obj


def nonfinite_entries(state: Any, where: str = "") -> list[str]:
    """Paths ('a/b/c') of the floating-point tensors that hold NaN or infinity in nested mappings and sequences."""
    if isinstance(state, torch.Tensor):
        floating = state.is_floating_point() or state.is_complex()
        return [where] if floating and not bool(torch.isfinite(state).all()) else []
    if isinstance(state, Mapping):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return []
    return [entry for key, value in items
            for entry in nonfinite_entries(value, f"{where}/{key}" if where else str(key))]


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
