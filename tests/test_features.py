import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from test_distributed import run_ranks
from torch.utils.data import DataLoader

from mochi_hvs.config import DataConfig, load_config
from mochi_hvs.data.datasets import ImageSet, load_fashion_mnist
from mochi_hvs.data.loader import LabelledDataset, eval_loader
from mochi_hvs.evaluation.features import extract_features

SIZE = 11  # odd: a 2-process DistributedSampler pads one repeated sample


def tiny_images() -> ImageSet:
    rng = np.random.default_rng(0)
    return ImageSet(labels=np.arange(SIZE) % 3, classes=["a", "b", "c"],
                    array=rng.integers(0, 255, size=(SIZE, 8, 8, 1), dtype=np.uint8))


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))


def reference() -> tuple[torch.Tensor, torch.Tensor]:
    images, cfg = tiny_images(), DataConfig(image_size=8)
    loader = eval_loader(images, cfg, batch_size=4, workers=0)
    net = tiny_net()
    x = torch.stack([loader.dataset[i].image for i in range(SIZE)])
    return nn.functional.normalize(net(x), dim=1).detach(), torch.as_tensor(images.labels)


def test_rows_follow_dataset_order_whatever_the_loader_order():
    images, cfg = tiny_images(), DataConfig(image_size=8)
    dataset = LabelledDataset(images, eval_loader(images, cfg, 4, workers=0).dataset.transform)
    shuffled = DataLoader(dataset, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(1),
                          collate_fn=dataset.collate)
    features, labels = extract_features(tiny_net(), shuffled, torch.device("cpu"))
    expected, expected_labels = reference()
    assert torch.allclose(features, expected, atol=1e-6)
    assert torch.equal(labels, expected_labels)


def _worker(rank: int, out_dir: str) -> None:
    dist.init_process_group("gloo")
    loader = eval_loader(tiny_images(), DataConfig(image_size=8), batch_size=2, workers=0)
    assert len(loader.sampler) == (SIZE + 1) // 2  # this process's padded shard, not the whole set
    features, labels = extract_features(tiny_net(), loader, torch.device("cpu"))
    torch.save((features, labels), f"{out_dir}/rank{rank}.pt")


def test_distributed_extraction_gathers_by_index(tmp_path):
    run_ranks(_worker, 2, str(tmp_path))
    expected, expected_labels = reference()
    for rank in range(2):
        features, labels = torch.load(tmp_path / f"rank{rank}.pt")
        assert features.shape == expected.shape
        assert torch.allclose(features, expected, atol=1e-6)
        assert torch.equal(labels, expected_labels)


@pytest.mark.parametrize("image_size", [28, 56])
def test_in_memory_sets_are_transformed_a_batch_at_a_time_exactly_as_image_by_image(image_size):
    from torch.utils.data import DistributedSampler

    from mochi_hvs.data.loader import BatchedImages

    cfg = load_config(None, [f"data.image_size={image_size}"])
    images = load_fashion_mnist(None, train=False).subset(np.arange(300))
    batched = eval_loader(images, cfg.data, 128)
    assert isinstance(batched, BatchedImages) and len(batched) == 3
    for fast, slow in zip(batched, DataLoader(batched.dataset, batch_size=128, collate_fn=batched.dataset.collate),
                          strict=True):
        assert torch.equal(fast.images, slow.images) and torch.equal(fast.labels, slow.labels)
        assert torch.equal(fast.index, slow.index)
    sampler = DistributedSampler(batched.dataset, num_replicas=2, rank=1, shuffle=False)  # a process's shard
    sharded = BatchedImages(batched.dataset, 128, sampler)
    assert torch.cat([b.index for b in sharded]).tolist() == list(sampler)
