"""Plain pickles of containers and numpy arrays (detectron2 checkpoints), read without running code: every global
but numpy's array and dtype is refused, and arrays are built from their checked state, never by numpy's unpickling
(which trusts the pickle: a damaged one can corrupt the process's memory)."""

from __future__ import annotations

import math
import pickle
from typing import Any

import numpy as np

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


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle asks for a global other than numpy's array and dtype: building it would run code."""

    def __init__(self, name: str) -> None:
        super().__init__(f"refusing to load {name}: only numpy arrays are allowed")
        self.name = name


class NumpyUnpickler(pickle.Unpickler):
    """Plain pickles of containers and numpy arrays (detectron2 checkpoints); every other global is refused, and
    arrays are built from their checked state by `load`, never by numpy's unpickling."""

    STUBS = {("numpy", "ndarray"): _ArrayStub, ("numpy", "dtype"): _DtypeStub,
             ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
             ("numpy._core.multiarray", "_reconstruct"): _reconstruct}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.STUBS:
            raise RefusedGlobal(f"{module}.{name}")
        return self.STUBS[module, name]

    def load(self) -> Any:
        return _materialise(super().load())
