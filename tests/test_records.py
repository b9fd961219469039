"""The data path's records: ViewBatch from both pretraining paths (DataLoader workers included) with exactly the
fields the config asks for, ImageBatch from the evaluation loaders, and the records' moves."""

import dataclasses

import numpy as np
import pytest
import torch

from mochi_hvs.config import load_config, local_crops, views_per_image
from mochi_hvs.data.batches import build_batches
from mochi_hvs.data.datasets import load_fashion_mnist
from mochi_hvs.data.loader import LabelledDataset, eval_loader, pretrain_loader, supervised_loader
from mochi_hvs.data.records import ImageBatch, ViewBatch

CPU = torch.device("cpu")
BATCH = 8

# config overrides -> (views per image, small crops per image and their side; None: no small crops)
ASKED = {
    "moco_v2": ([], 2, None),
    "hvs": (["hvs.enabled=true", "hvs.num_views=3"], 3, None),
    "multicrop": (["multicrop.enabled=true", "multicrop.local_crops=2", "multicrop.local_size=12"], 2, (2, 12)),
}


def images_of(count: int = 32):
    return load_fashion_mnist(None, train=False).subset(np.arange(count))


def assert_fields_as_asked(batch: ViewBatch, images, views: int, crops: tuple[int, int] | None, side: int = 28):
    assert type(batch) is ViewBatch
    assert batch.views.shape == (BATCH, views, 3, side, side) and batch.views.dtype == torch.float32
    assert batch.boxes.shape == (BATCH, views, 4) and batch.boxes.dtype == torch.float32
    assert batch.flips.shape == (BATCH, views) and batch.flips.dtype == torch.bool
    for field in (batch.labels, batch.index, batch.source):
        assert field.shape == (BATCH,) and field.dtype == torch.int64
    assert torch.equal(batch.source, batch.index)  # every image readable: each sample is its own image
    assert torch.equal(batch.labels, torch.as_tensor(images.labels[batch.index.numpy()], dtype=torch.int64))
    if crops is None:
        assert batch.local_views is None and batch.local_boxes is None
    else:
        count, size = crops
        assert batch.local_views.shape == (BATCH, count, 3, size, size) and batch.local_boxes.shape == (BATCH, count, 4)


@pytest.mark.parametrize("augment_on", ["cpu", "device"])
@pytest.mark.parametrize("name", list(ASKED))
def test_both_paths_yield_view_batches_with_exactly_the_fields_the_config_asks_for(name, augment_on):
    overrides, views, crops = ASKED[name]
    cfg = load_config(None, [*overrides, f"data.augment_on={augment_on}", "data.workers=2"])
    assert (views_per_image(cfg), local_crops(cfg) and (local_crops(cfg).count, local_crops(cfg).size)) == (
        views, crops)
    images = images_of()
    batches = build_batches(images, cfg.data, views_per_image(cfg), BATCH, cfg.seed, CPU, local_crops=local_crops(cfg))
    got = list(batches)
    assert len(got) == 4
    for batch in got:
        assert_fields_as_asked(batch, images, views, crops)
    assert sorted(torch.cat([b.index for b in got]).tolist()) == list(range(32))  # an epoch: each image once


@pytest.mark.parametrize("name", ["moco_v2", "multicrop"])
def test_records_from_loader_workers_are_the_samples_collated_in_this_process(name):
    overrides, views, crops = ASKED[name]
    cfg = load_config(None, [*overrides, "data.workers=2"])
    images = images_of()
    loader = pretrain_loader(images, cfg.data, views, BATCH, seed=4, local_crops=local_crops(cfg))
    loader.sampler.set_epoch(1)
    order = [key for key in loader.sampler]  # (index, epoch) in the order the workers receive them
    for start, batch in zip(range(0, len(order), BATCH), loader, strict=True):
        here = ViewBatch.collate([loader.dataset[key] for key in order[start:start + BATCH]])
        for field in dataclasses.fields(ViewBatch):
            ours, theirs = getattr(batch, field.name), getattr(here, field.name)
            assert (ours is None and theirs is None) or torch.equal(ours, theirs), field.name
        assert_fields_as_asked(batch, images, views, crops)


@pytest.mark.parametrize("workers", [0, 2])
def test_evaluation_loaders_yield_image_batches(workers):
    images = images_of(20)
    cfg = load_config(None, [f"data.workers={workers}"])
    clean = list(eval_loader(images, cfg.data, 8))  # in memory: transformed a batch at a time
    augmented = list(supervised_loader(images, cfg.data, 8, seed=0, workers=workers))  # DataLoader workers
    for batches in (clean, augmented):
        assert all(type(b) is ImageBatch for b in batches) and all(b.images.shape[1:] == (3, 28, 28) for b in batches)
        index = torch.cat([b.index for b in batches])
        assert torch.equal(torch.cat([b.source for b in batches]), index)
        assert torch.equal(torch.cat([b.labels for b in batches]), torch.as_tensor(images.labels[index.numpy()]))
    assert [len(b.index) for b in clean] == [8, 8, 4] and [len(b.index) for b in augmented] == [8, 8]
    dataset = LabelledDataset(images, eval_loader(images, cfg.data, 8).dataset.transform)  # image by image
    assert torch.equal(ImageBatch.collate([dataset[i] for i in range(8)]).images, clean[0].images)


def test_a_record_is_frozen_and_moves_field_by_field():
    index = torch.arange(4)
    batch = ViewBatch(views=torch.rand(4, 2, 3, 8, 8), boxes=torch.rand(4, 2, 4), flips=torch.zeros(4, 2, dtype=bool),
                      labels=index % 2, index=index, source=index)
    with pytest.raises(dataclasses.FrozenInstanceError):
        batch.views = torch.zeros(1)
    moved = batch.to(CPU, non_blocking=True)
    assert type(moved) is ViewBatch and moved.local_views is None and moved.local_boxes is None
    assert all(getattr(moved, f.name) is getattr(batch, f.name) for f in dataclasses.fields(batch))  # already there
    halved = batch.map_tensors(lambda tensor: tensor[:2])
    assert halved.views.shape == (2, 2, 3, 8, 8) and torch.equal(halved.index, index[:2]) and halved.local_views is None


def test_the_loaders_pinning_pins_every_tensor_of_a_record(monkeypatch):
    """DataLoader(pin_memory=True) hands each batch to torch's pin_memory, which calls the record's own (the GPU
    check pins for real: tests/test_cuda.py); here Tensor.pin_memory is stood in for, there being no GPU."""
    from torch.utils.data._utils.pin_memory import pin_memory

    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda tensor, *args: pinned.append(tensor) or tensor.clone())
    index = torch.arange(4)
    batch = ViewBatch(views=torch.rand(4, 2, 3, 8, 8), boxes=torch.rand(4, 2, 4), flips=torch.zeros(4, 2, dtype=bool),
                      labels=index % 2, index=index, source=index, local_views=torch.rand(4, 3, 3, 4, 4),
                      local_boxes=torch.rand(4, 3, 4))
    out = pin_memory(batch)
    assert type(out) is ViewBatch and len(pinned) == len(dataclasses.fields(ViewBatch))
    for field in dataclasses.fields(ViewBatch):
        ours, theirs = getattr(out, field.name), getattr(batch, field.name)
        assert ours is not theirs and torch.equal(ours, theirs), field.name
    image_batch = pin_memory(ImageBatch(images=torch.rand(4, 3, 8, 8), labels=index, index=index, source=index))
    assert type(image_batch) is ImageBatch and len(pinned) == len(dataclasses.fields(ViewBatch)) + 4
