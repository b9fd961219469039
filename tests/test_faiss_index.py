import sys

import pytest
import torch
import torch.nn.functional as F

from mochi_hvs.evaluation.search import search
from mochi_hvs.faiss_index import build_index
from mochi_hvs.queue import MemoryQueue
from mochi_hvs.retrieval import FaissTopK

pytest.importorskip("faiss")
CPU = torch.device("cpu")


def unit_rows(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def exact_topk(bank, queries, k):
    return (queries.double() @ bank.double().t()).topk(k, dim=1)


@pytest.mark.parametrize(("kind", "options"), [("flat", {}), ("ivf", {"nlist": 8, "nprobe": 8})])
def test_flat_and_fully_probed_ivf_indexes_find_the_exact_neighbours(kind, options):
    bank, queries = unit_rows(400, 32, 0), unit_rows(30, 32, 1)
    index = build_index(32, CPU, kind, **options)
    if not index.is_trained:
        index.train(bank)
    index.add(bank)
    scores, indices = index.search(queries, 10)
    expected_scores, expected_indices = exact_topk(bank, queries, 10)
    assert torch.equal(indices, expected_indices)
    # float32 dot products of unit vectors in 32 dimensions: a few float32 ulps of 1
    assert torch.allclose(scores.double(), expected_scores, atol=1e-5)


def test_fp16_index_scores_within_half_precision_of_the_exact_inner_products():
    bank, queries = unit_rows(300, 64, 2), unit_rows(20, 64, 3)
    index = build_index(64, CPU, "flat", fp16=True)
    index.add(bank)
    scores, indices = index.search(queries, 5)
    exact = (queries.double() @ bank.double().t()).gather(1, indices)
    # each stored component is rounded to fp16 (relative error <= 2**-11); for unit vectors the inner product moves
    # by at most 2**-11 (Cauchy-Schwarz), plus float32 accumulation
    assert (scores.double() - exact).abs().max() <= 2**-11 + 1e-5
    assert (scores[:, :-1] >= scores[:, 1:]).all()


def test_a_refreshed_index_holds_only_the_new_rows():
    first, second = unit_rows(50, 8, 4), unit_rows(50, 8, 5)
    index = build_index(8, CPU)
    index.add(first)
    index.reset()
    index.add(second)
    _, indices = index.search(second[:3], 1)
    assert indices.flatten().tolist() == [0, 1, 2] and index.index.ntotal == 50


def test_unknown_kinds_are_refused():
    with pytest.raises(ValueError, match="unknown faiss index 'hnsw'; choose one of flat, ivf"):
        build_index(8, CPU, "hnsw")
    with pytest.raises(ValueError, match="fp16 storage is for flat indexes only"):
        build_index(8, CPU, "ivf", fp16=True)


def test_queue_retrieval_and_knn_search_build_their_indexes_in_the_one_builder(monkeypatch):
    built = []

    def spy(*args, **kwargs):
        built.append((args, kwargs))
        return build_index(*args, **kwargs)

    for user in ("mochi_hvs.retrieval", "mochi_hvs.evaluation.search"):
        monkeypatch.setattr(sys.modules[user], "build_index", spy)
    queue = MemoryQueue(64, 8)
    FaissTopK("ivf", nlist=4, nprobe=2).topk(unit_rows(2, 8, 6), 3, queue.features)
    search(unit_rows(40, 8, 7), unit_rows(5, 8, 8), 3, backend="faiss", fp16=True)
    assert built == [((8, CPU, "ivf"), {"nlist": 4, "nprobe": 2}), ((8, CPU, "flat", True), {})]
