"""LogME (You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer Learning", ICML 2021): the
log maximum evidence of a Bayesian linear model on frozen features, per image, averaged over the classes.

For features F (n x D) and one class's indicator labels y (n), with prior w ~ N(0, I/alpha) and noise
y | F, w ~ N(Fw, I/beta), the log evidence is

    L(alpha, beta) = n/2 log beta + D/2 log alpha - n/2 log 2pi - beta/2 ||Fm - y||^2 - alpha/2 m'm
                     - 1/2 log det(alpha I + beta F'F),      m = beta (alpha I + beta F'F)^-1 F'y,

maximised by the paper's fixed-point iteration: gamma = sum_i beta s_i / (alpha + beta s_i) over the eigenvalues s_i
of F'F, alpha <- gamma / m'm, beta <- (n - gamma) / ||Fm - y||^2. Everything is computed from one SVD of F. Higher
is better; the score is L / n averaged over the classes.
"""

from __future__ import annotations

import math

import numpy as np

ITERATIONS = 100  # the fixed point converges in a handful of steps (the paper: at most 10 in practice)
TOLERANCE = 1e-5  # relative change of alpha / beta that ends the iteration
NEGLIGIBLE_GAMMA = 1e-9  # effective parameters left when alpha runs off to infinity (labels the features miss): the
# evidence has reached its limit, and iterating on would overflow alpha


def class_evidence(u: np.ndarray, singular: np.ndarray, width: int, y: np.ndarray) -> float:
    """The maximised log evidence per image of indicator labels `y`, given F = u diag(singular) v' (thin SVD)."""
    n = len(y)
    s = singular ** 2  # nonzero eigenvalues of F'F
    z = u.T @ y  # y in the basis of F's column space
    outside = float(y @ y - z @ z)  # the part of ||y||^2 no weight vector can reach
    alpha, beta = 1.0, 1.0
    for _ in range(ITERATIONS):
        shrink = alpha + beta * s
        gamma = float((beta * s / shrink).sum())
        m2 = float(((beta * singular * z / shrink) ** 2).sum())  # m'm
        residual = float(((alpha * z / shrink) ** 2).sum()) + outside  # ||Fm - y||^2
        new_alpha, new_beta = gamma / max(m2, 1e-12), (n - gamma) / max(residual, 1e-12)
        done = abs(new_alpha - alpha) / alpha < TOLERANCE and abs(new_beta - beta) / beta < TOLERANCE
        alpha, beta = new_alpha, new_beta
        if done or gamma < NEGLIGIBLE_GAMMA:
            break
    shrink = alpha + beta * s
    m2 = float(((beta * singular * z / shrink) ** 2).sum())
    residual = float(((alpha * z / shrink) ** 2).sum()) + outside
    log_det = float(np.log(shrink).sum()) + (width - len(s)) * math.log(alpha)
    evidence = (n * math.log(beta) + width * math.log(alpha) - n * math.log(2 * math.pi) - beta * residual
                - alpha * m2 - log_det) / 2
    return evidence / n


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME of integer `labels` (n) on `features` (n x D): the mean over the classes of the per-image evidence."""
    f = np.asarray(features, dtype=np.float64)
    u, singular, _ = np.linalg.svd(f, full_matrices=False)
    keep = singular > singular.max(initial=0.0) * 1e-10  # F's rank: zero directions belong to the prior only
    u, singular = u[:, keep], singular[keep]
    classes = np.unique(labels)
    return float(np.mean([class_evidence(u, singular, f.shape[1], (labels == c).astype(np.float64))
                          for c in classes]))
