"""Calibration of a classifier's confidence: the expected calibration error (Guo et al., "On Calibration of Modern
Neural Networks", 2017), as the transfer suite reports it for the linear probe."""

from __future__ import annotations

import torch

ECE_BINS = 15  # equal-width confidence bins over (0, 1], Guo et al.'s choice


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE in percent: the top-1 confidences fall into `bins` equal-width bins (i/bins, (i+1)/bins]; the mean over
    samples of |accuracy - mean confidence| of each sample's bin, i.e. sum_b |acc_b - conf_b| * n_b / n.

    probabilities: (N, C) rows summing to one (e.g. a softmax); labels: (N,) class indices.
    """
    confidence, prediction = probabilities.float().max(dim=1)
    correct = (prediction == labels.to(prediction.device)).float()
    edges = torch.linspace(0, 1, bins + 1, device=confidence.device)
    which = torch.bucketize(confidence, edges[1:-1])  # bin b: edges[b] < confidence <= edges[b + 1]
    count = torch.zeros(bins, device=confidence.device).index_add_(0, which, torch.ones_like(confidence))
    gap = torch.zeros(bins, device=confidence.device).index_add_(0, which, confidence - correct)
    return float(gap.abs().sum() / count.sum() * 100)
