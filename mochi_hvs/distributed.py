"""torch.distributed helpers: process-group setup from torchrun's environment, gathers, shuffle-BN.

Samples are laid out across processes in the order the EpochSampler deals them: global position
j * world + rank is local sample j of that rank. Gathers return that interleaved order, so a run on
W processes sees its global batch in the same order as a run on one process (and split BatchNorm
group g of one process holds exactly the samples of rank g): results do not depend on the world size.
"""

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


def init_distributed(device: str) -> DistEnv:
    """Join the process group torchrun describes (WORLD_SIZE/RANK/LOCAL_RANK), or run alone.

    `device` is the configured one (auto|cpu|cuda|cuda:N): NCCL when it means CUDA, gloo otherwise.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistEnv()
    on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if on_cuda else "gloo")
    return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's `tensor` (same shape everywhere) along dim 0 in interleaved global order; no gradient."""
    _, size = world()
    if size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.stack(parts, dim=1).flatten(0, 1)  # row j * size + r = row j of rank r


@torch.no_grad()
def all_reduce_sum(tensor: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Sum of `tensor` over the processes of `group` (all of them by default); identity when alone."""
    if world()[1] == 1:
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor, group=group)
    return tensor


@torch.no_grad()
def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of `tensor` over processes (identity when alone)."""
    return all_reduce_sum(tensor) / world()[1]


@torch.no_grad()
def shuffle_across_processes(
    x: torch.Tensor, generator: torch.Generator | None,
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """MoCo's shuffle-BN: permute the global batch, hand each process its share, and the function that undoes it.

    Only dim 0 (the samples) is permuted: x may carry more axes, e.g. (B, V, C, H, W) with the V views of
    each sample, which then travel together. The permutation of the B * world samples is drawn from
    `generator` (the same draw whatever the trailing axes) and broadcast from rank 0. Each process gets the
    shuffled positions p = rank (mod world): with one process this is a plain local shuffle. The returned
    function takes this process's outputs for its share (sample axis first) and returns the outputs of its
    own samples, in order.
    """
    rank, size = world()
    batch = all_gather_cat(x)
    device = generator.device if generator is not None else x.device
    perm = torch.randperm(batch.shape[0], generator=generator, device=device).to(x.device)
    if size > 1:
        dist.broadcast(perm, src=0)
    inverse = torch.argsort(perm)

    def restore(y: torch.Tensor) -> torch.Tensor:
        return all_gather_cat(y)[inverse][rank::size]

    return batch[perm[rank::size]], restore
