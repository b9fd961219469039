import gzip
import io
import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from mochi_hvs.config import load_config
from mochi_hvs.data.datasets import DatasetError, check_splits, labelled_splits
from mochi_hvs.data.digits import OPENCV_DIGITS_ROOT, load_opencv_digits
from mochi_hvs.evaluation.frozen import FrozenEvaluation, FrozenFeatures
from mochi_hvs.evaluation.knn import topk_accuracy
from mochi_hvs.evaluation.transfer import task_config

TRANSFER = runpy.run_path(str(Path(__file__).resolve().parents[1] / "eval" / "transfer.py"))["main"]
SMALL = ["eval.transfer.episodes=50", "eval.linear.l2_grid=[0.01,0.001]", "eval.batch_size=256", "device=cpu"]


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sklearn_digits_split_is_stratified_disjoint_fixed_and_two_thirds_to_one_third():
    digits = load_digits()
    train, test = labelled_splits("sklearn_digits", None)
    assert len(train) + len(test) == len(digits.target) == 1797
    assert train.array.shape[1:] == (8, 8, 1) and train.array.dtype == np.uint8 and train.array.max() == 255
    per_class = np.bincount(digits.target)
    assert (np.bincount(train.labels) == np.floor(per_class * 2 / 3 + 0.5)).all()  # 2/3 of every class
    assert (np.bincount(test.labels) == per_class - np.bincount(train.labels)).all()
    # disjoint, and together every image once: match each split image to its source by pixels and label
    scaled = np.rint(digits.images * 255 / 16).astype(np.uint8)
    source = {(img.tobytes(), int(label)): i for i, (img, label) in enumerate(zip(scaled, digits.target, strict=True))}
    train_ids = [source[(img[..., 0].tobytes(), int(lab))] for img, lab in zip(train.array, train.labels, strict=True)]
    test_ids = [source[(img[..., 0].tobytes(), int(lab))] for img, lab in zip(test.array, test.labels, strict=True)]
    assert not set(train_ids) & set(test_ids)
    # seeded: the same split on every load, whatever the run's seed; drawn at random, not each class's first 2/3
    again, _ = labelled_splits("sklearn_digits", None, seed=7)
    assert np.array_equal(again.array, train.array) and np.array_equal(again.labels, train.labels)
    first_two_thirds = [i for c in range(10) for i in np.flatnonzero(digits.target == c)[:len(np.flatnonzero(
        train.labels == c))]]
    assert sorted(train_ids) != sorted(first_two_thirds)


def digit_sheet(path: Path, size=(2000, 1000), gzipped=False) -> None:
    """A digits.png whose every 20 x 20 cell is filled with 10 + its digit (rows of 5 cells per digit)."""
    rows = np.repeat(np.arange(10), 5)  # digit of each of the 50 cell rows
    sheet = np.repeat(np.repeat(10 + rows, 20)[:, None], size[0], axis=1).astype(np.uint8)[: size[1]]
    png = io.BytesIO()
    Image.fromarray(sheet).save(png, format="PNG")
    path.write_bytes(gzip.compress(png.getvalue()) if gzipped else png.getvalue())


@pytest.mark.parametrize("gzipped", [False, True])
def test_opencv_digits_cells_get_the_digit_of_their_row_block(tmp_path, gzipped):
    path = tmp_path / ("digits.png.gz" if gzipped else "digits.png")
    digit_sheet(path, gzipped=gzipped)
    train, test = load_opencv_digits(str(tmp_path), True), load_opencv_digits(str(path), False)
    assert (len(train), len(test)) == (3330, 1670) and train.array.shape[1:] == (20, 20, 1)
    for images in (train, test):
        assert (images.array[:, 0, 0, 0] == 10 + images.labels).all() and (np.bincount(images.labels) > 160).all()


def test_opencv_digits_missing_or_damaged_file_is_a_dataset_error_saying_how_to_fix_it(tmp_path):
    for read in (lambda: load_opencv_digits(str(tmp_path), True),
                 lambda: check_splits("opencv_digits", str(tmp_path), ("train",))):
        with pytest.raises(DatasetError, match="not found; install it with `sudo apt-get install -y opencv-doc`"):
            read()
    digit_sheet(tmp_path / "digits.png", size=(1000, 1000))
    with pytest.raises(DatasetError, match=r"is damaged \(1000 x 1000 pixels, expected 2000 x 1000\); reinstall it"):
        load_opencv_digits(str(tmp_path), True)
    (tmp_path / "digits.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="is damaged"):
        load_opencv_digits(str(tmp_path), True)


@pytest.mark.skipif(not (Path(OPENCV_DIGITS_ROOT) / "digits.png").is_file(), reason="opencv-doc is not installed")
def test_opencv_digits_from_opencv_doc():
    train, test = labelled_splits("opencv_digits", None)
    assert (np.bincount(train.labels) == 333).all() and (np.bincount(test.labels) == 167).all()


def test_a_task_keeps_the_config_root_only_for_the_configs_own_dataset():
    cfg = load_config(None, ["data.name=cifar10", "data.root=/data/cifar"])
    assert task_config(cfg, "cifar10").data.root == "/data/cifar"
    assert task_config(cfg, "cifar10=/elsewhere").data.root == "/elsewhere"
    assert (task_config(cfg, "mnist5k").data.name, task_config(cfg, "mnist5k").data.root) == ("mnist5k", None)
    assert cfg.data.name == "cifar10"  # the config itself is unchanged


def test_the_probe_scores_give_the_probes_top1():
    cfg = load_config(None, ["data.name=sklearn_digits", "eval.knn_k=5"])
    evaluation = FrozenEvaluation(cfg, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat(20)
    features = FrozenFeatures(torch.randn(200, 6, generator=generator) + labels[:, None] * 0.3, labels,
                              torch.randn(100, 6, generator=generator) + labels[:100, None] * 0.3, labels[:100], 10)
    expected = evaluation.linear(features)["top1"]
    scores = evaluation.linear_fit(features).logits(features.test)
    assert scores.shape == (100, 10) and topk_accuracy(scores, features.test_labels, ks=(1,))[1] == expected


def test_transfer_suite_runs_tasks_and_skips_missing_data(checkpoint, tmp_path, capsys):
    results, table = tmp_path / "results.jsonl", tmp_path / "table.md"
    argv = ["--checkpoint", str(checkpoint), "--random-init", "--results", str(results), "--table", str(table),
            "--tasks", "sklearn_digits", f"opencv_digits={tmp_path / 'missing.png'}", f"imagefolder={tmp_path / 'no'}",
            "--set", *SMALL]
    assert TRANSFER(argv) == 0
    lines = read_lines(results)
    assert [(line["task"], line["group"]) for line in lines] == [
        ("sklearn_digits", "knn"), ("sklearn_digits", "linear"), ("sklearn_digits", "few_shot"),
        (f"opencv_digits={tmp_path / 'missing.png'}", None), (f"imagefolder={tmp_path / 'no'}", None)]
    knn, linear, few = lines[:3]
    assert all(line["evaluator"] == "transfer" and line["weights"]["random_init"] and line["skipped"] is None
               for line in lines[:3])
    assert knn["data"] == {"name": "sklearn_digits", "root": None, "image_size": 28}  # the checkpoint's size
    assert {"k20_top1", "k200_top1"} <= set(knn["metrics"])
    assert set(linear["metrics"]) == {"top1", "ece", "l2", "val_top1", "train_loss", "iterations", "converged",
                                      "search_converged"}
    assert set(few["metrics"]) == {f"5way_{k}shot_{what}" for k in (1, 5, 10) for what in ("mean", "interval")}
    assert few["settings"]["transfer"]["episodes"] == 50 and few["settings"]["linear"]["l2_grid"] == [0.01, 0.001]
    assert 20 < few["metrics"]["5way_5shot_mean"] <= 100 and 0 < few["metrics"]["5way_5shot_interval"] < 10
    assert "opencv-doc" in lines[3]["skipped"] and lines[3]["metrics"] == {}
    assert "does not exist" in lines[4]["skipped"]
    written = table.read_text().splitlines()
    assert written[0] == ("| task | kNN k=20 | kNN k=200 | linear top-1 | linear ECE | 5-way 1-shot | 5-way 5-shot | "
                          "5-way 10-shot |")
    cells = written[2].split(" | ")
    assert cells[0] == "| sklearn_digits" and float(cells[1]) == pytest.approx(knn["metrics"]["k20_top1"], abs=0.01)
    assert cells[6] == f"{few['metrics']['5way_5shot_mean']:.2f} ± {few['metrics']['5way_5shot_interval']:.2f}"
    assert "| skipped: opencv_digits:" in written[3] and "| skipped: data.root=" in written[4]
    assert "\n".join(written) in capsys.readouterr().out


def test_transfer_suite_on_pixels_reports_shot_counts_without_enough_images(tmp_path, capsys):
    # the test split has 58 to 61 images per class: 1 + 57 fit every class, 5 + 57 none
    results = tmp_path / "results.jsonl"
    assert TRANSFER(["--pixels", "--results", str(results), "--tasks", "sklearn_digits", "--set", *SMALL,
                     "eval.transfer.shots=[1,5]", "eval.transfer.queries=57"]) == 0
    knn, linear, few = read_lines(results)
    assert knn["weights"] == {"format": "pixels"} and knn["metrics"]["k20_top1"] > 80  # digits by their pixels
    assert set(few["metrics"]) == {"5way_1shot_mean", "5way_1shot_interval"} and "0 of 10 classes" in few["skipped"]
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.startswith("| sklearn_digits |") and row.endswith(" | n/a |")


@pytest.mark.parametrize("tasks", [["--tasks", "sklearn_digits", "mnist"], ["--set", "eval.transfer.tasks=[mnist]"]])
def test_an_unknown_task_is_one_error_line(checkpoint, tmp_path, capsys, tasks):
    assert TRANSFER(["--checkpoint", str(checkpoint), "--random-init", "--results", str(tmp_path / "r.jsonl"),
                     *tasks]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "'eval.transfer.tasks' must name datasets" in err[0] and "'mnist'" in err[0]
    assert not (tmp_path / "r.jsonl").exists()
