"""Deterministic, resumable data loading for pretraining and clean loading for evaluation.

Every sample's views depend only on (seed, epoch, dataset index): the same run gives the same
views whatever the number of workers or processes, and a run resumed mid-epoch sees exactly the
batches it would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .augment import clean_transform, post_crop_transform, supervised_transform
from .datasets import ImageSet
from .views import ViewSampler

ORDER_STREAM, VIEW_STREAM = 0, 1


def mixed_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from non-negative integers (run seed, stream, epoch, index...)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> np.uint64(1))


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields (index, epoch): a per-epoch permutation from (seed, epoch), sharded over ranks.

    `start_batch` skips the batches already consumed in this epoch (mid-epoch resume).
    Batches are full (drop_last): each rank gets `batches_per_epoch * local_batch` indices.
    """

    def __init__(self, size: int, local_batch: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.size = size
        self.local_batch = local_batch
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_batch = 0
        self.batches_per_epoch = size // (local_batch * world_size)
        if self.batches_per_epoch == 0:
            raise ValueError(f"dataset of {size} images is smaller than one global batch ({local_batch * world_size})")

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (and the first batch to yield in it)."""
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.local_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(mixed_seed(self.seed, ORDER_STREAM, self.epoch))
        order = torch.randperm(self.size, generator=generator)
        used = order[: self.batches_per_epoch * self.local_batch * self.world_size]
        mine = used[self.rank:: self.world_size][self.start_batch * self.local_batch:]
        return ((int(i), self.epoch) for i in mine)


class MultiViewDataset(Dataset):
    """Pretraining samples: V augmented views, their crop boxes, the label and the index."""

    def __init__(self, images: ImageSet, sampler: ViewSampler, seed: int) -> None:
        self.images = images
        self.sampler = sampler
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor | int]:
        index, epoch = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mixed_seed(self.seed, VIEW_STREAM, epoch, index))
            views, boxes = self.sampler(self.images.image(index))
        return {"views": views, "boxes": boxes, "label": int(self.images.labels[index]), "index": index}


class CleanDataset(Dataset):
    """Labelled samples: one view made by `transform` (clean or augmented), the label and the index."""

    def __init__(self, images: ImageSet, transform) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        image = self.transform(self.images.image(index))
        return {"image": image, "label": int(self.images.labels[index]), "index": index}


def native_size(images: ImageSet) -> int | None:
    """Side of in-memory square images, None for files of varying size."""
    return None if images.array is None else int(images.array.shape[1])


def pretrain_loader(
    images: ImageSet, data_cfg, local_batch: int, seed: int, rank: int = 0, world_size: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """Loader of multi-view batches; its `.sampler` is the EpochSampler to drive per epoch."""
    post = post_crop_transform(data_cfg.augmentation, data_cfg.image_size, data_cfg.mean, data_cfg.std)
    views = ViewSampler(data_cfg.num_views, data_cfg.image_size, post, tuple(data_cfg.crop_scale))
    dataset = MultiViewDataset(images, views, seed)
    sampler = EpochSampler(len(images), local_batch, seed, rank, world_size)
    return DataLoader(
        dataset, batch_size=local_batch, sampler=sampler, drop_last=True, num_workers=data_cfg.workers,
        pin_memory=pin_memory, persistent_workers=data_cfg.workers > 0,
        prefetch_factor=4 if data_cfg.workers > 0 else None,
    )


def eval_loader(images: ImageSet, data_cfg, batch_size: int, workers: int | None = None) -> DataLoader:
    """Loader of clean images in dataset order; under torch.distributed, this process's shard (padded to equal size)."""
    transform = clean_transform(data_cfg.image_size, data_cfg.mean, data_cfg.std, native_size(images))
    workers = data_cfg.workers if workers is None else workers
    dataset = CleanDataset(images, transform)
    sampler = DistributedSampler(dataset, shuffle=False) if dist.is_available() and dist.is_initialized() else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler, num_workers=workers)


def supervised_loader(images: ImageSet, data_cfg, batch_size: int, seed: int,
                      workers: int | None = None) -> DataLoader:
    """Shuffled (seeded) loader of augmented labelled images, for linear probes and fine-tuning.

    The last partial batch is dropped when there is more than one batch (a lone sample breaks BatchNorm).
    """
    transform = supervised_transform(data_cfg.image_size, data_cfg.mean, data_cfg.std)
    workers = data_cfg.workers if workers is None else workers
    return DataLoader(CleanDataset(images, transform), batch_size=batch_size, shuffle=True,
                      drop_last=len(images) > batch_size, num_workers=workers,
                      generator=torch.Generator().manual_seed(seed))
