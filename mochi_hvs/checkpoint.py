"""Checkpoint files: atomic, durable writes; reads that fail with one clear error; integrity and structure
checks; finiteness of what is saved; RNG state capture."""

from __future__ import annotations

import errno
import io
import math
import os
import pickle
import random
import re
import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from .errors import UserError
from .integrity import (
    DIGEST_KEY,
    file_digest,
    recorded_in_sidecar,
    sidecar_line,
    sidecar_path,
    state_digest,
    with_digest,
)
from .run_files import LAST

FORMAT = "mochi_hvs.checkpoint"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's (zip) format; anything else is a plain or legacy-torch pickle
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
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


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, truncated, corrupt, fails its integrity check or is not ours."""


class NoSpaceError(CheckpointError):
    """The disk (or quota) filled up while a file was written; the file it was to replace is untouched."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"no space left on {path.parent} while writing {path.name}")
        self.folder = path.parent


# ------------------------------------------------------------------------------------------------- writing

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


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path:
    """Atomically write a training checkpoint that carries its own SHA-256 digest."""
    return save_atomic(with_digest(state), path)


def save_export(path: str | Path, write: Callable[[BinaryIO], Any]) -> Path:
    """Atomically write a plain file for other tools, then its `sha256sum` sidecar `<file>.sha256` (the old sidecar
    goes first, so an interruption leaves a file without digest rather than one with a stale digest)."""
    path = Path(path)
    sidecar_path(path).unlink(missing_ok=True)
    write_atomic(path, write)
    line = sidecar_line(path).encode()
    write_atomic(sidecar_path(path), lambda handle: handle.write(line))
    return path


# ------------------------------------------------------------------------------------------------- reading

NUMERIC_KINDS = "biufc"  # numpy dtype kinds an array in a plain pickle may have: bool, int, uint, float, complex


class _DtypeStub:
    """A numpy dtype as a pickle describes it (its type code, then its state); never built by numpy's unpickling."""

    def __init__(self, code: Any, align: Any = False, copy: Any = False) -> None:
        self.code, self.state = code, None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _ArrayStub:
    """An ndarray as a pickle describes it; turned into an array only after its state is checked (numpy's own
    ndarray.__setstate__ trusts the pickle, and a damaged one can corrupt the process's memory)."""

    def __init__(self) -> None:
        self.state = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _reconstruct(cls: Any, shape: Any, dtype: Any) -> _ArrayStub:
    return _ArrayStub()


def _checked_dtype(stub: Any) -> np.dtype:
    """A numeric dtype from its pickled code and byte order, or ValueError."""
    if not isinstance(stub, _DtypeStub) or not isinstance(stub.code, str):
        raise ValueError("an array's dtype is not a numpy dtype")
    dtype = np.dtype(stub.code)
    if dtype.kind not in NUMERIC_KINDS or not dtype.isbuiltin:
        raise ValueError(f"arrays of dtype {stub.code!r} are not read")
    order = stub.state[1] if isinstance(stub.state, tuple) and len(stub.state) > 1 else "="
    if order not in "<>|=":
        raise ValueError(f"unknown byte order {order!r}")
    return dtype.newbyteorder(order) if order in "<>" else dtype


def _array(stub: _ArrayStub) -> np.ndarray:
    """The array a checked (version, shape, dtype, fortran order, raw bytes) state describes, or ValueError."""
    state = stub.state
    if not (isinstance(state, tuple) and len(state) == 5):
        raise ValueError("an array's pickled state is not (version, shape, dtype, order, data)")
    _, shape, dtype, fortran, data = state
    dtype = _checked_dtype(dtype)
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise ValueError(f"an array's shape is {shape!r}")
    size = math.prod(shape) * dtype.itemsize
    if not isinstance(data, bytes) or len(data) != size:
        raise ValueError(f"an array of shape {shape} and dtype {dtype} needs {size} bytes of data")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()


def _materialise(obj: Any) -> Any:
    """The loaded object with every checked array stub turned into an array."""
    if isinstance(obj, _ArrayStub):
        return _array(obj)
    if isinstance(obj, dict):
        return {key: _materialise(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(value) for value in obj)
    return obj


class _NumpyUnpickler(pickle.Unpickler):
    """Plain pickles of containers and numpy arrays (detectron2 checkpoints); every other global is refused, and
    arrays are built from their checked state by `load`, never by numpy's unpickling."""

    STUBS = {("numpy", "ndarray"): _ArrayStub, ("numpy", "dtype"): _DtypeStub,
             ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
             ("numpy._core.multiarray", "_reconstruct"): _reconstruct}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.STUBS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")
        return self.STUBS[module, name]

    def load(self) -> Any:
        return _materialise(super().load())


def _read(path: Path, map_location: str | torch.device) -> Any:
    """The object in a torch file (weights_only) or in a plain pickle of numpy arrays; any failure is a
    CheckpointError. Files that are not zip archives are parsed from memory: a damaged length field in a pickle
    then cannot make a file read allocate the size it claims."""
    try:
        with open(path, "rb") as handle:
            zipped = handle.read(len(ZIP_MAGIC)) == ZIP_MAGIC
        if zipped:
            return torch.load(path, map_location=map_location, weights_only=True)
        content = io.BytesIO(path.read_bytes())
        first = _NumpyUnpickler(content).load()  # a legacy torch file starts with a magic number
        if isinstance(first, dict):
            return first
        content.seek(0)
        return torch.load(content, map_location=map_location, weights_only=True)
    except Exception as err:  # the reader of a damaged file can fail in any way; all of them mean one thing
        reason = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt and cannot be read "
                              f"({type(err).__name__}: {reason})") from err


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


def _mismatch(path: Path, actual: str, recorded: str, where: str) -> CheckpointError:
    return CheckpointError(f"{path} failed its integrity check: its SHA-256 {actual[:16]}... differs from the "
                           f"{recorded[:16]}... recorded {where}, so the file is corrupt or was changed after it "
                           "was written; --no-verify loads it anyway")


def verify_digest(obj: Mapping[str, Any], path: str | Path) -> None:
    """Check a loaded file against every SHA-256 digest it has: its `sha256` entry (our checkpoints) and a
    `<file>.sha256` sidecar (exports, or recorded by the user with sha256sum). A file with neither is refused."""
    path = Path(path)
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        recorded = recorded_in_sidecar(path)
        if recorded is None:
            raise CheckpointError(f"{sidecar} is not a sha256sum line ('<64 hex digits>  <file name>')")
        actual = file_digest(path)
        if actual != recorded:
            raise _mismatch(path, actual, recorded, f"in {sidecar.name}")
    if DIGEST_KEY in obj:
        actual = state_digest(obj)
        if actual != obj[DIGEST_KEY]:
            raise _mismatch(path, actual, str(obj[DIGEST_KEY]), "inside it")
    elif not sidecar.is_file():
        raise CheckpointError(f"{path} has no integrity digest (no '{DIGEST_KEY}' entry inside, no {sidecar.name} "
                              f"beside it); --no-verify loads it anyway, or record one with "
                              f"`sha256sum {path.name} > {sidecar.name}`")


def load_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A weights or checkpoint file as a dict (torch.load weights_only, or numpy-only unpickling; our checkpoints'
    model and config checked). Every failure is a one-line CheckpointError. The digest is not checked here: see
    verify_digest."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    obj = _read(path, map_location)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a state dictionary")
    if obj.get("format") == FORMAT:
        _validate(obj, WEIGHTS_SCHEMA, path)
    return obj


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", verify: bool = True) -> dict[str, Any]:
    """One of our training checkpoints: format marker, layout and (with `verify`) SHA-256 digest checked."""
    obj = load_file(path, map_location)
    if obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a mochi_hvs training checkpoint (no '{FORMAT}' marker)")
    _validate(obj, CHECKPOINT_SCHEMA, Path(path))
    if verify:
        verify_digest(obj, path)
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
