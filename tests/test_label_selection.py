"""USL, the unsupervised choice of the images to label (mochi_hvs.evaluation.label_selection and mochi-select)."""

import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from eval_outputs import error_line, read_results

from mochi_hvs.config.evaluators import SelectSettings
from mochi_hvs.data import datasets
from mochi_hvs.data.datasets import ImageSet
from mochi_hvs.data.subsets import random_subset, split_file_subset, write_split_file
from mochi_hvs.evaluation.commands import select_main, semisup_main
from mochi_hvs.evaluation.label_selection import (
    best_per_cluster,
    knn_density,
    proximity_penalty,
    regularised_selection,
    usl_select,
)

BLOB_SIZES = [500, 200, 120, 80, 50, 30, 20, 10, 8, 5]
SEEDS = (0, 1, 2)


def blobs(noise: float = 0.01, dim: int = 32) -> tuple[torch.Tensor, np.ndarray]:
    """Unit vectors in tight blobs of very unequal sizes around random centres, and each point's blob."""
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(len(BLOB_SIZES), dim, generator=g), dim=1)
    blob = torch.repeat_interleave(torch.arange(len(BLOB_SIZES)), torch.tensor(BLOB_SIZES))
    points = F.normalize(centres[blob] + noise * torch.randn(len(blob), dim, generator=g), dim=1)
    return points, blob.numpy()


def nearest_labelled_accuracy(points: torch.Tensor, blob: np.ndarray, chosen: np.ndarray) -> float:
    """1-NN classification of every point by the blobs of the chosen (labelled) points."""
    nearest = (points @ points[chosen].T).argmax(dim=1).numpy()
    return float((blob[chosen][nearest] == blob).mean())


def test_selects_exactly_budget_distinct_indices_in_range_and_is_seeded():
    points = F.normalize(torch.randn(400, 16, generator=torch.Generator().manual_seed(1)), dim=1)
    settings = SelectSettings(budget=40, seed=3)
    chosen = usl_select(points, settings)
    assert len(chosen) == len(set(chosen.tolist())) == 40
    assert chosen.min() >= 0 and chosen.max() < 400 and np.all(np.diff(chosen) > 0)
    assert np.array_equal(chosen, usl_select(points, settings))
    assert not np.array_equal(chosen, usl_select(points, SelectSettings(budget=40, seed=4)))


def test_the_selection_sees_features_only():
    assert list(inspect.signature(usl_select).parameters) == ["features", "settings"]


def test_usl_covers_unequal_blobs_that_random_picks_miss():
    points, blob = blobs()
    for seed in SEEDS:
        usl = usl_select(points, SelectSettings(budget=10, seed=seed))
        random = random_subset(len(points), 10, seed)
        assert len(set(blob[usl])) == 10
        assert len(set(blob[random])) < 10
        assert nearest_labelled_accuracy(points, blob, usl) > nearest_labelled_accuracy(points, blob, random)
        assert nearest_labelled_accuracy(points, blob, usl) == 1.0


def test_density_is_inverse_mean_squared_distance_to_the_k_nearest_others():
    angles = torch.tensor([0.0, 0.1, 0.3, 1.0])
    points = torch.stack([angles.cos(), angles.sin()], dim=1)
    squared = 2 - 2 * (points @ points.T)
    expected = [1 / ((squared[i].sort().values[1:3]).mean()) for i in range(4)]  # k = 2, the point itself excluded
    assert torch.allclose(knn_density(points, 2), torch.stack(expected), rtol=1e-4)


def test_the_penalty_counts_the_picks_of_other_clusters_only():
    points = torch.eye(3)  # squared distance 2 between any two
    clusters = np.array([0, 0, 1])
    penalty = proximity_penalty(points, np.array([0, 2]), clusters, alpha=0.5)
    # rows 0 and 1 (cluster 0) see only the pick of cluster 1 (row 2); row 2 sees only row 0
    assert torch.allclose(penalty, torch.full((3,), 2 ** -0.5))


def test_an_empty_cluster_is_made_up_by_the_next_best_images():
    scores = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    picks = best_per_cluster(scores, np.array([0, 0, 0, 2, 2]), budget=3)  # cluster 1 is empty
    assert picks.tolist() == [0, 3, 1]


def test_the_regulariser_moves_adjacent_picks_apart():
    """Two clusters on an arc whose densest points face each other across the border: without the regulariser
    they are the picks; with it the picks move away from each other."""
    angles = torch.cat([torch.linspace(0.0, 0.5, 11), torch.linspace(0.6, 1.1, 11)])
    points = torch.stack([angles.cos(), angles.sin()], dim=1)
    clusters = np.repeat([0, 1], 11)
    density = torch.cat([1 + angles[:11], 1 + (1.1 - angles[11:])])  # densest at 0.5 and at 0.6

    def gap(reg_lambda: float) -> float:
        a, b = regularised_selection(points, density, clusters, 2, reg_lambda=reg_lambda)
        return abs(angles[a] - angles[b]).item()

    assert gap(0.0) == pytest.approx(0.1)
    assert gap(0.5) > 0.2
    assert gap(2.0) > gap(0.5)


def test_split_file_round_trip(tmp_path):
    chosen = np.array([7, 2, 40])
    in_memory = ImageSet(labels=np.zeros(50, np.int64), classes=["a"], array=np.zeros((50, 2, 2, 1), np.uint8))
    write_split_file(in_memory, chosen, tmp_path / "memory" / "split.txt")
    assert (tmp_path / "memory" / "split.txt").read_text() == "2\n7\n40\n"
    assert split_file_subset(in_memory, tmp_path / "memory" / "split.txt").tolist() == [2, 7, 40]
    files = ImageSet(labels=np.zeros(50, np.int64), classes=["a"], files=[f"/data/a/img_{i}.png" for i in range(50)])
    write_split_file(files, chosen, tmp_path / "files.txt")
    assert split_file_subset(files, tmp_path / "files.txt").tolist() == [2, 7, 40]


SMALL = ["--random-init", "--set", "eval.select.pool=200", "eval.batch_size=100", "device=cpu"]


@pytest.mark.slow
def test_select_then_semisup_end_to_end(checkpoint, tmp_path, capsys):
    results, split = tmp_path / "results.jsonl", tmp_path / "usl_10.txt"
    assert select_main(["--checkpoint", str(checkpoint), "--budget", "10", "--out", str(split),
                        "--results", str(results), *SMALL]) == 0
    assert "classes_covered" in capsys.readouterr().out
    indices = [int(line) for line in split.read_text().splitlines()]
    assert len(set(indices)) == 10 and all(0 <= i < 60000 for i in indices)
    assert semisup_main(["--checkpoint", str(checkpoint), "--random-init", "--results", str(results), "--set",
                         f"eval.semisup.split_file={split}", "eval.semisup.epochs=1", "eval.semisup.test_subset=100",
                         "eval.batch_size=100", "device=cpu"]) == 0
    selected, finetuned = read_results(results)
    assert selected["evaluator"] == "select" and selected["settings"]["budget"] == 10
    assert selected["settings"]["out"] == str(split.resolve())
    assert selected["metrics"]["labelled_images"] == 10 and selected["metrics"]["pool_images"] == 200
    assert sum(selected["metrics"]["class_counts"]) == 10
    assert selected["metrics"]["classes_covered"] == sum(c > 0 for c in selected["metrics"]["class_counts"])
    assert finetuned["metrics"]["labelled_images"] == 10
    assert finetuned["settings"]["subset_sha1"] == selected["settings"]["subset_sha1"]  # the same images


@pytest.mark.slow
def test_the_labels_of_the_dataset_do_not_change_the_choice(checkpoint, tmp_path, monkeypatch):
    args = ["--checkpoint", str(checkpoint), "--budget", "10", "--results", str(tmp_path / "r.jsonl"), *SMALL]
    assert select_main([*args, "--out", str(tmp_path / "true_labels.txt")]) == 0
    load_images = datasets.load_images

    def permuted_labels(*a, **kw):
        images = load_images(*a, **kw)
        images.labels = np.random.default_rng(5).permutation(images.labels)
        return images

    monkeypatch.setattr(datasets, "load_images", permuted_labels)
    assert select_main([*args, "--out", str(tmp_path / "permuted_labels.txt")]) == 0
    assert (tmp_path / "true_labels.txt").read_text() == (tmp_path / "permuted_labels.txt").read_text()
    true, permuted = read_results(tmp_path / "r.jsonl")
    assert true["metrics"]["class_counts"] != permuted["metrics"]["class_counts"]  # the labels did change


@pytest.mark.parametrize(("extra", "message"), [
    ([], "error: 'eval.select.budget' is not set: how many images to select, e.g. --budget 40"),
    (["--budget", "0"], "error: <checkpoint config> + --set: 'eval.select.budget' must be null or positive; got 0"),
    (["--budget", "60001"], "error: 'eval.select.budget' = 60001 exceeds the 60000 training images to select from"),
    (["--budget", "201", "--set", "eval.select.pool=200"],
     "error: 'eval.select.budget' = 201 exceeds the 200 training images to select from"),
])
def test_a_missing_or_impossible_budget_is_one_line(checkpoint, tmp_path, capsys, extra, message):
    out = tmp_path / "split.txt"
    assert select_main(["--checkpoint", str(checkpoint), "--out", str(out), "--results", str(tmp_path / "r.jsonl"),
                        *extra]) == 2
    assert error_line(capsys) == message
    assert not out.exists() and not (tmp_path / "r.jsonl").exists()
