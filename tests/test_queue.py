import torch

from mochi_hvs.queue import MemoryQueue


def test_enqueue_writes_oldest_slots_and_advances_pointer():
    queue = MemoryQueue(size=6, dim=2)
    first = torch.arange(8.0).view(4, 2)
    queue.enqueue(first)
    assert torch.equal(queue.features[:4], first)
    assert int(queue.pointer) == 4


def test_wrap_around_when_batch_does_not_divide_size():
    queue = MemoryQueue(size=5, dim=1)
    before = queue.features.clone()
    queue.enqueue(torch.tensor([[1.0], [2.0], [3.0]]))
    queue.enqueue(torch.tensor([[4.0], [5.0], [6.0]]))  # slots 3, 4, then wraps to 0
    assert queue.features.flatten().tolist() == [6.0, 2.0, 3.0, 4.0, 5.0]
    assert int(queue.pointer) == 1
    queue.enqueue(torch.tensor([[7.0], [8.0], [9.0]]))
    assert queue.features.flatten().tolist() == [6.0, 7.0, 8.0, 9.0, 5.0]
    assert int(queue.pointer) == 4
    assert not torch.equal(before, queue.features)


def test_initial_entries_are_unit_vectors():
    queue = MemoryQueue(size=32, dim=16)
    assert torch.allclose(queue.features.norm(dim=1), torch.ones(32), atol=1e-6)


def test_state_dict_persists_features_and_pointer():
    queue = MemoryQueue(size=8, dim=3)
    queue.enqueue(torch.randn(5, 3))
    restored = MemoryQueue(size=8, dim=3)
    restored.load_state_dict(queue.state_dict())
    assert torch.equal(restored.features, queue.features)
    assert int(restored.pointer) == 5
    restored.enqueue(torch.ones(4, 3))
    assert int(restored.pointer) == 1


def test_enqueue_does_not_keep_gradient_history():
    queue = MemoryQueue(size=4, dim=2)
    keys = torch.randn(2, 2, requires_grad=True)
    queue.enqueue(keys * 2)
    assert not queue.features.requires_grad
