import pytest
import torch

from mochi_hvs.evaluation.calibration import expected_calibration_error


def test_ece_matches_a_hand_computed_case():
    probabilities = torch.tensor([
        [0.90, 0.05, 0.05],  # confidence 0.9, bin (13/15, 14/15], correct
        [0.90, 0.10, 0.00],  # 0.9, same bin, wrong
        [0.50, 0.30, 0.20],  # 0.5, bin (7/15, 8/15], correct
        [0.20, 0.70, 0.10],  # 0.7, bin (10/15, 11/15], wrong
    ])
    labels = torch.tensor([0, 1, 0, 2])
    # sum over bins of |accuracy - mean confidence| * share of samples:
    expected = abs(0.5 - 0.9) * 2 / 4 + abs(1 - 0.5) * 1 / 4 + abs(0 - 0.7) * 1 / 4  # = 0.5
    assert expected_calibration_error(probabilities, labels) == pytest.approx(100 * expected, abs=1e-4)
    # neither one bin for all (|0.5 - 0.75| = 25%) nor one bin per sample ((0.1 + 0.9 + 0.5 + 0.7) / 4 = 55%)
    assert expected_calibration_error(probabilities, labels) == pytest.approx(50.0, abs=1e-4)


def test_ece_bins_are_fifteenths_of_the_confidence_range():
    # 0.70 and 0.72 share the bin (10/15, 11/15]: accuracy 1/2 against confidence 0.71; 0.74 is in the next bin
    together = expected_calibration_error(torch.tensor([[0.70, 0.30], [0.72, 0.28]]), torch.tensor([0, 1]))
    apart = expected_calibration_error(torch.tensor([[0.70, 0.30], [0.74, 0.26]]), torch.tensor([0, 1]))
    assert together == pytest.approx(100 * abs(0.5 - 0.71), abs=1e-4)
    assert apart == pytest.approx(100 * (0.30 + 0.74) / 2, abs=1e-4)


def test_ece_is_zero_when_confidence_equals_accuracy_in_every_bin():
    # 10 predictions at confidence 0.8 of which 8 right, 5 at 0.6 of which 3 right
    probabilities = torch.tensor([[0.8, 0.2]] * 10 + [[0.6, 0.4]] * 5)
    labels = torch.tensor([0] * 8 + [1] * 2 + [0] * 3 + [1] * 2)
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.0, abs=1e-4)
    # confident and always right
    assert expected_calibration_error(torch.eye(4), torch.arange(4)) == pytest.approx(0.0, abs=1e-4)
