"""The images of continual pretraining's tasks, and the batches of a task sequence (config/continual.py declares it).

A sequence of T tasks of S steps runs as T epochs of S batches: epoch t draws task t's batches, over as many passes
of its images as S batches need, each pass ordered and augmented from (seed, t, pass) alone, so that a run resumed
anywhere, a task boundary included, sees exactly the batches it would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..config.continual import TaskSpec
from .batches import BatchSource
from .datasets import DatasetError, ImageSet, load_images
from .records import ViewBatch

PASSES_PER_TASK = 1_000_000  # pass p of task t reads as epoch t * PASSES_PER_TASK + p of its batch source


def task_images(task: TaskSpec, split: str) -> ImageSet:
    """A task's images of one split (pretrain, train or test): its dataset's, cut to its classes where it names
    them."""
    images = load_images(task.data, task.root, split)
    if task.classes is None:
        return images
    outside = [c for c in task.classes if c >= len(images.classes)]
    if outside:
        raise DatasetError(f"task {task.name}: class {outside[0]} is out of range: {task.data} has classes "
                           f"0-{len(images.classes) - 1}")
    return images.subset(np.flatnonzero(np.isin(images.labels, task.classes)))


def _resized(array: np.ndarray, size: int, channels: int) -> np.ndarray:
    """(N, H, W, C) uint8 images as (N, size, size, channels): bilinear resize, grey repeated to RGB."""
    if array.shape[1:] == (size, size, channels):
        return array
    x = torch.from_numpy(array).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = x.expand(-1, channels, -1, -1) if x.shape[1] == 1 else x
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def union(sets: list[ImageSet], size: int) -> ImageSet:
    """Several tasks' images as one set (the joint upper bound): in-memory sets of different shapes are resized to
    size x size (and grey to RGB where another is RGB); labels keep each set's own class indices."""
    labels = np.concatenate([s.labels for s in sets])
    if all(s.array is not None for s in sets):
        shapes = {s.array.shape[1:] for s in sets}
        if len(shapes) > 1:
            channels = max(s.array.shape[3] for s in sets)
            return ImageSet(labels, sets[0].classes, array=np.concatenate([_resized(s.array, size, channels)
                                                                           for s in sets]))
        return ImageSet(labels, sets[0].classes, array=np.concatenate([s.array for s in sets]))
    if any(s.array is not None for s in sets):
        raise DatasetError("continual.joint: the tasks mix in-memory datasets with image folders; list them as "
                           "tasks of one kind")
    return ImageSet(labels, sets[0].classes, files=[f for s in sets for f in s.files])


class TaskBatches:
    """The batches of a task sequence: epoch t of the run is task t's `steps` batches (module docstring)."""

    def __init__(self, sources: list[BatchSource], steps: int) -> None:
        """sources: one batch source per task, in order; steps: batches per task."""
        self.sources = sources
        self.steps = steps
        self.batches_per_epoch = steps
        self.task = 0
        self.start = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the task (the run's epoch) and the first of its batches to produce."""
        self.task, self.start = epoch, start_batch

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self) -> Iterator[ViewBatch]:
        source = self.sources[self.task]
        per_pass = source.sampler.batches_per_epoch
        done = self.start
        while done < self.steps:
            source.set_epoch(self.task * PASSES_PER_TASK + done // per_pass, done % per_pass)
            for batch in source:
                yield batch
                done += 1
                if done == self.steps or done % per_pass == 0:
                    break


def task_batches(tasks: list[TaskSpec], steps: int, joint: bool, size: int,
                 build: Callable[[ImageSet], BatchSource]) -> tuple[TaskBatches, ImageSet]:
    """The run's batches: one source per task (`build` makes one from images), or one over the union of every task's
    images for len(tasks) x steps batches where `joint`; and the images of the first task (or the union)."""
    sets = [task_images(task, "pretrain") for task in tasks]
    if joint:
        everything = union(sets, size)
        return TaskBatches([build(everything)], steps * len(tasks)), everything
    return TaskBatches([build(images) for images in sets], steps), sets[0]
