"""The accuracy matrix of a task sequence and what it is read as: R[i][j] is the accuracy on task j after training
on task i (defined for j <= i); T tasks, indices 0 to T - 1.

- average accuracy: mean over j of R[T-1][j], every task after the last one;
- forgetting (Chaudhry et al., 2018): mean over j < T - 1 of max over i in [j, T - 2] of R[i][j] - R[T-1][j], how
  far each earlier task fell from its best before the last task (negative: it improved); 0 for one task.
"""

from __future__ import annotations

from collections.abc import Sequence

Matrix = Sequence[Sequence[float | None]]  # row i: after task i; None where j > i (not yet seen)


def average_accuracy(r: Matrix) -> float:
    """Mean accuracy over every task after the last task."""
    last = r[-1]
    return sum(last) / len(last)


def forgetting(r: Matrix) -> float:
    """Mean drop of each earlier task from its best accuracy before the last task to its accuracy after it."""
    final = len(r) - 1
    if final == 0:
        return 0.0
    drops = [max(r[i][j] for i in range(j, final)) - r[final][j] for j in range(final)]
    return sum(drops) / len(drops)
