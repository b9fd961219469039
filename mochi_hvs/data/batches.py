"""Per-step multi-view batches on the training device, from either augmentation path.

`device` path: the uint8 images sit on the training device and BatchViewAugmenter makes the views
there, from a generator seeded by (seed, epoch, batch, rank). `cpu` path: torchvision transforms
per sample in DataLoader workers. Both follow the same EpochSampler order and yield ViewBatch records (records.py)
on the device: views (B, V, 3, S, S), boxes (B, V, 4), flips (B, V) (whether each view was flipped horizontally),
labels, index and source (B,); with `local_crops` (multi-crop) also local_views (B, L, 3, s, s) and local_boxes
(B, L, 4), drawn after the views from the same stream (else None).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from ..config import LocalCrops
from ..random_streams import STREAMS, stream_seed
from .batch_augment import BatchViewAugmenter
from .datasets import ImageSet
from .loader import EpochSampler, pretrain_loader, three_channels
from .records import ViewBatch


class DeviceAugmentedBatches:
    """In-memory images on the device, augmented a whole batch at a time."""

    def __init__(self, images: ImageSet, data_cfg, num_views: int, local_batch: int, seed: int, device: torch.device,
                 rank: int = 0, world_size: int = 1, local_crops: LocalCrops | None = None) -> None:
        if images.array is None:
            raise ValueError("data.augment_on=device needs an in-memory dataset (fashion_mnist, cifar, stl10)")
        self.sampler = EpochSampler(len(images), local_batch, seed, rank, world_size)
        self.pixels = torch.from_numpy(images.array.copy()).permute(0, 3, 1, 2).contiguous().to(device)
        self.labels = torch.from_numpy(images.labels).to(device)
        colour = {"color_jitter": tuple(data_cfg.color_jitter), "stain_jitter": tuple(data_cfg.stain_jitter),
                  "orientation": data_cfg.orientation}
        self.augment = BatchViewAugmenter(num_views, data_cfg.image_size, data_cfg.augmentation,
                                          data_cfg.mean, data_cfg.std, tuple(data_cfg.crop_scale), **colour)
        self.augment_local = None if local_crops is None else BatchViewAugmenter(
            local_crops.count, local_crops.size, data_cfg.augmentation, data_cfg.mean, data_cfg.std, local_crops.scale,
            **colour)
        self.local_batch = local_batch
        self.seed = seed
        self.rank = rank
        self.device = device

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch and the first batch to produce."""
        self.sampler.set_epoch(epoch, start_batch)

    def __len__(self) -> int:
        return len(self.sampler) // self.local_batch

    def __iter__(self) -> Iterator[ViewBatch]:
        epoch, start = self.sampler.epoch, self.sampler.start_batch
        order = torch.tensor([i for i, _ in self.sampler], dtype=torch.long).view(-1, self.local_batch)
        generator = torch.Generator(device=self.device)
        for offset, cpu_index in enumerate(order):
            index = cpu_index.to(self.device, non_blocking=True)
            generator.manual_seed(stream_seed(self.seed, STREAMS["views"], epoch, start + offset, self.rank))
            images = three_channels(self.pixels.index_select(0, index))
            views, boxes, flips = self.augment.with_flips(images, generator)
            local_views, local_boxes = None, None
            if self.augment_local is not None:  # multi-crop's small crops, after the views
                local_views, local_boxes = self.augment_local(images, generator)
            yield ViewBatch(views=views, boxes=boxes, flips=flips, labels=self.labels.index_select(0, index),
                            index=index, source=index, local_views=local_views, local_boxes=local_boxes)


class LoaderBatches:
    """torchvision transforms per sample in DataLoader workers, moved to the device per batch."""

    def __init__(self, images: ImageSet, data_cfg, num_views: int, local_batch: int, seed: int, device: torch.device,
                 rank: int = 0, world_size: int = 1, local_crops: LocalCrops | None = None) -> None:
        self.loader = pretrain_loader(images, data_cfg, num_views, local_batch, seed, rank, world_size,
                                      pin_memory=device.type == "cuda", local_crops=local_crops)
        self.sampler: EpochSampler = self.loader.sampler
        self.device = device

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch and the first batch to produce."""
        self.sampler.set_epoch(epoch, start_batch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[ViewBatch]:
        for batch in self.loader:
            yield batch.to(self.device, non_blocking=True)


BatchSource = DeviceAugmentedBatches | LoaderBatches


def build_batches(images: ImageSet, data_cfg, num_views: int, local_batch: int, seed: int, device: torch.device,
                  rank: int = 0, world_size: int = 1, local_crops: LocalCrops | None = None) -> BatchSource:
    """The batch source data.augment_on asks for (auto: device for in-memory sets, else cpu)."""
    where = data_cfg.augment_on
    if where == "auto":
        where = "device" if images.array is not None else "cpu"
    cls = DeviceAugmentedBatches if where == "device" else LoaderBatches
    return cls(images, data_cfg, num_views, local_batch, seed, device, rank, world_size, local_crops)


def endless(batches: Iterable) -> Iterator:
    """The batches of an iterable (a loader, a batch source) over and over; an error if it yields none."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise RuntimeError("the data yields no batch")
