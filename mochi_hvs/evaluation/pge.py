"""Principal gradient expectation (PGE; Qi et al., "Transferability Estimation Based on Principal Gradient
Expectation", 2022/2023): how far apart two tasks pull the shared weights.

For a task T with mini-batches B_1..B_m of its labelled images, a model f_theta and a head h_T on T's classes, the
principal gradient is the expectation of the batch gradients of the loss, L2-normalised:

    g_T = (1/m) sum_b grad_theta L(h_T(f_theta(x)), y; B_b),        g^_T = g_T / ||g_T||_2,

and the estimate for source S and target T is the distance of the normalised principal gradients,

    PGE(S, T) = ||g^_S - g^_T||_2  in [0, 2]       (smaller: the tasks move the weights alike, better transfer).

theta are the shared backbone parameters only (e.g. the last ResNet stage), never the heads: each task has its
own head, with as many outputs as it has classes, so relabelling a task's classes changes nothing. Deviations from
the paper, for cost and determinism: the backbone is frozen in eval mode (BatchNorm uses its running statistics, so
a batch's gradient does not depend on what else is in the batch); the expectation is over a fixed set of batches
from one starting point, not over restarts from several initialisations; and no low-rank projection is taken. The
normalisation makes the estimate independent of the loss's scale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def chosen_parameters(model: nn.Module, prefixes: list[str]) -> list[tuple[str, nn.Parameter]]:
    """The named parameters of `model` whose names start with one of `prefixes` ('' matches all), in model order."""
    chosen = [(name, p) for name, p in model.named_parameters() if any(name.startswith(x) for x in prefixes)]
    if not chosen:
        raise ValueError(f"no parameter name starts with any of {prefixes}")
    return chosen


def expected_gradient(model: nn.Module, head: Callable[[torch.Tensor], torch.Tensor],
                      batches: Iterable[tuple[torch.Tensor, torch.Tensor]], parameters: list[nn.Parameter],
                      loss: Loss = F.cross_entropy) -> torch.Tensor:
    """The mean over `batches` of the gradient of loss(head(model(x)), y) w.r.t. `parameters`, flattened (float32).
    The model runs in eval mode and is put back in the mode it was in; no .grad is touched."""
    was_training = model.training
    model.eval()
    total, count = None, 0
    try:
        for inputs, labels in batches:
            value = loss(head(model(inputs)), labels)
            grads = torch.autograd.grad(value, parameters, allow_unused=True)
            flat = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).float()
                              for g, p in zip(grads, parameters, strict=True)])
            total = flat if total is None else total + flat
            count += 1
    finally:
        model.train(was_training)
    if total is None:
        raise ValueError("no batches to take the gradient on")
    return total / count


def principal_gradient(gradient: torch.Tensor) -> torch.Tensor:
    """The gradient L2-normalised."""
    return F.normalize(gradient, dim=0)


def pge_distance(source: torch.Tensor, target: torch.Tensor) -> float | None:
    """||g^_S - g^_T||_2 of two expected gradients (each normalised here); None when either is exactly zero (it has
    no direction)."""
    if not (source.any() and target.any()):
        return None
    return float(torch.linalg.vector_norm(principal_gradient(source) - principal_gradient(target)))
