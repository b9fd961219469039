"""Nuclei instance metrics and classes against instances laid out and counted by hand."""

import numpy as np

from mochi_hvs.evaluation.instances import (
    BACKGROUND,
    BOUNDARY,
    INTERIOR,
    aggregated_jaccard,
    dice,
    instance_classes,
    instances_from_classes,
)


def hand_case() -> tuple[np.ndarray, np.ndarray]:
    """True nuclei A (4 px), B (6 px), C (2 px); predictions: A' over 3 px of A and 1 of background, B split into B1
    and B2 (3 px each), nothing on C, a false positive F (2 px)."""
    true = np.zeros((6, 10), dtype=np.int32)
    pred = np.zeros_like(true)
    true[0, 0:4] = 1               # A
    pred[0, 1:5] = 7               # A': 3 px inside A, 1 outside
    true[2, 0:6] = 2               # B
    pred[2, 0:3] = 3               # B1
    pred[2, 3:6] = 5               # B2 (the split)
    true[4, 0:2] = 4               # C, no prediction
    pred[5, 8:10] = 9              # F, no nucleus
    return true, pred


def test_aji_by_hand_with_split_missed_and_false_instances():
    true, pred = hand_case()
    # A pairs with A' (IoU 3/5): C += 3, U += 5. B: B1 and B2 tie at IoU 3/6, the first (B1) is chosen: C += 3,
    # U += 6. C overlaps nothing: U += 2. Unchosen predictions B2 (3) and F (2): U += 5.
    assert aggregated_jaccard(true, pred) == (3 + 3) / (5 + 6 + 2 + 5)


def test_dice_by_hand():
    true, pred = hand_case()
    # foreground: true 4 + 6 + 2 = 12 px, predicted 4 + 3 + 3 + 2 = 12 px, shared 3 (A) + 6 (B) = 9
    assert dice(true, pred) == 2 * 9 / (12 + 12)


def test_perfect_empty_and_disjoint_maps():
    true, _ = hand_case()
    relabelled = np.where(true > 0, true + 10, 0)
    assert aggregated_jaccard(true, relabelled) == 1.0 and dice(true, relabelled) == 1.0
    empty = np.zeros_like(true)
    assert aggregated_jaccard(empty, empty) == 1.0 and dice(empty, empty) == 1.0
    assert aggregated_jaccard(true, empty) == 0.0 and aggregated_jaccard(empty, true) == 0.0
    assert dice(true, empty) == 0.0


def test_one_prediction_over_two_nuclei_counts_in_both_pairs():
    true = np.array([[1, 1, 0, 2, 2]])
    pred = np.array([[5, 5, 5, 5, 5]])
    # both nuclei choose the one prediction: C = 2 + 2, U = 5 + 5 (HoVer-Net's pairing)
    assert aggregated_jaccard(true, pred) == 4 / 10


def test_classes_outline_each_instance():
    instances = np.zeros((7, 9), dtype=np.int32)
    instances[1:4, 1:4] = 1          # a 3 x 3 square: 8 boundary pixels round 1 interior
    instances[1:6, 4:8] = 2          # touching it on the right
    classes = instance_classes(instances)
    assert classes[2, 2] == INTERIOR and (classes[1:4, 1:4] == BOUNDARY).sum() == 8
    assert classes[2, 3] == BOUNDARY and classes[2, 4] == BOUNDARY  # the contact is a boundary on both sides
    assert (classes[instances == 0] == BACKGROUND).all()
    assert (classes[2:5, 5:7] == INTERIOR).all()


def test_instances_come_back_from_their_classes():
    instances = np.zeros((20, 20), dtype=np.int32)
    instances[2:7, 2:8] = 4
    instances[10:16, 9:15] = 9
    instances[3:6, 12:17] = 2
    recovered = instances_from_classes(instance_classes(instances))
    assert aggregated_jaccard(instances, recovered) == 1.0 and recovered.max() == 3


def test_small_interiors_are_dropped_and_boundaries_join_the_nearest():
    classes = np.zeros((5, 12), dtype=np.int64)
    classes[1:4, 1:5] = BOUNDARY
    classes[2, 2:4] = INTERIOR       # a 2 px interior
    classes[1:4, 7:11] = BOUNDARY
    classes[2, 8] = INTERIOR         # a 1 px interior
    out = instances_from_classes(classes, min_size=2)
    assert out.max() == 1 and (out[1:4, 1:5] == 1).all()
    assert (out[1:4, 7:11] == 0).all()  # its interior dropped, the right outline has no nucleus in its region
    assert (instances_from_classes(np.full((3, 3), BOUNDARY)) == 0).all()
