"""The raw-pixel reference: pixel features (shape, values, determinism, cache) and --pixels in the kNN and linear
commands, checked against an independent computation."""

import json
import os

import numpy as np
import pytest
import torch
from knn_reference import reference_knn
from PIL import Image

from mochi_hvs.config import DataConfig
from mochi_hvs.data.datasets import ImageSet, labelled_splits
from mochi_hvs.evaluation import pixel_cache
from mochi_hvs.evaluation.commands import knn_main, linear_main, semisup_main
from mochi_hvs.evaluation.pixel_cache import cache_path, pixel_features

CPU = torch.device("cpu")
# Each pixel value goes through u / 255, (x - mean) / std and back (y * std + mean) in float32: a handful of
# correctly rounded operations on values below 3, each off by at most 2**-23.
PIXEL_ATOL = 8 * 2**-23


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def small_splits(train=200, test=50):
    return labelled_splits("fashion_mnist", None, train, test, 0)


def in_memory(n=6, size=8, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return ImageSet(labels=np.arange(n) % 2, classes=["a", "b"],
                    array=rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8))


def test_pixel_features_are_the_pixel_values_in_dataset_order_and_deterministic(cache_home):
    train, _ = small_splits()
    features, labels = pixel_features(train, DataConfig(), 64, CPU)
    assert features.shape == (200, 784) and features.dtype == torch.float32  # one channel of 28 x 28
    expected = torch.from_numpy(train.array.reshape(200, -1) / 255.0)
    assert (features.double() - expected).abs().max() <= PIXEL_ATOL
    assert labels.tolist() == train.labels.tolist()
    assert torch.equal(pixel_features(train, DataConfig(), 64, CPU)[0], features)  # read back from the cache
    (file,) = (cache_home / "mochi_hvs" / "pixels").iterdir()
    file.unlink()
    assert torch.equal(pixel_features(train, DataConfig(), 16, CPU)[0], features)  # recomputed: the same values


def test_colour_sets_keep_three_channels():
    images = in_memory(channels=3)
    features, _ = pixel_features(images, DataConfig(image_size=8), 4, CPU)
    assert features.shape == (6, 3 * 8 * 8)
    expected = torch.from_numpy(images.array.transpose(0, 3, 1, 2).reshape(6, -1) / 255.0)  # channel-major, as CHW
    assert (features.double() - expected).abs().max() <= PIXEL_ATOL
    assert pixel_features(in_memory(channels=1), DataConfig(image_size=8), 4, CPU)[0].shape == (6, 64)


def test_the_cache_key_follows_the_images_and_the_data_settings(tmp_path):
    images, data = in_memory(), DataConfig(image_size=8)
    key = cache_path(images, data)
    assert cache_path(in_memory(), DataConfig(image_size=8)) == key
    changed = in_memory()
    changed.array[0, 0, 0, 0] ^= 1
    assert cache_path(changed, data) != key
    assert cache_path(images, DataConfig(image_size=16)) != key
    assert cache_path(images, DataConfig(image_size=8, mean=[0.5] * 3)) != key
    files = []
    for i in range(2):
        files.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (8, 8), (i * 90, 0, 0)).save(files[-1])
    on_disk = ImageSet(labels=np.array([0, 1]), classes=["a", "b"], files=files)
    before = cache_path(on_disk, data)
    os.utime(files[0], ns=(0, 10**9))
    assert cache_path(on_disk, data) != before  # a rewritten file is a new set


def test_an_unreadable_cache_file_is_recomputed_and_replaced():
    images, data = in_memory(), DataConfig(image_size=8)
    path = cache_path(images, data)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"truncated")
    features, _ = pixel_features(images, data, 4, CPU)
    assert features.shape == (6, 192)
    assert torch.equal(torch.load(path, weights_only=True)["features"], features)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no partial files left behind


def reference_knn_top1(k, temperature=0.07):
    """Weighted kNN top-1 of L2-normalised raw pixels in float64 with numpy, independent of the toolkit's search.
    Also returns the smallest margins that decide it, so that float32 rounding cannot change the figure."""
    train, test = small_splits()
    return reference_knn(train.array.reshape(len(train), -1) / 255.0, train.labels,
                         test.array.reshape(len(test), -1) / 255.0, test.labels, k, temperature=temperature)


def read_results(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_knn_of_the_raw_pixels_matches_an_independent_computation(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results.jsonl"
    args = ["--pixels", "--results", str(results), "--set", "eval.knn_train_subset=200", "eval.knn_test_subset=50",
            "eval.batch_size=50", "device=cpu"]
    assert knn_main(args) == 0
    assert "knn | raw pixels" in capsys.readouterr().out
    (entry,) = read_results(results)
    assert entry["weights"] == {"format": "pixels"} and entry["checkpoint"] is None
    assert entry["data"]["name"] == "fashion_mnist"
    for k in (20, 200):
        top1, vote_margin, boundary_gap = reference_knn_top1(k)
        # float32 features are off by ~1e-7: far below the relative vote margins and neighbour gaps that decide
        assert vote_margin > 1e-4 and boundary_gap > 1e-5
        # one query is 2 points; the toolkit's percentage is a float32 mean (relative rounding ~1e-7)
        assert entry["metrics"][f"k{k}_top1"] == pytest.approx(top1, abs=1e-4)
    # A second evaluation reads the pixel features from the cache: no data pass, the same figures.
    monkeypatch.setattr(pixel_cache, "extract_features", lambda *a, **k: pytest.fail("features recomputed"))
    assert knn_main(args) == 0
    assert read_results(results)[1]["metrics"] == entry["metrics"]


def test_linear_probe_of_the_raw_pixels(tmp_path):
    results = tmp_path / "results.jsonl"
    settings = ["eval.linear.train_subset=200", "eval.linear.test_subset=50", "eval.batch_size=50", "device=cpu"]
    assert linear_main(["--pixels", "--results", str(results), "--set", "eval.linear.mode=sklearn",
                        "eval.linear.sklearn_max_iter=200", *settings]) == 0
    assert linear_main(["--pixels", "--results", str(results), "--set", "eval.linear.mode=classic",
                        "eval.linear.epochs=1", "eval.linear.lr=0.1", "eval.linear.batch_size=50", *settings]) == 0
    sklearn, classic = read_results(results)
    assert sklearn["weights"] == {"format": "pixels"} and sklearn["settings"]["mode"] == "sklearn"
    assert sklearn["metrics"]["top1"] > 50  # chance is 10%; the full sets give 83.6%
    assert 0 <= classic["metrics"]["top1"] <= classic["metrics"]["top5"] <= 100


def test_pixels_is_a_reference_of_knn_and_linear_only(capsys):
    with pytest.raises(SystemExit) as stop:
        knn_main(["--pixels", "--random-init"])
    assert stop.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        linear_main([])
    assert stop.value.code == 2
    assert "the following arguments are required: --checkpoint (or --pixels)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        semisup_main(["--checkpoint", "last.pth", "--pixels"])
    assert stop.value.code == 2 and "unrecognized arguments: --pixels" in capsys.readouterr().err
