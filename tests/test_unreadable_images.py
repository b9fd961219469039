"""Undecodable files inside an ImageFolder tree: one clear error naming the file, or (data.skip_unreadable)
a deterministic substitute with one warning per skipped file, on the pretraining and the evaluation loaders."""

import multiprocessing

import numpy as np
import pytest
import torch
from PIL import Image

from mochi_hvs import pretrain
from mochi_hvs.config import load_config
from mochi_hvs.data.batches import LoaderBatches
from mochi_hvs.data.datasets import DatasetError, ImageSet, load_images
from mochi_hvs.data.loader import eval_loader, supervised_loader

# ImageFolder order of the train tree: cat/0-5.png then dog/0-4.png, dog/5.jpg.
UNREADABLE_TRAIN = {2: "cat/2.png", 3: "cat/3.png", 11: "dog/5.jpg"}  # empty, truncated png, truncated jpg
PIL_ERRORS = {2: "cannot identify image file", 3: "image file is truncated", 11: "Truncated File Read"}
SUBSTITUTE_TRAIN = {2: 4, 3: 4, 11: 0}  # the next readable image in dataset order, wrapping around
UNREADABLE_VAL, SUBSTITUTE_VAL = {4: "dog/1.png"}, {4: 5}  # val: cat/0-2.png, dog/0-2.png
SKIP_HINT = ("--set data.skip_unreadable=true to skip unreadable images (each is named in a warning and the next "
             "readable image takes its place)")
WARNING = "warning: skipped unreadable image {} ({} so far); the next readable image takes its place"


def _write_tree(root, split, per_class, broken: dict[str, int]):
    """Random 24x20 images root/split/{cat,dog}/<i>.png (.jpg where `broken` names one), then each file named in
    `broken` cut to that many bytes."""
    rng = np.random.default_rng(len(split))
    for cls in ("cat", "dog"):
        (root / split / cls).mkdir(parents=True)
        for i in range(per_class):
            name = f"{cls}/{i}.jpg" if f"{cls}/{i}.jpg" in broken else f"{cls}/{i}.png"
            Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(root / split / name)
    for name, size in broken.items():
        path = root / split / name
        path.write_bytes(path.read_bytes()[:size])


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "tree"
    _write_tree(root, "train", 6, {"cat/2.png": 0, "cat/3.png": 300, "dog/5.jpg": 200})
    _write_tree(root, "val", 3, {"dog/1.png": 0})
    return root


def _data_cfg(tree, workers, skip):
    return load_config(None, ["data.name=imagefolder", f"data.root={tree}", "data.image_size=16",
                              "data.augment_on=cpu", f"data.workers={workers}",
                              f"data.skip_unreadable={str(skip).lower()}"]).data


def _repaired(images: ImageSet, substitute: dict[int, int]) -> ImageSet:
    """The same slots with each unreadable file replaced by its substitute's file and label."""
    source = [substitute.get(i, i) for i in range(len(images))]
    return ImageSet(labels=images.labels[source], classes=images.classes, files=[images.files[i] for i in source])


def _unreadable_error(tree, split, unreadable) -> set[str]:
    return {f"cannot read image {tree / split / name} (" for name in unreadable.values()}


def test_image_set_names_the_unreadable_file_and_the_switch(tree):
    images = load_images("imagefolder", str(tree), "train")
    assert [images.files[i] for i in UNREADABLE_TRAIN] == [str(tree / "train" / n) for n in UNREADABLE_TRAIN.values()]
    for index, name in UNREADABLE_TRAIN.items():
        with pytest.raises(DatasetError) as err:
            images.image(index)
        message = str(err.value)
        assert message.startswith(f"cannot read image {tree / 'train' / name} (") and message.endswith(SKIP_HINT)
        assert PIL_ERRORS[index] in message
    assert images.image(4).size == (20, 24)


@pytest.mark.parametrize("workers", [0, 2])
def test_pretraining_stops_with_one_line_naming_the_file(tree, workers):
    children = set(multiprocessing.active_children())
    images = load_images("imagefolder", str(tree), "train")
    batches = LoaderBatches(images, _data_cfg(tree, workers, False), 2, 4, seed=3, device=torch.device("cpu"))
    with pytest.raises(DatasetError) as err:
        list(batches)
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message and message.endswith(SKIP_HINT)
    assert any(message.startswith(start) for start in _unreadable_error(tree, "train", UNREADABLE_TRAIN))
    assert not set(multiprocessing.active_children()) - children  # the workers stopped with the error, not later
    with pytest.raises(DatasetError) as again:  # the persistent workers' loader starts afresh on the next pass
        list(batches)
    assert str(again.value) == message


def test_pretraining_error_is_the_same_with_and_without_workers(tree):
    images = load_images("imagefolder", str(tree), "train")
    messages = []
    for workers in (0, 2):
        with pytest.raises(DatasetError) as err:
            list(LoaderBatches(images, _data_cfg(tree, workers, False), 2, 4, seed=3, device=torch.device("cpu")))
        messages.append(str(err.value))
    assert messages[0] == messages[1]


@pytest.mark.parametrize("workers", [0, 2])
def test_skipping_substitutes_the_next_readable_image_deterministically(tree, workers, capsys):
    images = load_images("imagefolder", str(tree), "train")
    cpu = torch.device("cpu")
    skipping = LoaderBatches(images, _data_cfg(tree, workers, True), 2, 4, seed=3, device=cpu)
    reference = LoaderBatches(_repaired(images, SUBSTITUTE_TRAIN), _data_cfg(tree, 0, False), 2, 4, seed=3, device=cpu)
    for epoch in (0, 1):
        skipping.set_epoch(epoch)
        reference.set_epoch(epoch)
        straight, expected = list(skipping), list(reference)
        assert len(straight) == len(expected) == 3
        for got, want in zip(straight, expected, strict=True):
            assert torch.equal(got.views, want.views) and torch.equal(got.labels, want.labels)
            assert torch.equal(got.index, want.index)
            assert got.source.tolist() == [SUBSTITUTE_TRAIN.get(i, i) for i in got.index.tolist()]
        skipping.set_epoch(epoch, start_batch=1)  # a run resumed mid-epoch sees the straight run's batches
        resumed = list(skipping)
        assert all(torch.equal(a.views, b.views) for a, b in zip(resumed, straight[1:], strict=True))
    lines = capsys.readouterr().err.splitlines()  # once per file over two epochs and a resume
    named = [line.split(" ")[4] for line in lines]
    assert sorted(named) == sorted(str(tree / "train" / name) for name in UNREADABLE_TRAIN.values())
    assert lines == [WARNING.format(path, count) for count, path in enumerate(named, 1)]


@pytest.mark.parametrize("make_loader", [eval_loader, supervised_loader])
@pytest.mark.parametrize("workers", [0, 2])
def test_evaluation_loaders_stop_with_one_line_naming_the_file(tree, workers, make_loader):
    images = load_images("imagefolder", str(tree), "test")
    extra = {"seed": 0} if make_loader is supervised_loader else {}
    loader = make_loader(images, _data_cfg(tree, workers, False), 2, workers=workers, **extra)
    children = set(multiprocessing.active_children())
    with pytest.raises(DatasetError) as err:
        list(loader)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"cannot read image {tree / 'val' / 'dog/1.png'} (")
    assert message.endswith(SKIP_HINT)
    assert not set(multiprocessing.active_children()) - children


@pytest.mark.parametrize("workers", [0, 2])
def test_evaluation_loader_skips_to_the_next_readable_image(tree, workers, capsys):
    images = load_images("imagefolder", str(tree), "test")
    loader = eval_loader(images, _data_cfg(tree, workers, True), 2, workers=workers)
    reference = eval_loader(_repaired(images, SUBSTITUTE_VAL), _data_cfg(tree, 0, False), 2, workers=0)
    for _ in range(2):
        got, want = list(loader), list(reference)
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
            assert torch.equal(a.index, b.index)
    assert torch.cat([b.source for b in got]).tolist() == [0, 1, 2, 3, 5, 5]
    assert capsys.readouterr().err.splitlines() == [WARNING.format(tree / "val" / "dog/1.png", 1)]


def test_a_tree_with_no_readable_image_is_an_error(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        (tmp_path / "train" / cls / "0.png").write_bytes(b"")
    images = load_images("imagefolder", str(tmp_path), "train")
    loader = eval_loader(images, _data_cfg(tmp_path, 0, True), 2, workers=0)
    with pytest.raises(DatasetError, match="none of the 2 images can be read"):
        list(loader)


def test_pretrain_cli_reports_a_worker_error_in_one_line(tree, tmp_path, capsys):
    status = pretrain.main([
        "--set", "data.name=imagefolder", f"data.root={tree}", "data.image_size=16", "data.augment_on=cpu",
        "data.workers=2", f"output_dir={tmp_path / 'runs'}", "name=broken", "optim.batch_size=12",
        "moco.queue_size=24", "model.bn_splits=1", "optim.epochs=1", "eval.batch_size=4", "device=cpu",
    ])
    err = capsys.readouterr().err  # the error line may follow the epoch's progress bar (carriage returns)
    assert status == 2 and "Traceback" not in err and err.count("error:") == 1
    message = err.split("error: ", 1)[1].split("\n", 1)[0]
    assert any(message.startswith(start) for start in _unreadable_error(tree, "train", UNREADABLE_TRAIN))
    assert message.endswith(SKIP_HINT)
