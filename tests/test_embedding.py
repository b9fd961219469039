import math

import torch
import torch.nn.functional as F

from mochi_hvs.config import load_config
from mochi_hvs.data.augment import post_crop_transform
from mochi_hvs.evaluation import embedding
from mochi_hvs.evaluation.embedding import EmbeddingAnalysis, alignment, pair_retrieval, uniformity


def test_alignment_and_uniformity_match_their_definitions():
    torch.manual_seed(0)
    x = F.normalize(torch.randn(12, 5), dim=1)
    y = F.normalize(x + 0.3 * torch.randn(12, 5), dim=1)
    expected_align = sum(float((x[i] - y[i]).norm()) ** 2 for i in range(12)) / 12
    pairs = [(i, j) for i in range(12) for j in range(i + 1, 12)]
    expected_uniform = math.log(sum(math.exp(-2 * float((x[i] - x[j]).norm()) ** 2) for i, j in pairs) / len(pairs))
    assert math.isclose(float(alignment(x, y)), expected_align, rel_tol=1e-5)
    assert math.isclose(float(uniformity(x)), expected_uniform, rel_tol=1e-5)


def test_collapsed_embeddings_are_perfectly_aligned_and_not_uniform():
    z = F.normalize(torch.ones(8, 4), dim=1)
    assert float(alignment(z, z)) == 0.0
    assert abs(float(uniformity(z))) < 1e-6  # log E exp(0) = 0, the worst possible value
    spread = F.normalize(torch.randn(256, 4), dim=1)
    assert float(uniformity(spread)) < -1.0


def test_pair_retrieval_counts_views_whose_nearest_other_view_is_their_partner():
    torch.manual_seed(0)
    x = F.normalize(torch.randn(10, 6, dtype=torch.float64), dim=1)
    y = F.normalize(x + 0.4 * torch.randn(10, 6, dtype=torch.float64), dim=1)
    views = torch.cat([x, y])
    hits = 0
    for i in range(20):  # loop reference: the nearest of the 19 other views
        others = [j for j in range(20) if j != i]
        nearest = max(others, key=lambda j: float(views[i] @ views[j]))
        hits += nearest == (i + 10) % 20
    assert math.isclose(float(pair_retrieval(x, y)), hits / 20)
    assert 0 < hits < 20  # the noise makes some views miss: the reference is not trivially all or nothing
    assert float(pair_retrieval(x, x.clone())) == 1.0
    collapsed = F.normalize(torch.ones(10, 6), dim=1)
    assert float(pair_retrieval(collapsed, collapsed)) < 0.2


def test_the_analysis_views_take_the_configured_color_jitter(monkeypatch):
    seen = []

    def spy(*args):
        seen.append(args[4])  # the jitter strengths
        return post_crop_transform(*args)

    monkeypatch.setattr(embedding, "post_crop_transform", spy)
    EmbeddingAnalysis(load_config(None, ["data.color_jitter=[0.8,0.8,0,0]", "eval.analysis_samples=10"]), torch.device(
        "cpu"))
    assert seen == [(0.8, 0.8, 0.0, 0.0)]
