"""The IHC demonstration's data (regions and pseudo-labels on disk) and its report made from records."""

from pathlib import Path

import numpy as np

from mochi_hvs.data.datasets import load_images
from mochi_hvs.data.nuclei import read_nuclei_set
from mochi_hvs.data.tiles import Tiling
from mochi_hvs.pathology.ihc import HELD_OUT_ROWS, hematoxylin_nuclei, ihc_image, prepare_ihc
from mochi_hvs.pathology.report import arm_of, report_text


def test_prepare_writes_the_two_regions_and_their_pseudo_labels(tmp_path):
    paths = prepare_ihc(tmp_path)
    (train,), (test,) = read_nuclei_set(paths["train"]), read_nuclei_set(paths["test"])
    whole = ihc_image()
    assert train.image.shape == (512 - HELD_OUT_ROWS, 512, 3) and test.image.shape == (HELD_OUT_ROWS, 512, 3)
    np.testing.assert_array_equal(np.concatenate([train.image, test.image]), whole)
    np.testing.assert_array_equal(np.concatenate([train.instances, test.instances]), hematoxylin_nuclei(whole))
    assert len(np.unique(test.instances)) - 1 > 20  # nuclei to score in the held-out rows
    slides = load_images("slides", str(paths["slides"]), "pretrain", Tiling(32, 16, (1, 2, 4)))
    assert len(slides) == 23 * 31 + 11 * 15 + 5 * 7  # the recipe's tiles of the 384 x 512 training region


def record(arm_path: str, seed: int, aji: float, dice: float, random_init: bool = False) -> dict:
    return {"checkpoint": arm_path, "weights": {"random_init": random_init}, "seed": seed, "machine": "m",
            "commit": "c", "metrics": {"aji": aji, "dice": dice, "nuclei_true": 55, "nuclei_predicted": 40,
                                       "final_loss": 0.5}}


def test_report_reads_arms_from_the_records():
    records = [record("runs/pathology_ihc/ihc_stain_seed0/last.pth", 0, 0.30, 0.60),
               record("runs/pathology_ihc/ihc_stain_seed1/last.pth", 1, 0.40, 0.70),
               record("runs/fmnist_headline/e5/seed0/last.pth", 0, 0.20, 0.50),
               record("runs/fmnist_headline/e5/seed1/last.pth", 1, 0.20, 0.40),
               record("runs/pathology_ihc/ihc_stain_seed0/last.pth", 0, 0.10, 0.30, random_init=True)]
    assert [arm_of(r) for r in records] == ["ihc_stain", "ihc_stain", "fmnist", "fmnist", "random"]
    text = report_text(records)
    assert "| 2 | 0.350 ± 0.071 | 0.650 ± 0.071 |" in text  # the recipe's arm: AJI and Dice over its two seeds
    # Fashion-MNIST - recipe, paired: AJI -0.10 and -0.20 (mean -0.15), Dice -0.10 and -0.30 (mean -0.20)
    assert "| AJI | -0.150 |" in text and "| Dice | -0.200 |" in text
    assert "| random | 0 | 0.100 | 0.300 | 40 | 0.500 |" in text


def test_demo_run_ends_in_one_error_line_when_its_slides_cannot_fill_a_batch(tmp_path, monkeypatch, capfd):
    """The recipe's batch of 128 over the 59 tiles of a 128 px slide: the pretraining step says so, and the
    demonstration stops with one line of its own."""
    from PIL import Image

    from mochi_hvs.pathology import demo

    (tmp_path / "data" / "slides").mkdir(parents=True)
    Image.new("RGB", (128, 128), (180, 120, 140)).save(tmp_path / "data" / "slides" / "slide.png")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(Path(demo.RECIPE).read_text().replace("batch_size: 64", "batch_size: 128"))
    monkeypatch.setattr(demo, "RECIPE", str(recipe))
    (tmp_path / "fmnist.pth").touch()
    code = demo.main(["run", "--fmnist", str(tmp_path / "fmnist.pth"), "--data", str(tmp_path / "data"), "--runs",
                      str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--seeds", "0"])
    errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 2
    assert errors[0] == ("error: the pretraining data holds 59 image(s), fewer than one batch of 128 "
                         "(optim.batch_size=128): lower optim.batch_size to at most 59, or give it more images")
    assert errors[1].startswith("error: this step stopped with exit status 2, its error above: ")
    assert "-m mochi_hvs.pretrain --config" in errors[1]
