import numpy as np
import pytest

from mochi_hvs.config import ConfigError
from mochi_hvs.config.evaluators import SemisupSettings
from mochi_hvs.data.datasets import DatasetError, ImageSet
from mochi_hvs.data.subsets import fraction_subset, per_class_subset, random_subset, split_file_subset
from mochi_hvs.evaluation.semisup import labelled_subset, subset_fingerprint

LABELS = np.repeat(np.arange(4), [100, 200, 50, 7])  # unequal classes


def test_fraction_is_stratified_and_deterministic():
    chosen = fraction_subset(LABELS, 0.1, seed=3)
    assert np.bincount(LABELS[chosen]).tolist() == [10, 20, 5, 1]  # rounded share per class, at least one
    assert np.array_equal(chosen, fraction_subset(LABELS, 0.1, seed=3))
    assert not np.array_equal(chosen, fraction_subset(LABELS, 0.1, seed=4))
    assert np.all(np.diff(chosen) > 0)


def test_labels_per_class_caps_at_class_size():
    chosen = per_class_subset(LABELS, 10, seed=0)
    assert np.bincount(LABELS[chosen]).tolist() == [10, 10, 10, 7]
    assert np.array_equal(chosen, per_class_subset(LABELS, 10, seed=0))


def test_subset_is_independent_of_other_classes():
    """A class's pick depends on the seed and its own members only, so adding a class changes nothing else."""
    more = np.concatenate([LABELS, np.full(30, 9)])
    base = per_class_subset(LABELS, 5, seed=1)
    assert np.array_equal(per_class_subset(more, 5, seed=1)[: len(base)], base)


def test_random_labels_are_uniform_exact_and_seeded():
    chosen = random_subset(len(LABELS), 20, seed=3)
    assert len(np.unique(chosen)) == 20 and np.all(np.diff(chosen) > 0) and chosen.max() < len(LABELS)
    assert np.array_equal(chosen, random_subset(len(LABELS), 20, seed=3))
    assert not np.array_equal(chosen, random_subset(len(LABELS), 20, seed=4))
    draws = np.concatenate([LABELS[random_subset(len(LABELS), 20, seed)] for seed in range(200)])
    assert np.allclose(np.bincount(draws) / len(draws), np.bincount(LABELS) / len(LABELS), atol=0.02)  # no balance
    images = ImageSet(labels=LABELS, classes=list("abcd"), array=np.zeros((len(LABELS), 2, 2, 1), np.uint8))
    assert np.array_equal(labelled_subset(images, SemisupSettings(random_labels=20, seed=3)), chosen)
    with pytest.raises(ConfigError, match="'eval.semisup.random_labels' = 358 exceeds the 357 labelled training"):
        labelled_subset(images, SemisupSettings(random_labels=358))


def test_invalid_requests():
    with pytest.raises(ConfigError):
        fraction_subset(LABELS, 0.0)
    with pytest.raises(ConfigError):
        per_class_subset(LABELS, 0)
    images = ImageSet(labels=LABELS, classes=list("abcd"), array=np.zeros((len(LABELS), 2, 2, 1), np.uint8))
    for settings in (SemisupSettings(), SemisupSettings(label_fraction=0.1, labels_per_class=3)):
        with pytest.raises(ConfigError, match="exactly one"):
            labelled_subset(images, settings)


def test_split_file_of_names_and_of_indices(tmp_path):
    files = [f"/data/train/n0{i % 3}/img_{i}.JPEG" for i in range(9)]
    named = ImageSet(labels=np.arange(9) % 3, classes=list("abc"), files=files)
    (tmp_path / "1percent.txt").write_text("img_4.JPEG\nimg_1.JPEG\n\n")
    assert split_file_subset(named, tmp_path / "1percent.txt").tolist() == [1, 4]
    (tmp_path / "bad.txt").write_text("img_99.JPEG\n")
    with pytest.raises(DatasetError, match="not in the dataset"):
        split_file_subset(named, tmp_path / "bad.txt")
    in_memory = ImageSet(labels=LABELS, classes=list("abcd"), array=np.zeros((len(LABELS), 2, 2, 1), np.uint8))
    (tmp_path / "idx.txt").write_text("5\n3\n")
    settings = SemisupSettings(split_file=str(tmp_path / "idx.txt"))
    chosen = labelled_subset(in_memory, settings)
    assert chosen.tolist() == [3, 5]
    assert subset_fingerprint(chosen) == subset_fingerprint(np.array([3, 5])) != subset_fingerprint(np.array([3]))
    with pytest.raises(DatasetError, match="split file not found"):
        split_file_subset(in_memory, tmp_path / "absent.txt")
