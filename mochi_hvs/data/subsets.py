"""Deterministic labelled subsets for semi-supervised evaluation: class-stratified, uniformly random, or listed in a
split file (read and written here)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .datasets import DatasetError, ImageSet


def _take_per_class(labels: np.ndarray, counts: dict[int, int], seed: int) -> np.ndarray:
    """Sorted indices: `counts[c]` items of each class c, drawn by a seeded permutation within the class."""
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == cls))[:count] for cls, count in sorted(counts.items())]
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def fraction_subset(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """About `fraction` of each class (rounded, at least one image per class), fixed by `seed`."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"label fraction must be in (0, 1]; got {fraction}")
    classes, sizes = np.unique(labels[labels >= 0], return_counts=True)
    counts = {int(c): max(1, math.floor(fraction * n + 0.5)) for c, n in zip(classes, sizes, strict=True)}
    return _take_per_class(labels, counts, seed)


def per_class_subset(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """`per_class` images of each class (all of a smaller class), fixed by `seed`."""
    if per_class < 1:
        raise ConfigError(f"labels per class must be >= 1; got {per_class}")
    return _take_per_class(labels, {int(c): per_class for c in np.unique(labels[labels >= 0])}, seed)


def random_subset(size: int, count: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of `count` of `size` items drawn uniformly without replacement (no class balance), fixed by
    `seed`."""
    return np.sort(np.random.default_rng(seed).choice(size, count, replace=False)).astype(np.int64)


def split_file_subset(images: ImageSet, path: str | Path) -> np.ndarray:
    """Indices of the images a split file lists, one per line: file names (e.g. the ImageNet 1%/10% lists,
    matched on the base name) for file-based sets, integer indices for in-memory sets."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"split file not found: {path}")
    entries = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if images.files is None:
        try:
            wanted = np.array(sorted({int(e) for e in entries}), dtype=np.int64)
        except ValueError as err:
            raise DatasetError(f"{path}: an in-memory dataset needs integer image indices, one per line "
                               f"({err})") from err
        bad = wanted[(wanted < 0) | (wanted >= len(images))]
        if len(bad):
            raise DatasetError(f"{path}: indices out of range 0..{len(images) - 1}: {bad[:5].tolist()}")
        return wanted
    position = {Path(f).name: i for i, f in enumerate(images.files)}
    unknown = [e for e in entries if Path(e).name not in position]
    if unknown:
        raise DatasetError(f"{path}: {len(unknown)} listed images are not in the dataset, e.g. {unknown[:3]}")
    return np.array(sorted({position[Path(e).name] for e in entries}), dtype=np.int64)


def write_split_file(images: ImageSet, indices: np.ndarray, path: str | Path) -> Path:
    """Write the images at `indices` as a split file that split_file_subset reads back: one integer index per line
    for in-memory sets, one file path per line for file-based sets (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = [str(int(i)) if images.files is None else images.files[i] for i in np.sort(indices)]
    path.write_text("".join(f"{entry}\n" for entry in entries))
    return path
