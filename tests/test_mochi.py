import json
import sys

import pytest
import torch
import torch.nn.functional as F

from mochi_hvs.config import load_config
from mochi_hvs.loss import contrastive_logits
from mochi_hvs.methods.mochi import (
    HardNegativeMixer,
    MixingDraw,
    draw_mixing,
    mixed_logits_fast,
    mixed_logits_reference,
    mixing_metrics,
)
from mochi_hvs.queue import MemoryQueue
from mochi_hvs.retrieval import FaissTopK, TorchTopK, build_retrieval
from mochi_hvs.train import Trainer


def unit(*shape):
    return F.normalize(torch.randn(*shape), dim=-1)


def setup(batch=6, size=300, dim=16, num_hard=20, num_mix=30, num_query_mix=10, seed=0):
    torch.manual_seed(seed)
    bank = unit(size, dim)
    q = unit(batch, dim).requires_grad_(True)
    logits = q @ bank.t()
    hard = logits.detach().topk(num_hard, dim=1).indices
    draw = draw_mixing(batch, num_hard, num_mix, num_query_mix, 0.5, torch.Generator().manual_seed(seed), q.device)
    return q, bank, logits, hard, draw


def fast_and_reference(q, bank, hard, draw):
    fast = mixed_logits_fast(q, q @ bank.t(), bank, hard, draw)
    (grad_fast,) = torch.autograd.grad(fast.pow(2).sum(), q)
    ref = mixed_logits_reference(q, bank, hard, draw)
    (grad_ref,) = torch.autograd.grad(ref.pow(2).sum(), q)
    return fast, ref, grad_fast, grad_ref


def test_fast_path_equals_reference_logits_and_gradient_on_random_inputs():
    for seed in range(3):
        q, bank, _, hard, draw = setup(seed=seed)
        fast, ref, grad_fast, grad_ref = fast_and_reference(q, bank, hard, draw)
        assert fast.shape == (6, 40)
        assert torch.allclose(fast, ref, atol=1e-5)
        assert torch.allclose(grad_fast, grad_ref, atol=1e-5)


def test_fast_path_equals_reference_on_adversarial_inputs():
    q, bank, _, hard, draw = setup()
    # Near-duplicate negatives: every hard negative is a tiny perturbation of one vector.
    base = unit(16)
    bank = bank.clone()
    bank[hard.flatten()] = F.normalize(base + 1e-4 * torch.randn(hard.numel(), 16), dim=-1)
    # Mixing weights at the ends of their ranges: a = 0 or 1, b = 0 (pure negative), b = 1 (pure query).
    draw.alpha[:, ::2] = 0.0
    draw.alpha[:, 1::2] = 1.0
    draw.beta[:, 0] = 0.0
    draw.beta[:, 1] = 1.0
    # Queue entries that are not exactly unit norm (as after bf16 keys): the fast path must use true norms.
    bank[hard[:, 0]] *= 1.01
    fast, ref, grad_fast, grad_ref = fast_and_reference(q, bank, hard, draw)
    assert torch.allclose(fast, ref, atol=1e-5)
    assert torch.allclose(grad_fast, grad_ref, atol=1e-5)
    # With a in {0, 1} a synthetic negative is exactly one of its two parents.
    parents = torch.where(draw.alpha == 1.0, hard.gather(1, draw.first), hard.gather(1, draw.second))
    expected = (q.unsqueeze(1) * F.normalize(bank[parents], dim=-1)).sum(-1)
    assert torch.allclose(fast[:, :30], expected, atol=1e-5)


def test_gradient_reaches_q_only_through_the_final_dot_products():
    q, bank, _, hard, draw = setup(batch=2, num_mix=4, num_query_mix=3)
    logits = mixed_logits_fast(q, q @ bank.t(), bank, hard, draw)
    a, b = draw.alpha.unsqueeze(-1), draw.beta.unsqueeze(-1)
    h = F.normalize(a * bank[hard.gather(1, draw.first)] + (1 - a) * bank[hard.gather(1, draw.second)], dim=-1)
    h_query = F.normalize(b * q.detach().unsqueeze(1) + (1 - b) * bank[hard.gather(1, draw.query_partner)], dim=-1)
    features = torch.cat([h, h_query], dim=1)
    for row in range(2):
        for col in range(7):
            (grad,) = torch.autograd.grad(logits[row, col], q, retain_graph=True)
            expected = torch.zeros_like(q)
            expected[row] = features[row, col]  # d(q . h)/dq = h: h (and the query inside h') are constants
            assert torch.allclose(grad, expected, atol=1e-6), (row, col)


def test_draw_pairs_are_distinct_and_cover_all_ordered_pairs_uniformly():
    draw = draw_mixing(64, 4, 600, 50, 0.3, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert (draw.first != draw.second).all()
    assert draw.first.max() == 3 and draw.second.max() == 3 and draw.query_partner.max() == 3
    counts = torch.zeros(4, 4)
    counts.index_put_((draw.first.flatten(), draw.second.flatten()), torch.ones(draw.first.numel()), accumulate=True)
    off_diagonal = counts[~torch.eye(4, dtype=torch.bool)]
    assert counts.diagonal().sum() == 0
    expected = draw.first.numel() / 12
    assert ((off_diagonal - expected).abs() < 0.08 * expected).all()
    assert 0 <= draw.alpha.min() and draw.alpha.max() < 1 and draw.alpha.mean().sub(0.5).abs() < 0.01
    assert 0 <= draw.beta.min() and draw.beta.max() < 0.3 and draw.beta.mean().sub(0.15).abs() < 0.01


def test_mixer_uses_the_exact_top_n_of_the_logits():
    queue = MemoryQueue(200, 8)
    q = unit(5, 8).requires_grad_(True)
    logits = q @ queue.features.t()
    mixer = HardNegativeMixer(TorchTopK(), num_hard=10, num_mix=7, num_query_mix=3)
    mixed = mixer(q, logits, queue.features, torch.Generator().manual_seed(1))
    expected = (q.detach() @ queue.features.t()).topk(10, dim=1)
    assert torch.equal(mixed.hard_indices, expected.indices)
    assert torch.allclose(mixed.hard_logits, expected.values)
    assert mixed.logits.shape == (5, 10) and mixed.logits.requires_grad


def test_top_n_and_synthetic_logits_under_bf16_autocast_are_the_float32_ones():
    # The training step's path: queue logits from contrastive_logits, then the mixer. Under autocast both stay
    # float32, so the top-N set and the synthetic logits are those of float32 from the same q.
    queue = MemoryQueue(4096, 128)
    q, k = unit(32, 128).requires_grad_(True), unit(32, 128)
    mixer = HardNegativeMixer(TorchTopK(), num_hard=256, num_mix=64, num_query_mix=32)

    def mix():
        logits = contrastive_logits(q, k, queue.features)
        return logits, mixer(q, logits[:, 1:], queue.features, torch.Generator().manual_seed(1))

    expected_logits, expected = mix()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, mixed = mix()
    assert logits.dtype == mixed.logits.dtype == torch.float32
    assert torch.allclose(logits, expected_logits, rtol=0, atol=1e-6)  # float32 rounding of cosines
    assert torch.equal(mixed.hard_indices, expected.hard_indices)  # bf16 logits would reorder ties and near-ties
    assert torch.allclose(mixed.logits, expected.logits, rtol=0, atol=1e-6)
    # The mixing alone, given the float32 logits, is float32 too (its pair products are not lowered).
    with torch.autocast("cpu", dtype=torch.bfloat16):
        alone = mixer(q, expected_logits[:, 1:], queue.features, torch.Generator().manual_seed(1))
    assert torch.allclose(alone.logits, expected.logits, rtol=0, atol=1e-6)


def test_torch_retrieval_reuses_given_logits_without_a_matmul():
    queue = MemoryQueue(50, 4)
    fake_logits = torch.arange(50.0).repeat(3, 1)  # deliberately not q @ bank.T
    scores, indices = TorchTopK().topk(unit(3, 4), 5, queue.features, logits=fake_logits)
    assert indices.tolist() == [[49, 48, 47, 46, 45]] * 3


@pytest.mark.parametrize("index", ["flat", "ivf"])
def test_faiss_returns_the_same_top_n_set_as_torch(index):
    pytest.importorskip("faiss")
    torch.manual_seed(0)
    queue = MemoryQueue(2000, 32)
    queries = unit(16, 32)
    # IVF probing every list is exhaustive, hence exact: the same set as torch on tie-free data.
    faiss_backend = build_retrieval("faiss", index, nlist=8, nprobe=8)
    torch_scores, torch_idx = TorchTopK().topk(queries, 50, queue.features)
    for _ in range(2):  # the index follows the queue after it changes
        faiss_scores, faiss_idx = faiss_backend.topk(queries, 50, queue.features)
        for a, b in zip(torch_idx.tolist(), faiss_idx.tolist(), strict=True):
            assert set(a) == set(b)
        assert torch.allclose(torch_scores, faiss_scores, atol=1e-5)
        queue.enqueue(unit(500, 32))
        torch_scores, torch_idx = TorchTopK().topk(queries, 50, queue.features)


def test_missing_faiss_names_the_package_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        FaissTopK()


def constructed_mixed(positive, queue_logits, synthetic, hard_indices):
    from mochi_hvs.methods.mochi import MixedNegatives

    logits = torch.cat([positive, queue_logits], dim=1)
    hard_logits = queue_logits.gather(1, hard_indices)
    return logits, MixedNegatives(logits=synthetic, hard_indices=hard_indices, hard_logits=hard_logits)


def test_mixing_metrics_on_a_constructed_case():
    positive = torch.tensor([[0.9], [0.5]])
    queue_logits = torch.tensor([[0.1, 0.8, 0.2], [0.6, 0.0, 0.4]])
    synthetic = torch.tensor([[0.95, 0.1], [0.3, 0.2]])
    logits, mixed = constructed_mixed(positive, queue_logits, synthetic, torch.tensor([[1, 2], [0, 2]]))
    labels = torch.tensor([3, 4])
    bank_labels = torch.tensor([4, 3, -1])
    m = mixing_metrics(logits, mixed, labels, bank_labels)
    assert float(m["mochi/proxy_top1_with_synthetic"]) == 0.0  # row 0 loses to a synthetic, row 1 to the queue
    assert abs(float(m["mochi/logit_positive"]) - 0.7) < 1e-6
    assert abs(float(m["mochi/logit_hard_negative"]) - (0.8 + 0.2 + 0.6 + 0.4) / 4) < 1e-6
    assert abs(float(m["mochi/logit_synthetic"]) - 1.55 / 4) < 1e-6
    assert float(m["mochi/synthetic_above_positive"]) == 0.25
    # Known hard-negative labels: row 0 -> [3 (own class), -1], row 1 -> [4 (own class), -1].
    assert float(m["mochi/class_oracle_rate"]) == 1.0
    assert torch.isnan(mixing_metrics(logits, mixed, labels, torch.full((3,), -1))["mochi/class_oracle_rate"])


def test_draws_come_from_the_generator_only():
    a = draw_mixing(4, 10, 5, 2, 0.5, torch.Generator().manual_seed(7), torch.device("cpu"))
    torch.manual_seed(123)
    b = draw_mixing(4, 10, 5, 2, 0.5, torch.Generator().manual_seed(7), torch.device("cpu"))
    for name in MixingDraw.__dataclass_fields__:
        assert torch.equal(getattr(a, name), getattr(b, name))


# ---------------------------------------------------------------------------------------- in training


def mochi_overrides(tiny_overrides, *extra):
    return tiny_overrides + ["mochi.enabled=true", "mochi.num_hard=32", "mochi.num_mix=16",
                             "mochi.num_query_mix=8", *extra]


def test_mochi_in_warm_up_is_exactly_moco_v2(quick_overrides, plain_run):
    warm = Trainer(load_config(None, mochi_overrides(quick_overrides, "name=warm", "mochi.warmup_epochs=5")))
    warm.train()
    for key, value in plain_run.model.state_dict().items():
        assert torch.equal(value, warm.model.state_dict()[key]), key


def test_mixing_changes_training_and_synthetic_negatives_are_never_enqueued(tiny_overrides):
    """A step on the first batch, then one more through train(): the same updates with mixing on and off."""
    plain = Trainer(load_config(None, tiny_overrides + ["name=plain", "optim.steps=1"]))
    plain.train_step(next(iter(plain.parts.batches)))
    plain.train()
    mixed = Trainer(load_config(None, mochi_overrides(tiny_overrides, "name=mixed", "optim.steps=1",
                                                      "mochi.warmup_epochs=0")))
    batch = next(iter(mixed.parts.batches))
    pointer = int(mixed.model.queue.pointer)
    captured = {}
    real_step = mixed.parts.step.__call__

    def capture(*args, **kwargs):
        captured["out"] = real_step(*args, **kwargs)
        return captured["out"]

    mixed.parts.step = capture
    metrics = mixed.train_step(batch)
    out = captured["out"]
    batch_size = mixed.cfg.optim.batch_size
    assert int(mixed.model.queue.pointer) == pointer + batch_size  # the batch's keys, nothing more
    assert torch.equal(mixed.model.queue.features[pointer:pointer + batch_size], out.keys.float())
    assert torch.equal(mixed.model.queue.labels[pointer:pointer + batch_size], batch.labels)
    assert "mochi/logit_synthetic" in metrics
    mixed.parts.step = real_step
    mixed.train()
    assert not torch.equal(plain.model.state_dict()["encoder_q.head.2.weight"],
                           mixed.model.state_dict()["encoder_q.head.2.weight"])


def test_labels_never_reach_the_loss(tiny_overrides):
    trainer = Trainer(load_config(None, mochi_overrides(tiny_overrides, "mochi.warmup_epochs=0")))
    batch = next(iter(trainer.parts.batches))
    trainer.model.queue.labels.copy_(torch.randint(0, 10, trainer.model.queue.labels.shape))

    def loss_and_grads(labels, queue_labels):
        from mochi_hvs.random_streams import StepRandom

        trainer.model.queue.labels.copy_(queue_labels)
        trainer.model.zero_grad(set_to_none=True)
        out = trainer.parts.step(batch.views, StepRandom(0, 0, 0, trainer.parts.device), labels)
        out.loss.backward()
        grads = [p.grad.clone() for p in trainer.model.encoder_q.parameters()]
        return out.loss.detach(), grads, out.metrics["mochi/class_oracle_rate"]

    queue_labels = trainer.model.queue.labels.clone()
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    loss_a, grads_a, oracle_a = loss_and_grads(batch.labels, queue_labels)
    trainer.model.load_state_dict(state)  # undo the BN running-stat updates of the first pass
    loss_b, grads_b, oracle_b = loss_and_grads((batch.labels + 1) % 10, queue_labels.flip(0))
    assert torch.equal(loss_a, loss_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))
    assert not torch.equal(oracle_a, oracle_b)  # the labels did change what the metric sees


@pytest.mark.slow
def test_mochi_recipe_runs_and_logs_every_analysis_metric(tmp_path):
    cfg = load_config("configs/moco_mochi.yaml", [
        f"output_dir={tmp_path}", "name=m", "data.train_subset=256", "optim.batch_size=64", "moco.queue_size=256",
        "optim.epochs=2", "mochi.warmup_epochs=1", "mochi.num_hard=64", "log_every=2", "eval.analysis_every=1",
        "eval.analysis_samples=64", "eval.knn_every=0", "eval.knn_train_subset=200", "eval.knn_test_subset=100",
        "eval.knn_baseline=false"])
    Trainer(cfg).fit()
    records = [json.loads(line) for line in (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*records)
    for name in ("proxy_top1", "mochi/proxy_top1_with_synthetic", "mochi/logit_positive", "mochi/logit_hard_negative",
                 "mochi/logit_synthetic", "mochi/synthetic_above_positive", "mochi/class_oracle_rate"):
        assert f"train/{name}" in keys, name
    assert "analysis/alignment" in keys and "analysis/uniformity" in keys
    epoch_one = [r for r in records if r.get("epoch") == 1 and "train/loss" in r]
    assert epoch_one and all("train/mochi/logit_synthetic" not in r for r in epoch_one)  # warm-up: plain MoCo
    oracle = [r["train/mochi/class_oracle_rate"] for r in records if "train/mochi/class_oracle_rate" in r]
    assert all(0.0 <= v <= 1.0 for v in oracle)
