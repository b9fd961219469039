"""Deterministic, resumable data loading for pretraining and clean loading for evaluation.

Every sample's views depend only on (seed, epoch, dataset index): the same run gives the same
views whatever the number of workers or processes, and a run resumed mid-epoch sees exactly the
batches it would have seen. With data.skip_unreadable, an image file that cannot be decoded gives its
place to the next readable one in dataset order, which keeps that property (and every batch full).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm import tqdm

from ..config import LocalCrops
from ..errors import UserError
from ..random_streams import STREAMS, stream_seed
from .augment import clean_transform, post_crop_transform, supervised_transform
from .datasets import DatasetError, ImageSet, UnreadableImageError
from .records import ImageBatch, ImageSample, ViewBatch, ViewSample
from .views import ViewSampler


class TooFewImagesError(UserError, ValueError):
    """The pretraining images cannot fill one batch (every batch is full)."""


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields (index, epoch): a per-epoch permutation from (seed, epoch), sharded over ranks.

    `start_batch` skips the batches already consumed in this epoch (mid-epoch resume).
    Batches are full (drop_last): each rank gets `batches_per_epoch * local_batch` indices; TooFewImagesError when
    the images cannot fill one global batch.
    """

    def __init__(self, size: int, local_batch: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.size = size
        self.local_batch = local_batch
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_batch = 0
        global_batch = local_batch * world_size
        if size < global_batch:
            raise TooFewImagesError(f"the pretraining data holds {size} image(s), fewer than one batch of "
                                    f"{global_batch} (optim.batch_size={global_batch}): lower optim.batch_size to at "
                                    f"most {size}, or give it more images")
        self.batches_per_epoch = size // global_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (and the first batch to yield in it)."""
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.local_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(stream_seed(self.seed, STREAMS["order"], self.epoch))
        order = torch.randperm(self.size, generator=generator)
        used = order[: self.batches_per_epoch * self.local_batch * self.world_size]
        mine = used[self.rank:: self.world_size][self.start_batch * self.local_batch:]
        return ((int(i), self.epoch) for i in mine)


def readable_image(images: ImageSet, index: int, skip_unreadable: bool) -> tuple[torch.Tensor | Image.Image, int]:
    """The image at `index` and the index it was read from: `index` itself, or with `skip_unreadable`, when that
    file cannot be decoded, the next readable one in dataset order (wrapping around)."""
    for offset in range(len(images)):
        source = (index + offset) % len(images)
        try:
            return images.image(source), source
        except UnreadableImageError:
            if not skip_unreadable:
                raise
    raise DatasetError(f"none of the {len(images)} images can be read (the first tried: {images.files[index]})")


class MultiViewDataset(Dataset):
    """Pretraining samples (ViewSample): V augmented views, their crop boxes and flips, the label, the index and the
    source index; with `local_sampler` (multi-crop) also L small crops and their boxes (`local_views`,
    `local_boxes`). `collate` makes a list of them a ViewBatch.

    The views are drawn from (seed, epoch, index), the small crops after them from the same stream (so the views
    are the same with or without them); `source` differs from `index` only when the image at `index` was
    unreadable and skipped (the views, label and source then belong to the image read instead).
    """

    collate = ViewBatch.collate

    def __init__(self, images: ImageSet, sampler: ViewSampler, seed: int, skip_unreadable: bool = False,
                 local_sampler: ViewSampler | None = None) -> None:
        self.images = images
        self.sampler = sampler
        self.seed = seed
        self.skip_unreadable = skip_unreadable
        self.local_sampler = local_sampler

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> ViewSample:
        index, epoch = key
        image, source = readable_image(self.images, index, self.skip_unreadable)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream_seed(self.seed, STREAMS["views"], epoch, index))
            views, boxes, flips = self.sampler.with_flips(image)
            local_views, local_boxes = (None, None) if self.local_sampler is None else self.local_sampler(image)
        return ViewSample(views=views, boxes=boxes, flips=flips, label=int(self.images.labels[source]), index=index,
                          source=source, local_views=local_views, local_boxes=local_boxes)


class LabelledDataset(Dataset):
    """Labelled samples (ImageSample): one view made by `transform` (clean or augmented), the label, the index and
    the source index (as in MultiViewDataset: the image read in place of a skipped unreadable one). `collate` makes
    a list of them an ImageBatch."""

    collate = ImageBatch.collate

    def __init__(self, images: ImageSet, transform, skip_unreadable: bool = False) -> None:
        self.images = images
        self.transform = transform
        self.skip_unreadable = skip_unreadable

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> ImageSample:
        image, source = readable_image(self.images, index, self.skip_unreadable)
        return ImageSample(image=self.transform(image), label=int(self.images.labels[source]), index=index,
                           source=source)


def worker_message(err: Exception) -> str | None:
    """The message `err` was raised with in a DataLoader worker, None when it was not raised in one.

    The main process re-raises a worker's exception as the same type, its message wrapped in the worker's
    traceback: "Caught <Type> in DataLoader worker process N.\nOriginal Traceback ...\n<module>.<Type>: <message>".
    """
    text = str(err)
    marker = f"\n{type(err).__module__}.{type(err).__qualname__}: "
    if not text.startswith(f"Caught {type(err).__name__} ") or marker not in text:
        return None
    return text.rpartition(marker)[2].strip()


class ImageLoader(DataLoader):
    """A DataLoader of MultiViewDataset / LabelledDataset batches (ViewBatch / ImageBatch, collated in the workers)
    that, in the main process, names every skipped unreadable file once (a warning line with the running count) and
    gives a DatasetError raised in a worker its own one-line message back."""

    def __init__(self, dataset: MultiViewDataset | LabelledDataset, **kwargs) -> None:
        super().__init__(dataset, collate_fn=dataset.collate, **kwargs)
        self.skipped: set[int] = set()

    def __iter__(self) -> Iterator[ViewBatch | ImageBatch]:
        batches = super().__iter__()
        try:
            for batch in batches:
                if self.dataset.skip_unreadable:
                    self._report_skipped(batch.index.tolist(), batch.source.tolist())
                yield batch
        except Exception as err:
            self._stop_workers(batches)
            message = worker_message(err) if isinstance(err, DatasetError) else None
            if message is None:
                raise
            raise type(err)(message) from None

    def _stop_workers(self, batches: Iterator) -> None:
        """Stop the worker processes of a failed iteration now. Left to the garbage collector (the error's traceback
        holds the iterator in a reference cycle), they are stopped after their queues' feeder threads, never hear
        the stop, and torch waits 5 s for each before killing it."""
        self._iterator = None  # a persistent-workers loader starts afresh next time
        if hasattr(batches, "_shutdown_workers"):
            batches._shutdown_workers()

    def _report_skipped(self, indices: list[int], sources: list[int]) -> None:
        images = self.dataset.images
        for index, source in zip(indices, sources, strict=True):
            for offset in range((source - index) % len(images)):  # the unreadable files passed over
                skipped = (index + offset) % len(images)
                if skipped not in self.skipped:
                    self.skipped.add(skipped)
                    tqdm.write(f"warning: skipped unreadable image {images.files[skipped]} ({len(self.skipped)} "
                               "so far); the next readable image takes its place", file=sys.stderr)


def native_size(images: ImageSet) -> int | None:
    """Side of in-memory square images, None for files of varying size."""
    return None if images.array is None else int(images.array.shape[1])


def local_view_sampler(data_cfg, crops: LocalCrops) -> ViewSampler:
    """The sampler of multi-crop's small crops: the views' augmentation at the crops' size and area range."""
    post = post_crop_transform(data_cfg.augmentation, crops.size, data_cfg.mean, data_cfg.std,
                               tuple(data_cfg.color_jitter), tuple(data_cfg.stain_jitter), data_cfg.orientation)
    return ViewSampler(crops.count, crops.size, post, crops.scale)


def pretrain_loader(
    images: ImageSet, data_cfg, num_views: int, local_batch: int, seed: int, rank: int = 0, world_size: int = 1,
    pin_memory: bool = False, local_crops: LocalCrops | None = None,
) -> ImageLoader:
    """Loader of multi-view batches (with multi-crop's small crops when `local_crops` is given); its `.sampler` is the
    EpochSampler to drive per epoch."""
    post = post_crop_transform(data_cfg.augmentation, data_cfg.image_size, data_cfg.mean, data_cfg.std,
                               tuple(data_cfg.color_jitter), tuple(data_cfg.stain_jitter), data_cfg.orientation)
    views = ViewSampler(num_views, data_cfg.image_size, post, tuple(data_cfg.crop_scale))
    local = None if local_crops is None else local_view_sampler(data_cfg, local_crops)
    dataset = MultiViewDataset(images, views, seed, data_cfg.skip_unreadable, local)
    sampler = EpochSampler(len(images), local_batch, seed, rank, world_size)
    return ImageLoader(
        dataset, batch_size=local_batch, sampler=sampler, drop_last=True, num_workers=data_cfg.workers,
        pin_memory=pin_memory, persistent_workers=data_cfg.workers > 0,
        prefetch_factor=4 if data_cfg.workers > 0 else None,
    )


def three_channels(images: torch.Tensor) -> torch.Tensor:
    """A (N, C, H, W) batch as three channels: grayscale repeated (a view, no copy), colour as it is."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class BatchedImages:
    """The samples of an in-memory LabelledDataset made a batch at a time: its transform applied once to a stacked
    batch of images (the clean evaluation transform gives exactly what it gives image by image), in dataset order
    or in the sampler's. Iterates like a DataLoader of that dataset, many times faster for small images."""

    def __init__(self, dataset: LabelledDataset, batch_size: int, sampler: Sampler | None = None) -> None:
        if dataset.images.array is None:
            raise ValueError("BatchedImages needs an in-memory image set")
        self.dataset = dataset
        self.batch_size = batch_size
        self.sampler = sampler

    def _order(self) -> torch.Tensor:
        return torch.as_tensor(list(self.sampler) if self.sampler is not None else range(len(self.dataset)))

    def __len__(self) -> int:
        return -(-len(self._order()) // self.batch_size)

    def __iter__(self) -> Iterator[ImageBatch]:
        images = self.dataset.images
        for index in self._order().split(self.batch_size):
            rows = index.numpy()
            pixels = three_channels(torch.from_numpy(images.array[rows]).permute(0, 3, 1, 2))
            yield ImageBatch(images=self.dataset.transform(pixels), labels=torch.from_numpy(images.labels[rows]),
                             index=index, source=index)


def eval_loader(images: ImageSet, data_cfg, batch_size: int,
                workers: int | None = None) -> ImageLoader | BatchedImages:
    """Loader of clean images in dataset order; under torch.distributed, this process's shard (padded to equal size).
    In-memory sets are transformed a batch at a time (BatchedImages), files image by image in `workers` processes."""
    transform = clean_transform(data_cfg.image_size, data_cfg.mean, data_cfg.std, native_size(images))
    dataset = LabelledDataset(images, transform, data_cfg.skip_unreadable)
    sampler = DistributedSampler(dataset, shuffle=False) if dist.is_available() and dist.is_initialized() else None
    if images.array is not None:
        return BatchedImages(dataset, batch_size, sampler)
    workers = data_cfg.workers if workers is None else workers
    return ImageLoader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler, num_workers=workers)


def supervised_loader(images: ImageSet, data_cfg, batch_size: int, seed: int,
                      workers: int | None = None) -> ImageLoader:
    """Shuffled (seeded) loader of augmented labelled images, for linear probes and fine-tuning.

    The last partial batch is dropped when there is more than one batch (a lone sample breaks BatchNorm).
    """
    transform = supervised_transform(data_cfg.image_size, data_cfg.mean, data_cfg.std)
    workers = data_cfg.workers if workers is None else workers
    dataset = LabelledDataset(images, transform, data_cfg.skip_unreadable)
    return ImageLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=len(images) > batch_size,
                       num_workers=workers, generator=torch.Generator().manual_seed(seed))
