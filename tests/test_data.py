import gzip

import numpy as np
import pytest
import torch

from mochi_hvs.config import LocalCrops, load_config
from mochi_hvs.data.augment import post_crop_transform
from mochi_hvs.data.batches import DeviceAugmentedBatches, LoaderBatches
from mochi_hvs.data.datasets import DatasetError, balanced_subset, load_fashion_mnist, load_images
from mochi_hvs.data.loader import EpochSampler, TooFewImagesError, pretrain_loader
from mochi_hvs.data.views import ViewSampler


def test_fashion_mnist_official_split():
    train = load_fashion_mnist(None, train=True)
    test = load_fashion_mnist(None, train=False)
    assert len(train) == 60000 and len(test) == 10000
    assert train.array.shape == (60000, 28, 28, 1) and train.array.dtype == np.uint8
    assert np.bincount(train.labels).tolist() == [6000] * 10
    image = train.image(0)
    assert image.shape == (3, 28, 28) and image.dtype == torch.uint8


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_fashion_mnist(str(tmp_path), train=True)
    assert "apt-get install -y dataset-fashion-mnist" in str(err.value)
    assert "data.root" in str(err.value)


def test_fashion_mnist_reads_uncompressed_idx_from_custom_root(tmp_path):
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    header = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in images.shape)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(header + images.tobytes())
    labels = np.array([3, 7], dtype=np.uint8)
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as handle:
        handle.write(bytes([0, 0, 8, 1]) + (2).to_bytes(4, "big") + labels.tobytes())
    data = load_fashion_mnist(str(tmp_path), train=False)
    assert data.labels.tolist() == [3, 7]
    assert np.array_equal(data.array[1, ..., 0], images[1])


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10", "imagefolder"])
def test_other_datasets_need_an_existing_root(name, tmp_path):
    with pytest.raises(DatasetError, match="data.root"):
        load_images(name, None, "train")
    with pytest.raises(DatasetError):
        load_images(name, str(tmp_path / "absent"), "train")


def test_cifar10_from_standard_pickle_batches(tmp_path, monkeypatch):
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, handle)
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)  # md5s of the real files
    data = load_images("cifar10", str(tmp_path), "train")
    assert len(data) == 20 and data.array.shape == (20, 32, 32, 3)
    assert data.image(0).shape == (3, 32, 32)


def test_stl10_from_standard_binaries_with_unlabelled_images_for_pretraining(tmp_path, monkeypatch):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    rng = np.random.default_rng(0)
    counts = {"train": 6, "test": 4, "unlabeled": 5}
    for split, count in counts.items():
        rng.integers(0, 255, count * 3 * 96 * 96, dtype=np.uint8).tofile(folder / f"{split}_X.bin")
        if split != "unlabeled":
            (np.arange(count, dtype=np.uint8) % 10 + 1).tofile(folder / f"{split}_y.bin")  # 1-based labels
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    import torchvision.datasets.stl10 as stl10

    monkeypatch.setattr(stl10, "check_integrity", lambda *args, **kwargs: True)  # md5s of the real files
    pretrain, train, test = (load_images("stl10", str(tmp_path), split) for split in ("pretrain", "train", "test"))
    assert (len(pretrain), len(train), len(test)) == (11, 6, 4)
    assert pretrain.array.shape == (11, 96, 96, 3) and (pretrain.labels == -1).sum() == 5
    assert train.labels.tolist() == [0, 1, 2, 3, 4, 5] and train.image(0).shape == (3, 96, 96)


def test_imagefolder_tree(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 30), (i * 50, 10, 10)).save(tmp_path / split / cls / f"{i}.png")
    train = load_images("imagefolder", str(tmp_path), "train")
    assert train.classes == ["cat", "dog"] and train.labels.tolist() == [0, 0, 1, 1]
    assert train.image(0).size == (40, 30)
    assert len(load_images("imagefolder", str(tmp_path), "test")) == 4


def test_pretraining_on_fewer_images_than_a_batch_is_one_error_line(tmp_path, capsys):
    from PIL import Image

    from mochi_hvs.pretrain import main as pretrain_main

    for split, count in (("train", 3), ("val", 1)):
        (tmp_path / split / "tile").mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (40, 40), (i * 50, 10, 10)).save(tmp_path / split / "tile" / f"{i}.png")
    code = pretrain_main(["--config", "configs/moco_v2.yaml", "--set", "data.name=imagefolder",
                          f"data.root={tmp_path}", "data.image_size=32", "device=cpu", "data.workers=0",
                          f"output_dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: the pretraining data holds 3 image(s), fewer than one batch of 256 "
                                 "(optim.batch_size=256): lower optim.batch_size to at most 3, or give it more images"]


def test_epoch_sampler_counts_every_process_in_the_batch_it_cannot_fill():
    message = "holds 15 image\\(s\\), fewer than one batch of 16 \\(optim.batch_size=16\\)"
    with pytest.raises(TooFewImagesError, match=message):
        EpochSampler(15, local_batch=8, seed=0, rank=1, world_size=2)
    assert EpochSampler(16, local_batch=8, seed=0, rank=1, world_size=2).batches_per_epoch == 1


def test_balanced_subset_is_deterministic_and_balanced():
    labels = np.repeat(np.arange(10), [100, 90, 80, 70, 60, 50, 40, 30, 20, 200])
    a = balanced_subset(labels, 100, seed=3)
    b = balanced_subset(labels, 100, seed=3)
    assert np.array_equal(a, b) and len(np.unique(a)) == 100
    assert np.bincount(labels[a], minlength=10).tolist() == [10] * 10
    assert not np.array_equal(a, balanced_subset(labels, 100, seed=4))


def test_epoch_sampler_shards_resumes_and_reshuffles():
    full = EpochSampler(100, local_batch=10, seed=1)
    order = [i for i, _ in full]
    assert len(order) == 100 and sorted(order) == list(range(100))
    full.set_epoch(1)
    assert [i for i, _ in full] != order
    full.set_epoch(0, start_batch=3)
    assert [i for i, _ in full] == order[30:] and len(full) == 70
    ranks = [EpochSampler(100, local_batch=10, seed=1, rank=r, world_size=2) for r in range(2)]
    shards = [[i for i, _ in s] for s in ranks]
    assert len(shards[0]) == len(shards[1]) == 50
    assert sorted(shards[0] + shards[1]) == list(range(100))
    assert all(e == 0 for _, e in full)


def test_view_sampler_boxes_describe_the_crops():
    image = torch.zeros(3, 40, 40, dtype=torch.uint8)
    image[:, :20, :] = 255  # top half white
    post = post_crop_transform("mocov2_small", 16, [0.0] * 3, [1.0] * 3)
    sampler = ViewSampler(4, 16, lambda x: x.float() / 255)  # no photometric change: read the crop back
    torch.manual_seed(0)
    views, boxes = sampler(image)
    assert views.shape == (4, 3, 16, 16) and boxes.shape == (4, 4)
    assert (boxes[:, 0] < boxes[:, 2]).all() and (boxes[:, 1] < boxes[:, 3]).all()
    assert (boxes >= 0).all() and (boxes <= 1).all()
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert (area >= 0.2 - 0.05).all()
    for view, box in zip(views, boxes, strict=True):
        white_fraction = float(view.mean())
        top, bottom = float(box[1]), float(box[3])
        expected = max(0.0, min(bottom, 0.5) - top) / (bottom - top)
        assert abs(white_fraction - expected) < 0.1
    torch.manual_seed(0)
    out, _ = ViewSampler(2, 16, post)(image)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 16, 16)


@pytest.mark.parametrize("source", [DeviceAugmentedBatches, LoaderBatches])
def test_batches_are_a_function_of_seed_epoch_and_batch(source):
    cfg = load_config(None, ["data.workers=0"])
    images = load_fashion_mnist(None, train=False).subset(np.arange(64))
    a = source(images, cfg.data, 2, 16, seed=5, device=torch.device("cpu"))
    first = list(a)
    assert len(first) == 4 and first[0].views.shape == (16, 2, 3, 28, 28)
    assert first[0].boxes.shape == (16, 2, 4)
    assert torch.equal(first[0].labels, torch.as_tensor(images.labels[first[0].index.numpy()]))
    again = list(source(images, cfg.data, 2, 16, seed=5, device=torch.device("cpu")))
    assert all(torch.equal(x.views, y.views) for x, y in zip(first, again, strict=True))
    a.set_epoch(0, start_batch=2)
    resumed = list(a)
    assert len(resumed) == 2 and torch.equal(resumed[0].views, first[2].views)
    a.set_epoch(1)
    assert not torch.equal(list(a)[0].views, first[0].views)


def test_cpu_batches_do_not_depend_on_worker_count():
    images = load_fashion_mnist(None, train=False).subset(np.arange(32))
    outs = []
    for workers in (0, 2):
        cfg = load_config(None, [f"data.workers={workers}", "data.augment_on=cpu"])
        outs.append(list(LoaderBatches(images, cfg.data, 2, 8, seed=1, device=torch.device("cpu"))))
    assert all(torch.equal(x.views, y.views) for x, y in zip(*outs, strict=True))


def test_brightness_strength_reaches_the_cpu_jitter():
    grey = 128  # constant: brightness alone changes it, by its factor (up to 1.8 x 128 < 255)
    image = torch.full((3, 16, 16), grey, dtype=torch.uint8)
    post = post_crop_transform("mocov2_small", 16, [0.0] * 3, [1.0] * 3, color_jitter=(0.8, 0.0, 0.0, 0.0))
    factors = []
    for seed in range(300):
        torch.manual_seed(seed)
        factors.append(float(post(image).mean()) / (grey / 255))
    # uint8 rounding (jitter, grayscale) moves a factor by at most about 2 / 128
    assert 0.2 - 0.02 <= min(factors) and max(factors) <= 1.8 + 0.02
    assert min(factors) < 0.55 and max(factors) > 1.45  # beyond aug+'s [0.6, 1.4]


def test_both_data_paths_take_the_configured_color_jitter():
    cfg = load_config(None, ["data.color_jitter=[0.8,0.7,0,0]", "data.workers=0"])
    images = load_fashion_mnist(None, train=False).subset(np.arange(32))
    crops = LocalCrops(2, 12, (0.05, 0.4))
    device = DeviceAugmentedBatches(images, cfg.data, 2, 8, seed=0, device=torch.device("cpu"), local_crops=crops)
    assert device.augment.color_jitter == device.augment_local.color_jitter == (0.8, 0.7, 0.0, 0.0)
    dataset = pretrain_loader(images, cfg.data, 2, 8, seed=0, local_crops=crops).dataset
    for sampler in (dataset.sampler, dataset.local_sampler):
        jitter = sampler.post_crop.transforms[0].transforms[0]
        assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == (
            (pytest.approx(0.2), 1.8), (pytest.approx(0.3), 1.7), None, None)
