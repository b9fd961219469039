"""Two small offline digit sets for transfer: scikit-learn's digits (1,797 images, 8 x 8) and OpenCV's digits.png
(5,000 images, 20 x 20; optional, from the Debian package opencv-doc). Both are grayscale uint8 and have no official
split: a fixed, seeded, class-stratified 2/3 train : 1/3 test split is made here."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
from PIL import Image

from .datasets import COMPRESSED_FILE_ERRORS, UNREADABLE_IMAGE_ERRORS, DatasetError, ImageSet, damaged_file
from .subsets import fraction_subset

TRAIN_FRACTION = 2 / 3  # of every class; the rest is the test split
SPLIT_SEED = 0  # the split is part of the task: it never follows the run's seed
DIGIT_CLASSES = [str(d) for d in range(10)]
SKLEARN_DIGITS_MAX = 16  # load_digits() pixel values are counts 0..16 (4 x 4 blocks of a 32 x 32 bitmap)
OPENCV_DIGITS_FILE = "digits.png"
OPENCV_DIGITS_ROOT = "/usr/share/doc/opencv-doc/examples/data"
OPENCV_DIGITS_INSTALL = "sudo apt-get install -y opencv-doc"
OPENCV_CELL = 20  # pixels per side of one digit
OPENCV_GRID = (50, 100)  # rows x columns of cells; every 5 rows hold one digit, 0 to 9
OPENCV_REPAIR = (f"reinstall it with `sudo apt-get install --reinstall opencv-doc`, or set data.root to an intact "
                 f"{OPENCV_DIGITS_FILE}")


def split_indices(labels: np.ndarray, train: bool) -> np.ndarray:
    """Sorted indices of the train (2/3 of every class) or test (the rest) split, the same on every call."""
    chosen = fraction_subset(labels, TRAIN_FRACTION, SPLIT_SEED)
    return chosen if train else np.setdiff1d(np.arange(len(labels)), chosen)


def split_set(images: np.ndarray, labels: np.ndarray, train: bool) -> ImageSet:
    """The train or test split of (N, H, W) grayscale digits as an in-memory ImageSet."""
    chosen = split_indices(labels, train)
    return ImageSet(labels=labels[chosen], classes=DIGIT_CLASSES, array=images[chosen, ..., None])


def load_sklearn_digits(train: bool) -> ImageSet:
    """scikit-learn's digits, values 0..16 scaled to 0..255 (the transform upsamples them to data.image_size)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255 / SKLEARN_DIGITS_MAX)).astype(np.uint8)
    return split_set(images, digits.target.astype(np.int64), train)


def opencv_digits_file(root: str | None) -> Path:
    """digits.png (or digits.png.gz): data.root when given (the file or its folder), else opencv-doc's copy."""
    path = Path(root or OPENCV_DIGITS_ROOT)
    candidates = [path / OPENCV_DIGITS_FILE, path / f"{OPENCV_DIGITS_FILE}.gz"] if path.is_dir() or root is None \
        else [path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DatasetError(f"opencv_digits: {' or '.join(map(str, candidates))} not found; install it with "
                       f"`{OPENCV_DIGITS_INSTALL}`, or set data.root to {OPENCV_DIGITS_FILE} (optionally gzipped)")


def load_opencv_digits(root: str | None, train: bool) -> ImageSet:
    """OpenCV's digits.png: a 2000 x 1000 grayscale sheet of 50 x 100 cells of 20 x 20, 500 per digit (rows 0-4:
    zeros, 5-9: ones, ...)."""
    path = opencv_digits_file(root)
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            sheet = np.asarray(img.convert("L"))
    except (*COMPRESSED_FILE_ERRORS, *UNREADABLE_IMAGE_ERRORS) as err:
        raise damaged_file("opencv_digits", path, f"{type(err).__name__}: {err}", OPENCV_REPAIR) from err
    rows, cols = OPENCV_GRID
    if sheet.shape != (rows * OPENCV_CELL, cols * OPENCV_CELL):
        raise damaged_file("opencv_digits", path, f"{sheet.shape[1]} x {sheet.shape[0]} pixels, expected "
                           f"{cols * OPENCV_CELL} x {rows * OPENCV_CELL}", OPENCV_REPAIR)
    cells = sheet.reshape(rows, OPENCV_CELL, cols, OPENCV_CELL).transpose(0, 2, 1, 3).reshape(-1, OPENCV_CELL,
                                                                                               OPENCV_CELL)
    labels = np.repeat(np.arange(len(DIGIT_CLASSES)), len(cells) // len(DIGIT_CLASSES))
    return split_set(cells, labels, train)
