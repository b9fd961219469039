import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mochi_hvs.evaluation.knn import KnnMonitor, knn_scores_by_k, topk_accuracy, weighted_knn_scores
from mochi_hvs.evaluation.search import MAX_BLOCK, query_chunk, search
from mochi_hvs.models.backbone import build_backbone


def brute_force_knn(bank, bank_labels, queries, num_classes, k, t):
    """Reference: full similarity matrix, explicit loops over neighbours."""
    scores = torch.zeros(queries.shape[0], num_classes, dtype=torch.float64)
    sim = queries.double() @ bank.double().t()
    for i in range(queries.shape[0]):
        order = sorted(range(bank.shape[0]), key=lambda j: -float(sim[i, j]))[:k]
        for j in order:
            scores[i, int(bank_labels[j])] += float(torch.exp(sim[i, j] / t))
    return scores


def test_weighted_knn_matches_brute_force_across_chunks():
    torch.manual_seed(0)
    bank = F.normalize(torch.randn(300, 16), dim=1)
    labels = torch.randint(0, 5, (300,))
    queries = F.normalize(torch.randn(37, 16), dim=1)
    ref = brute_force_knn(bank, labels, queries, 5, k=20, t=0.07)
    for chunk in (1, 8, 1000):
        ours = weighted_knn_scores(bank, labels, queries, 5, k=20, temperature=0.07, chunk=chunk)
        assert torch.allclose(ours.double(), ref, rtol=1e-4)


def test_topk_accuracy():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 1])
    acc = topk_accuracy(scores, labels, ks=(1, 2))
    assert abs(acc[1] - 100 / 3) < 1e-4 and abs(acc[2] - 200 / 3) < 1e-4


def test_k_larger_than_bank_uses_the_whole_bank():
    bank = F.normalize(torch.randn(4, 3), dim=1)
    scores = weighted_knn_scores(bank, torch.tensor([0, 0, 1, 1]), bank[:1], 2, k=50, temperature=1.0)
    assert torch.allclose(scores.sum(), torch.exp(bank[:1] @ bank.t()).sum())


def random_bank(n=300, m=37, d=16, classes=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    bank = F.normalize(torch.randn(n, d, generator=gen), dim=1)
    labels = torch.randint(0, classes, (n,), generator=gen)
    queries = F.normalize(torch.randn(m, d, generator=gen), dim=1)
    return bank, labels, queries


@pytest.mark.parametrize("backend", ["faiss", "torch"])
@pytest.mark.parametrize("max_block", [300, 300 * 8, 10**9])  # 1 query, 8 queries, all queries per block
def test_both_backends_match_brute_force_for_each_k(backend, max_block):
    bank, labels, queries = random_bank()
    scores = knn_scores_by_k(bank, labels, queries, 5, [20, 200], 0.07, backend=backend, max_block=max_block)
    for k in (20, 200):
        ref = brute_force_knn(bank, labels, queries, 5, k=k, t=0.07)
        assert torch.allclose(scores[k].double(), ref, rtol=1e-4)


def test_backends_return_the_same_sorted_neighbours():
    bank, _, queries = random_bank(n=500, m=50, d=32)
    faiss_sims, faiss_idx = search(bank, queries, 10, backend="faiss")
    torch_sims, torch_idx = search(bank, queries, 10, backend="torch")
    assert torch.equal(faiss_idx, torch_idx)
    assert torch.allclose(faiss_sims, torch_sims, atol=1e-5)
    assert (faiss_sims[:, :-1] >= faiss_sims[:, 1:]).all()


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_fp16_bank_gives_nearly_the_same_scores(backend):
    bank, labels, queries = random_bank(n=400, m=40, d=64)
    full = knn_scores_by_k(bank, labels, queries, 5, [20], 0.07, backend=backend)[20]
    half = knn_scores_by_k(bank, labels, queries, 5, [20], 0.07, backend=backend, fp16=True)[20]
    assert (full.argmax(1) == half.argmax(1)).float().mean() > 0.9
    assert torch.allclose(full, half, rtol=0.1)


def test_query_chunk_bounds_the_similarity_block():
    assert query_chunk(1_281_167, MAX_BLOCK) * 1_281_167 <= MAX_BLOCK
    assert query_chunk(10, 100) == 10 and query_chunk(10**9, 100) == 1


def test_monitor_reports_every_k_and_keeps_the_training_interface(tiny_cfg):
    torch.manual_seed(0)
    backbone, _ = build_backbone("resnet18")
    monitor = KnnMonitor(tiny_cfg, torch.device("cpu"))
    results = monitor.evaluate_all(backbone)
    assert [r.k for r in results] == [20, 200]
    assert all(0 <= r.top1 <= r.top5 <= 100 for r in results)
    single = monitor.evaluate(backbone)
    assert (single.k, single.top1) == (results[-1].k, results[-1].top1)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_predictions_equal_scikit_learn_weighted_knn(backend):
    from sklearn.neighbors import KNeighborsClassifier

    bank, labels, queries = random_bank(n=500, m=100, d=8)
    t = 0.07
    sklearn = KNeighborsClassifier(n_neighbors=20, algorithm="brute", weights=lambda d: np.exp((1 - d**2 / 2) / t))
    expected = sklearn.fit(bank.numpy(), labels.numpy()).predict(queries.numpy())
    ours = knn_scores_by_k(bank, labels, queries, 5, [20], t, backend=backend)[20].argmax(1)
    assert ours.tolist() == expected.tolist()
