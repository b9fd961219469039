"""An independent weighted kNN for tests: float64 numpy, no code of the toolkit's search."""

from __future__ import annotations

import numpy as np


def reference_knn(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray, query_labels: np.ndarray, k: int,
                  num_classes: int = 10, temperature: float = 0.07) -> tuple[float, float, float]:
    """Weighted kNN top-1 (percent) of the queries against the bank, both L2-normalised here, and the smallest
    relative vote margin and k-th/(k+1)-th neighbour gap that decide it, so a test can show that float32 rounding
    cannot change the figure."""
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = queries @ bank.T
    order = np.argsort(-sims, axis=1, kind="stable")
    scores = np.zeros((len(queries), num_classes))
    for row, neighbours in enumerate(order[:, :k]):
        np.add.at(scores[row], bank_labels[neighbours], np.exp(sims[row, neighbours] / temperature))
    ranked = np.sort(scores, axis=1)
    vote_margin = ((ranked[:, -1] - ranked[:, -2]) / ranked[:, -1]).min()
    sorted_sims = np.take_along_axis(sims, order, axis=1)
    boundary_gap = (sorted_sims[:, k - 1] - sorted_sims[:, k]).min() if k < len(bank) else np.inf
    return 100.0 * (scores.argmax(axis=1) == query_labels).mean(), vote_margin, boundary_gap
