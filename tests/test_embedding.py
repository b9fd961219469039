import math

import torch
import torch.nn.functional as F

from mochi_hvs.evaluation.embedding import alignment, uniformity


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
