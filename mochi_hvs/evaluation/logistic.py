"""The converged linear probe: L2-regularised multinomial logistic regression on frozen features, fitted to a
gradient tolerance, its L2 strength chosen on a validation split of the training set.

The protocol (`fit_logistic`):

1. each feature is standardised with its training-set mean and standard deviation (constant ones only centred);
2. a stratified validation split (`val_fraction` of the training rows, drawn with the seed) is set aside;
3. for every L2 strength lambda of the grid, strongest first, each fit warm-started from the last one, full-batch
   L-BFGS minimises  mean cross-entropy + lambda / 2 * ||W||^2  (the bias is not penalised) on the other rows,
   and the validation rows score it; the best validation top-1 wins, ties going to the stronger lambda;
4. one more fit on all training rows with that lambda gives the classifier.

This is scikit-learn's `LogisticRegression` on `StandardScaler` output with C = 1 / (lambda * rows), solved to a
tolerance on the gradient. The test set plays no part until the returned classifier scores it.

Speed: L-BFGS works in the eigenbasis of the standardised features' covariance, each coordinate scaled by
1 / sqrt(eigenvalue + lambda). That is an exact change of variables (same objective, same minimiser) which makes
the problem well conditioned: on Fashion-MNIST's raw pixels about a hundred iterations reach the tolerance where
the plain coordinates need about a thousand. The gradient is written out (softmax minus one-hot), so the only
large products per iteration are X @ W and G^T @ X.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError

STD_FLOOR = 1e-6  # features constant over the training set (e.g. always-zero ReLU outputs) are only centred
INIT_STD = 0.01  # the initial weights: N(0, 0.01^2), as MoCo's linear classifier


class ProbeDataError(UserError, ValueError):
    """The labelled training features cannot support the probe's validation split."""


@dataclass
class PathPoint:
    """One lambda of the search: its validation top-1 and how its fit ended."""

    l2: float
    val_top1: float
    iterations: int
    converged: bool


@dataclass
class LogisticFit:
    """The fitted classifier (on unstandardised features: logits = x @ weight.T + bias) and how it was chosen."""

    weight: torch.Tensor  # (classes, features)
    bias: torch.Tensor  # (classes,)
    l2: float  # the chosen lambda
    train_loss: float  # mean cross-entropy on all training rows at the end of the final fit
    objective: float  # train_loss + lambda / 2 * ||W||^2 (standardised features)
    gradient: float  # the final fit's largest absolute gradient entry (in the solver's coordinates)
    iterations: int  # L-BFGS iterations of the final fit
    converged: bool  # the final fit reached the gradient tolerance
    path: list[PathPoint] = field(default_factory=list)  # the search, strongest lambda first (empty: no search)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Class scores of unstandardised features (rows)."""
        return features.to(self.weight) @ self.weight.T + self.bias

    def summary(self) -> dict[str, float]:
        """The figures a result record keeps about the fit."""
        best = max((p.val_top1 for p in self.path), default=float("nan"))
        return {"l2": self.l2, "val_top1": best, "train_loss": self.train_loss, "iterations": self.iterations,
                "converged": self.converged, "search_converged": all(p.converged for p in self.path)}


def validation_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, validation rows): a stratified split with at least one validation row per class, seeded."""
    from sklearn.model_selection import train_test_split

    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < 2:
        raise ProbeDataError(f"the linear probe's validation split needs at least 2 labelled training images per "
                             f"class; class {classes[counts.argmin()]} has {counts.min()} (set eval.linear.l2_grid "
                             f"to a single value to fit without a validation split)")
    size = max(len(classes), round(fraction * len(labels)))
    if size > len(labels) - len(classes):
        raise ProbeDataError(f"{len(labels)} labelled training images are too few for a validation split of "
                             f"{size} and a fit of every class")
    rows = np.arange(len(labels))
    fit, val = train_test_split(rows, test_size=size, stratify=labels, random_state=seed)
    return np.sort(fit), np.sort(val)


class _Problem:
    """Standardised training features in the scaled eigenbasis of their covariance, and the L-BFGS fits on them."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int, dtype: torch.dtype) -> None:
        x = features.to(dtype)
        self.mean = x.mean(dim=0)
        self.std = x.std(dim=0, correction=0).clamp_min(STD_FLOOR)  # as scikit-learn's StandardScaler
        x = (x - self.mean) / self.std
        eigenvalues, self.basis = torch.linalg.eigh(x.T @ x / len(x))
        self.eigenvalues = eigenvalues.clamp_min(0)
        self.rotated = x @ self.basis  # (N, D): the standardised rows in the eigenbasis
        self.labels = labels
        self.num_classes = num_classes

    def scale(self, l2: float) -> torch.Tensor:
        """Per-coordinate scale s: the solver's variables V give the eigenbasis weights s * V."""
        return (self.eigenvalues + l2).rsqrt()

    def fit(self, rows: torch.Tensor | None, l2: float, start: tuple[torch.Tensor, torch.Tensor], max_iter: int,
            tolerance: float) -> tuple[tuple[torch.Tensor, torch.Tensor], float, float, int, bool]:
        """Minimise the objective on `rows` (None: all) from `start` = (eigenbasis weights (C, D), bias (C,));
        returns the solution in the same form, mean cross-entropy, largest gradient entry, iterations, converged."""
        x = self.rotated if rows is None else self.rotated[rows]
        y = self.labels if rows is None else self.labels[rows]
        onehot = F.one_hot(y, self.num_classes).to(x.dtype)
        s = self.scale(l2)
        v = (start[0] / s).clone().requires_grad_(True)
        b = start[1].clone().requires_grad_(True)
        optimizer = torch.optim.LBFGS([v, b], lr=1, max_iter=max_iter, max_eval=2 * max_iter, history_size=20,
                                      tolerance_grad=tolerance, tolerance_change=0, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            with torch.no_grad():
                logits = x @ (s * v).T + b
                loss = F.cross_entropy(logits, y)
                error = (logits.softmax(dim=1) - onehot) / len(y)  # d(mean cross-entropy) / d(logits)
                v.grad = s * (error.T @ x) + l2 * s * s * v
                b.grad = error.sum(dim=0)
                return loss + l2 / 2 * (s * s * v * v).sum()

        optimizer.step(closure)
        closure()
        gradient = float(torch.cat([v.grad.flatten(), b.grad.flatten()]).abs().max())
        iterations = optimizer.state[v].get("n_iter", 0)
        with torch.no_grad():
            loss = float(F.cross_entropy(x @ (s * v).T + b, y))
            solution = ((s * v).detach(), b.detach())
        return solution, loss, gradient, iterations, gradient <= tolerance

    def accuracy(self, rows: torch.Tensor, solution: tuple[torch.Tensor, torch.Tensor]) -> float:
        """Top-1 (percent) of a solution on some training rows."""
        logits = self.rotated[rows] @ solution[0].T + solution[1]
        return float((logits.argmax(dim=1) == self.labels[rows]).to(torch.float64).mean() * 100)

    def classifier(self, solution: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight (C, D), bias) acting on unstandardised features."""
        weight = (solution[0] @ self.basis.T) / self.std  # (C, D)
        return weight, solution[1] - weight @ self.mean


def fit_logistic(features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2_grid: list[float],
                 val_fraction: float, seed: int, max_iter: int = 1000, tolerance: float = 1e-4,
                 dtype: torch.dtype = torch.float64) -> LogisticFit:
    """The protocol of this module's docstring on (N, D) training features; a single-value grid skips the search.
    The initial weights and the validation split are drawn from `seed`."""
    labels = labels.to(features.device)
    problem = _Problem(features, labels, num_classes, dtype)
    generator = torch.Generator().manual_seed(seed)
    start = (torch.randn(num_classes, features.shape[1], generator=generator, dtype=dtype).to(features.device)
             * INIT_STD, torch.zeros(num_classes, dtype=dtype, device=features.device))
    grid = sorted(set(l2_grid), reverse=True)
    path: list[PathPoint] = []
    chosen, solution = grid[0], start
    if len(grid) > 1:
        fit_rows, val_rows = (torch.from_numpy(r).to(features.device)
                              for r in validation_split(labels.cpu().numpy(), val_fraction, seed))
        best = -1.0
        for l2 in grid:
            solution, _, _, iterations, converged = problem.fit(fit_rows, l2, solution, max_iter, tolerance)
            path.append(PathPoint(l2, problem.accuracy(val_rows, solution), iterations, converged))
            if path[-1].val_top1 > best:
                best, chosen, start = path[-1].val_top1, l2, solution
    solution, loss, gradient, iterations, converged = problem.fit(None, chosen, start, max_iter, tolerance)
    weight, bias = problem.classifier(solution)
    penalty = chosen / 2 * float((solution[0] ** 2).sum())
    return LogisticFit(weight, bias, chosen, loss, loss + penalty, gradient, iterations, converged, path)
