"""torch.distributed helpers: process-group setup from torchrun's environment, gathers, key shuffling."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: its rank, the world size and its local (per-node) rank."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on the process that logs, prints and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


def init_distributed(device_type: str) -> DistEnv:
    """Join the process group torchrun describes (WORLD_SIZE/RANK/LOCAL_RANK), or run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistEnv()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


@torch.no_grad()
def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every process along dim 0 (no gradient); identity when alone."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def shuffle_batch(
    x: torch.Tensor, generator: torch.Generator | None,
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Permute a batch on this device; returns the shuffled batch and the function that undoes it."""
    perm = torch.randperm(x.shape[0], generator=generator, device=generator.device if generator else x.device)
    perm = perm.to(x.device)
    inverse = torch.argsort(perm)
    return x[perm], lambda y: y[inverse]
