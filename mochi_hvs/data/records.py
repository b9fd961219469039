"""The records of the data path: one sample as a dataset returns it, one batch as the loops read it.

Pretraining reads a ViewBatch, the evaluators an ImageBatch: frozen dataclasses of tensors whose first dimension is
the batch. A field the config does not ask for is None (multi-crop's small crops without it). A dataset returns one
sample (ViewSample, ImageSample); the batch class's `collate` stacks a list of them into a batch (a DataLoader's
collate_fn: in a worker it stacks into shared memory, as torch's default collation does), `pin_memory` pins it
(DataLoader(pin_memory=True) calls it) and `to` moves it to the training device.

`index` is each sample's position in its image set; `source` the position of the image its pixels and label came
from: the same, except where data.skip_unreadable put the next readable image in an unreadable one's place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch.utils.data import default_collate

Record = TypeVar("Record", bound="TensorRecord")


def stacked(values: Sequence) -> torch.Tensor:
    """One field of a list of samples as a batch tensor: tensors stacked, ints made an int64 tensor (torch's
    default collation of that field)."""
    return default_collate(list(values))


@dataclass(frozen=True)
class TensorRecord:
    """A record of tensors (and Nones) that moves and pins field by field."""

    def map_tensors(self: Record, fn: Callable[[torch.Tensor], torch.Tensor]) -> Record:
        """The record with `fn` applied to every tensor field (None fields stay None)."""
        return dataclasses.replace(self, **{field.name: fn(value) for field in dataclasses.fields(self)
                                            if isinstance(value := getattr(self, field.name), torch.Tensor)})

    def to(self: Record, device: torch.device | str, non_blocking: bool = False) -> Record:
        """The record on `device` (a tensor already there is the same tensor)."""
        return self.map_tensors(lambda tensor: tensor.to(device, non_blocking=non_blocking))

    def pin_memory(self: Record) -> Record:
        """The record in page-locked memory (what DataLoader(pin_memory=True) calls on each batch)."""
        return self.map_tensors(torch.Tensor.pin_memory)


@dataclass(frozen=True)
class ViewSample:
    """One pretraining sample: V views (V, 3, S, S), their crop boxes (V, 4) and flips (V,), the label, index and
    source; with multi-crop also L small crops (L, 3, s, s) and their boxes (L, 4)."""

    views: torch.Tensor
    boxes: torch.Tensor
    flips: torch.Tensor
    label: int
    index: int
    source: int
    local_views: torch.Tensor | None = None
    local_boxes: torch.Tensor | None = None


@dataclass(frozen=True)
class ViewBatch(TensorRecord):
    """A pretraining batch: views (B, V, 3, S, S), boxes (B, V, 4) (x0, y0, x1, y1 of each view's crop, normalised to
    the image), flips (B, V) bool (each view flipped horizontally after cropping), labels (B,) (analysis metrics
    only), index and source (B,); with multi-crop also local_views (B, L, 3, s, s) and local_boxes (B, L, 4), else
    None."""

    views: torch.Tensor
    boxes: torch.Tensor
    flips: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    source: torch.Tensor
    local_views: torch.Tensor | None = None
    local_boxes: torch.Tensor | None = None

    @classmethod
    def collate(cls, samples: Sequence[ViewSample]) -> ViewBatch:
        """The batch of `samples` (all with small crops or all without)."""
        local = samples[0].local_views is not None
        return cls(views=stacked(s.views for s in samples), boxes=stacked(s.boxes for s in samples),
                   flips=stacked(s.flips for s in samples), labels=stacked(s.label for s in samples),
                   index=stacked(s.index for s in samples), source=stacked(s.source for s in samples),
                   local_views=stacked(s.local_views for s in samples) if local else None,
                   local_boxes=stacked(s.local_boxes for s in samples) if local else None)


@dataclass(frozen=True)
class ImageSample:
    """One labelled image for evaluation: the image (3, S, S) as the loader's transform made it, label, index and
    source."""

    image: torch.Tensor
    label: int
    index: int
    source: int


@dataclass(frozen=True)
class ImageBatch(TensorRecord):
    """A batch of labelled images for evaluation: images (B, 3, S, S), labels, index and source (B,)."""

    images: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    source: torch.Tensor

    @classmethod
    def collate(cls, samples: Sequence[ImageSample]) -> ImageBatch:
        """The batch of `samples`."""
        return cls(images=stacked(s.image for s in samples), labels=stacked(s.label for s in samples),
                   index=stacked(s.index for s in samples), source=stacked(s.source for s in samples))
