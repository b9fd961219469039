from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mochi_hvs import pretrain
from mochi_hvs.data.datasets import FASHION_MNIST_ROOT, DatasetError, check_splits


def image_tree(root: Path, split: str, per_class: int = 8) -> None:
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / split / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")


def fashion_mnist_without_test_files(root: Path) -> None:
    root.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (root / name).symlink_to(Path(FASHION_MNIST_ROOT) / name)


@pytest.mark.parametrize(("dataset", "message"), [
    ("imagefolder", "imagefolder: {root}/val not found (expected root/val/<class>/<image>)"),
    ("fashion_mnist", "Fashion-MNIST file t10k-images-idx3-ubyte(.gz) not found in {root}."),
], ids=["imagefolder", "fashion_mnist"])
def test_a_missing_evaluation_split_stops_the_run_before_its_first_step(quick_overrides, tmp_path, capsys, dataset,
                                                                        message):
    root = tmp_path / "data"
    if dataset == "imagefolder":
        image_tree(root, "train")
    else:
        fashion_mnist_without_test_files(root)
    status = pretrain.main(["--set", *quick_overrides, f"data.name={dataset}", f"data.root={root}",
                            "data.train_subset=16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and err[0].startswith("error: " + message.format(root=root)), err
    assert not (tmp_path / "tiny").exists()  # nothing trained, nothing written


def test_check_splits_checks_each_split_by_existence_alone(tmp_path):
    image_tree(tmp_path, "train", per_class=1)
    check_splits("imagefolder", str(tmp_path), ("pretrain", "train"))
    (tmp_path / "val").mkdir()
    with pytest.raises(DatasetError, match="Couldn't find any class folder"):
        check_splits("imagefolder", str(tmp_path), ("test",))
    check_splits("fashion_mnist", None, ("pretrain", "train", "test"))
    check_splits("mnist5k", None, ("pretrain", "test"))
    cifar = tmp_path / "cifar-10-batches-py"
    cifar.mkdir()
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"):
        (cifar / name).write_bytes(b"")
    check_splits("cifar10", str(tmp_path), ("pretrain", "train"))
    with pytest.raises(DatasetError, match=f"cifar10: {cifar} is missing or incomplete \\(no test_batch\\)"):
        check_splits("cifar10", str(tmp_path), ("test",))
    stl = tmp_path / "stl10_binary"
    stl.mkdir()
    for name in ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"):
        (stl / name).write_bytes(b"")
    check_splits("stl10", str(tmp_path), ("train", "test"))
    with pytest.raises(DatasetError, match="no unlabeled_X.bin"):
        check_splits("stl10", str(tmp_path), ("pretrain",))
