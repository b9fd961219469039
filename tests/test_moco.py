import math

import torch
import torch.nn as nn

from mochi_hvs.loss import contrastive_logits, info_nce, positive_rank_top1
from mochi_hvs.models import MoCo, SplitBatchNorm2d, build_backbone, convert_split_bn
from mochi_hvs.random_streams import StepRandom
from mochi_hvs.step import ContrastiveStep


def small_moco(**moco_kw) -> MoCo:
    return MoCo("resnet18", bn_splits=2, feature_dim=16, queue_size=64, **moco_kw)


def test_key_encoder_starts_as_copy_and_gets_no_gradients():
    model = small_moco()
    for (nq, pq), (nk, pk) in zip(model.encoder_q.named_parameters(), model.encoder_k.named_parameters(), strict=True):
        assert nq == nk and torch.equal(pq, pk) and pq is not pk
        assert not pk.requires_grad
    x = torch.randn(4, 3, 28, 28)
    (model.encoder_q(x).embedding.sum() + model.key(x).embedding.sum()).backward()
    assert all(p.grad is None for p in model.encoder_k.parameters())
    assert any(p.grad is not None for p in model.encoder_q.parameters())


def test_momentum_update_is_m_k_plus_one_minus_m_q_for_every_parameter():
    model = small_moco()
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(torch.randn_like(p))
    q_before = {n: p.detach().clone() for n, p in model.encoder_q.named_parameters()}
    k_before = {n: p.detach().clone() for n, p in model.encoder_k.named_parameters()}
    m = 0.9
    model.momentum_update(m)
    for name, p in model.encoder_k.named_parameters():
        expected = m * k_before[name] + (1 - m) * q_before[name]
        assert torch.allclose(p, expected, atol=1e-6), name
    for name, p in model.encoder_q.named_parameters():
        assert torch.equal(p, q_before[name]), "the query encoder must not move"


def test_momentum_update_is_one_fused_foreach_call(monkeypatch):
    model = small_moco()
    calls = []
    real = torch._foreach_lerp_
    monkeypatch.setattr(torch, "_foreach_lerp_", lambda *a, **k: calls.append(1) or real(*a, **k))
    model.momentum_update(0.99)
    assert len(calls) == 1


def test_split_bn_uses_per_split_statistics():
    torch.manual_seed(0)
    splits, c = 4, 3
    x = torch.randn(16, c, 5, 5) * torch.arange(1.0, 17.0).view(16, 1, 1, 1)
    split = SplitBatchNorm2d(c, splits)
    split.weight.data.uniform_()
    split.bias.data.uniform_()
    out = split(x)
    running_mean = torch.zeros(c)
    running_var = torch.zeros(c)
    for s in range(splits):
        members = x[s::splits]  # sample n belongs to group n % splits
        ref = nn.BatchNorm2d(c)
        ref.load_state_dict({k: v for k, v in split.state_dict().items() if k != "num_batches_tracked"}, strict=True)
        ref.running_mean.zero_()
        ref.running_var.fill_(1)
        expected = ref(members)
        assert torch.allclose(out[s::splits], expected, atol=1e-5)
        running_mean += ref.running_mean / splits
        running_var += ref.running_var / splits
    assert torch.allclose(split.running_mean, running_mean, atol=1e-6)
    assert torch.allclose(split.running_var, running_var, atol=1e-5)
    whole = nn.BatchNorm2d(c)
    whole.load_state_dict({k: v for k, v in split.state_dict().items()})
    assert not torch.allclose(out, whole.train()(x), atol=1e-3), "must differ from whole-batch statistics"


def test_split_bn_eval_mode_is_plain_bn_with_running_stats():
    split = SplitBatchNorm2d(3, 4).eval()
    split.running_mean.fill_(0.5)
    split.running_var.fill_(4.0)
    x = torch.randn(8, 3, 2, 2)
    assert torch.allclose(split(x), (x - 0.5) / math.sqrt(4.0 + split.eps), atol=1e-6)


def test_convert_split_bn_keeps_weights():
    net, _ = build_backbone("resnet18")
    net.bn1.weight.data.fill_(0.3)
    convert_split_bn(net, 2)
    assert isinstance(net.bn1, SplitBatchNorm2d) and isinstance(net.layer1[0].bn2, SplitBatchNorm2d)
    assert torch.allclose(net.bn1.weight, torch.full_like(net.bn1.weight, 0.3))


def test_shuffled_key_matches_per_sample_but_not_group_statistics():
    torch.manual_seed(0)
    model = small_moco()
    x = torch.randn(8, 3, 28, 28)
    g = torch.Generator().manual_seed(3)
    shuffled = model.key(x, g).embedding
    model.shuffle_bn = False
    plain = model.key(x).embedding
    assert shuffled.shape == plain.shape == (8, 16)
    # Same encoder, same samples, but BatchNorm groups differ after shuffling: outputs differ.
    assert not torch.allclose(shuffled, plain, atol=1e-4)
    # In eval mode BN uses running statistics, so the shuffle must be undone exactly.
    model.encoder_k.eval()
    model.shuffle_bn = True
    assert torch.allclose(model.key(x, g).embedding, model.encoder_k(x).embedding, atol=1e-5)


def reference_info_nce(q, k, queue, t):
    """InfoNCE written out term by term: -log(exp(q.k/t) / (exp(q.k/t) + sum_j exp(q.n_j/t)))."""
    total = 0.0
    for i in range(q.shape[0]):
        pos = math.exp(float(q[i] @ k[i]) / t)
        neg = sum(math.exp(float(q[i] @ n) / t) for n in queue)
        total += -math.log(pos / (pos + neg))
    return total / q.shape[0]


def test_info_nce_matches_independent_reference():
    torch.manual_seed(1)
    q = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    k = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    queue = torch.nn.functional.normalize(torch.randn(11, 8), dim=1)
    logits = contrastive_logits(q, k, queue)
    assert logits.shape == (5, 12)
    assert math.isclose(float(info_nce(logits, 0.07)), reference_info_nce(q, k, queue, 0.07), rel_tol=1e-5)


def test_proxy_top1_counts_positive_ranked_first():
    logits = torch.tensor([[0.9, 0.1, 0.2], [0.1, 0.5, 0.0], [0.3, 0.3, 0.1]])
    assert math.isclose(float(positive_rank_top1(logits)), 1 / 3, rel_tol=1e-6)


def test_symmetric_step_sums_both_directions_and_returns_both_keys():
    torch.manual_seed(0)
    model = small_moco()
    views = torch.randn(4, 2, 3, 28, 28)
    step = ContrastiveStep(model, temperature=0.2, symmetric=True)
    model.shuffle_bn = False
    rng = StepRandom(seed=0, step=0, rank=0, device=torch.device("cpu"))
    out = step(views, rng)
    assert out.keys.shape == (8, 16)
    model.encoder_q.eval()
    model.encoder_k.eval()
    out = step(views, rng)
    with torch.no_grad():
        q1, q2 = model.encoder_q(views[:, 0]).embedding, model.encoder_q(views[:, 1]).embedding
        k1, k2 = model.key(views[:, 0]).embedding, model.key(views[:, 1]).embedding
        queue = model.queue.features
        expected = reference_info_nce(q1, k2, queue, 0.2) + reference_info_nce(q2, k1, queue, 0.2)
    assert math.isclose(float(out.loss.detach()), expected, rel_tol=1e-4)
    assert torch.allclose(out.keys, torch.cat([k2, k1]), atol=1e-6)
