import torch
import torch.nn.functional as F

from mochi_hvs.evaluation.knn import topk_accuracy, weighted_knn_scores


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
