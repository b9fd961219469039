"""The IHC demonstration's data (regions and pseudo-labels on disk) and its report made from records."""

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
