import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from mochi_hvs.config import load_config
from mochi_hvs.loss import contrastive_logits, info_nce
from mochi_hvs.methods.hvs import HardViewSelector, Hvs, box_iou_pairs, pair_losses, random_pairs, select_pairs
from mochi_hvs.models import MoCo
from mochi_hvs.models.split_bn import side_effect_free_bn
from mochi_hvs.random_streams import StepRandom
from mochi_hvs.step import ContrastiveStep
from mochi_hvs.train import Trainer


def small_moco(bn_splits=2, queue=64) -> MoCo:
    torch.manual_seed(0)
    return MoCo("resnet18", bn_splits=bn_splits, feature_dim=16, queue_size=queue)


def hvs_step(model, symmetric=False, **hvs):
    """A MoCo step (T = 0.2) with the HVS method built from hvs.* settings, and that method."""
    settings = [f"hvs.{key}={value}" for key, value in hvs.items()]
    cfg = load_config(None, [f"moco.symmetric={symmetric}", "moco.temperature=0.2", "hvs.enabled=true", *settings])
    method = Hvs(cfg, model)
    return ContrastiveStep(model, 0.2, symmetric, [method]), method


def test_select_pairs_is_the_per_sample_argmax_off_the_diagonal():
    losses = torch.tensor([
        [[9.0, 1.0, 2.0], [3.0, 9.0, 0.5], [0.1, 7.0, 9.0]],  # hardest (2, 1), easiest (2, 0)
        [[0.0, 4.0, 5.0], [6.0, 0.0, 1.0], [2.0, 3.0, 0.0]],  # hardest (1, 0), easiest (1, 2)
    ])
    assert [t.tolist() for t in select_pairs(losses, "hardest")] == [[2, 1], [1, 0]]
    assert [t.tolist() for t in select_pairs(losses, "easiest")] == [[2, 1], [0, 2]]
    with pytest.raises(ValueError):
        select_pairs(losses, "random")


def test_random_pairs_are_distinct_and_uniform_over_ordered_pairs():
    first, second = random_pairs(24000, 4, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert (first != second).all()
    counts = torch.zeros(4, 4).index_put_((first, second), torch.ones(24000), accumulate=True)
    off = counts[~torch.eye(4, dtype=torch.bool)]
    assert ((off - 2000).abs() < 200).all()


def test_pair_losses_match_per_pair_info_nce():
    torch.manual_seed(0)
    q, k = F.normalize(torch.randn(3, 4, 8), dim=-1), F.normalize(torch.randn(3, 4, 8), dim=-1)
    queue = F.normalize(torch.randn(20, 8), dim=-1)
    losses = pair_losses(q, k, queue, 0.2)
    for i in range(3):
        for a in range(4):
            for b in range(4):
                expected = info_nce(contrastive_logits(q[i, a:a + 1], k[i, b:b + 1], queue), 0.2)
                assert math.isclose(float(losses[i, a, b]), float(expected), rel_tol=1e-5)
    extra = torch.randn(3, 5)
    with_extra = pair_losses(q, k, queue, 0.2, lambda qa, logits: extra)
    expected = info_nce(torch.cat([contrastive_logits(q[1, 2:3], k[1, 0:1], queue), extra[1:2]], dim=1), 0.2)
    assert math.isclose(float(with_extra[1, 2, 0]), float(expected), rel_tol=1e-5)


def test_box_iou_on_known_boxes_and_against_torchvision():
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 1.0], [0.0, 0.0, 0.2, 0.2], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.25, 0.0, 0.75, 1.0], [0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5]])
    assert torch.allclose(box_iou_pairs(a, b), torch.tensor([1.0, 1 / 3, 0.0, 0.25]))
    boxes = torch.rand(50, 2, 2).sort(dim=1).values.permute(0, 2, 1).reshape(50, 4)[:, [0, 2, 1, 3]]
    other = boxes.flip(0)
    assert torch.allclose(box_iou_pairs(boxes, other), box_iou(boxes, other).diagonal(), atol=1e-6)


def bn_buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_scoring_changes_no_state():
    model = small_moco()
    model.queue.labels.copy_(torch.arange(64))
    selector = HardViewSelector(model, 0.2, symmetric=False)
    views, boxes = torch.randn(4, 3, 3, 28, 28), torch.rand(4, 3, 4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = StepRandom(0, 5, 0, torch.device("cpu"))
    shuffle_state = rng("shuffle").get_state()
    global_state = torch.get_rng_state()
    selection = selector(views, boxes, model.queue.features, rng("hvs"))
    assert selection.keys.embedding.shape == (4, 3, 16)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), f"scoring changed {key}"
    assert torch.equal(rng("shuffle").get_state(), shuffle_state)
    assert torch.equal(torch.get_rng_state(), global_state)
    assert all(m.training for m in model.modules())  # nothing was switched to eval mode and left there


def float64_moco(bn_splits, shuffle_bn=True, queue=64) -> MoCo:
    """A small MoCo in float64: equivalence checks then hold to ~1e-12 on any CPU, whatever BatchNorm amplifies."""
    torch.manual_seed(0)
    model = MoCo("resnet18", bn_splits=bn_splits, feature_dim=16, queue_size=queue, shuffle_bn=shuffle_bn)
    return model.double()


FLOAT64_TOLERANCE = 1e-9  # unit-norm embeddings: float64 rounding is ~1e-13 here; mixing view slots moves them ~0.1


def separate_forwards(model, views, seed):
    """Query and key embeddings (B, V, D) from V plain training-mode forwards of a copy of the model, one per
    view slot; each key forward shuffles with a fresh generator seeded `seed` (the permutation a single-view
    key forward draws)."""
    reference = copy.deepcopy(model)
    with torch.no_grad():
        queries = [reference.encoder_q(views[:, v]).embedding for v in range(views.shape[1])]
        keys = [reference.key(views[:, v], torch.Generator().manual_seed(seed)).embedding
                for v in range(views.shape[1])]
    return torch.stack(queries, dim=1), torch.stack(keys, dim=1)


@pytest.mark.parametrize(("bn_splits", "shuffle_bn"), [(4, True), (4, False), (1, True)])
def test_one_batched_forward_scores_like_separate_forwards_per_view(bn_splits, shuffle_bn):
    model = float64_moco(bn_splits, shuffle_bn)
    views = torch.randn(8, 3, 3, 28, 28, dtype=torch.float64)
    queries, keys = HardViewSelector(model, 0.2, symmetric=False).embed_candidates(
        views, torch.Generator().manual_seed(5))
    expected_queries, expected_keys = separate_forwards(model, views, seed=5)
    assert (queries - expected_queries).abs().max() < FLOAT64_TOLERANCE
    assert (keys.embedding - expected_keys).abs().max() < FLOAT64_TOLERANCE
    # The tolerance detects mixed view slots: one group over slots differs far above rounding.
    with torch.no_grad(), side_effect_free_bn([model.encoder_q]):
        mixed = model.encoder_q(views.flatten(0, 1)).embedding.view(8, 3, -1)
    assert (mixed - expected_queries).abs().max() > 1e-3


def test_selected_pair_is_the_argmax_of_losses_from_separate_forwards():
    model = float64_moco(bn_splits=4)
    views, boxes = torch.randn(16, 3, 3, 28, 28, dtype=torch.float64), torch.rand(16, 3, 4)
    selector = HardViewSelector(model, 0.2, symmetric=False)
    selection = selector(views, boxes, model.queue.features, torch.Generator().manual_seed(5))
    queries, keys = separate_forwards(model, views, seed=5)
    first, second = select_pairs(pair_losses(queries, keys, model.queue.features, 0.2), "hardest")
    assert torch.equal(selection.query_view, first) and torch.equal(selection.key_view, second)


def test_reused_keys_are_the_separate_key_forwards_of_the_chosen_views():
    model = float64_moco(bn_splits=4)
    views, boxes = torch.randn(16, 3, 3, 28, 28, dtype=torch.float64), torch.rand(16, 3, 4)
    step, _ = hvs_step(model, symmetric=True, reuse_keys=True)
    rng = StepRandom(0, 3, 0, torch.device("cpu"))
    hvs_seed = int(StepRandom(0, 3, 0, torch.device("cpu"))("hvs").initial_seed())
    out = step(views, rng, boxes=boxes)
    queries, keys = separate_forwards(model, views, seed=hvs_seed)
    losses = pair_losses(queries, keys, model.queue.features, 0.2)
    first, second = select_pairs(losses + losses.transpose(1, 2), "hardest")
    rows = torch.arange(16)
    expected = torch.cat([keys[rows, second], keys[rows, first]])  # both directions of the symmetric loss
    assert (out.keys - expected).abs().max() < FLOAT64_TOLERANCE


def test_hvs_scores_in_float32_under_bf16_autocast():
    q, k = F.normalize(torch.randn(6, 3, 16), dim=-1), F.normalize(torch.randn(6, 3, 16), dim=-1)
    queue = F.normalize(torch.randn(500, 16), dim=-1)
    expected = pair_losses(q, k, queue, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = pair_losses(q, k, queue, 0.1)
    assert losses.dtype == torch.float32
    assert torch.allclose(losses, expected, rtol=1e-5, atol=0)  # float32 rounding; bf16 would move them ~1e-2


def count_forwards(module):
    calls = []
    handle = module.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


def test_momentum_scorer_runs_only_the_momentum_encoder_and_keys_are_not_recomputed():
    model = small_moco()
    views, boxes = torch.randn(4, 3, 3, 28, 28), torch.rand(4, 3, 4)
    q_calls, hq = count_forwards(model.encoder_q)
    k_calls, hk = count_forwards(model.encoder_k)
    step, method = hvs_step(model, scorer="momentum")
    step(views, StepRandom(0, 0, 0, torch.device("cpu")), boxes=boxes)
    assert (len(q_calls), len(k_calls)) == (1, 1)  # f_k: one scoring forward whose keys are reused; f_q: training
    method.selector.scorer = "query"
    step(views, StepRandom(0, 1, 0, torch.device("cpu")), boxes=boxes)
    assert (len(q_calls), len(k_calls)) == (3, 2)  # + f_q scoring forward, + f_k scoring forward, no key re-forward
    hq.remove()
    hk.remove()


def step_result(model, views, boxes, reuse, symmetric=False):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    step, _ = hvs_step(model, symmetric=symmetric, reuse_keys=reuse)
    model.zero_grad(set_to_none=True)
    out = step(views, StepRandom(0, 3, 0, torch.device("cpu")), boxes=boxes)
    out.loss.backward()
    grads = [p.grad.clone() for p in model.encoder_q.parameters()]
    model.load_state_dict(state)
    return out, grads


@pytest.mark.parametrize("symmetric", [False, True])
def test_key_reuse_gives_the_same_results_as_recomputation(symmetric):
    # One BatchNorm group per sample: normalisation no longer depends on batch composition, so a second
    # forward of the selected views must give exactly the keys that scoring computed (64 px: the last
    # stage keeps 2x2 positions, so per-sample statistics exist).
    model = small_moco(bn_splits=4)
    views, boxes = torch.randn(4, 3, 3, 64, 64), torch.rand(4, 3, 4)
    reused, grads_reused = step_result(model, views, boxes, reuse=True, symmetric=symmetric)
    recomputed, grads_recomputed = step_result(model, views, boxes, reuse=False, symmetric=symmetric)
    assert torch.allclose(reused.keys, recomputed.keys, atol=1e-5)
    assert torch.allclose(reused.loss, recomputed.loss, atol=1e-5)
    for a, b in zip(grads_reused, grads_recomputed, strict=True):
        assert torch.allclose(a, b, atol=1e-4)


def test_selected_pair_is_the_hardest_for_the_model_and_symmetric_scoring_sums_both_orders():
    model = small_moco()
    views, boxes = torch.randn(4, 3, 3, 28, 28), torch.rand(4, 3, 4)
    for symmetric in (False, True):
        selector = HardViewSelector(model, 0.2, symmetric)
        selection = selector(views, boxes, model.queue.features, torch.Generator().manual_seed(1))
        queries, keys = selector.embed_candidates(views, torch.Generator().manual_seed(1))
        losses = pair_losses(queries, keys.embedding, model.queue.features, 0.2)
        if symmetric:
            losses = losses + losses.transpose(1, 2)
        a, b = selection.query_view, selection.key_view
        rows = torch.arange(4)
        assert (a != b).all()
        chosen = losses[rows, a, b]
        off = losses.masked_fill(torch.eye(3, dtype=torch.bool), float("-inf"))
        assert torch.allclose(chosen, off.flatten(1).max(dim=1).values)
        assert torch.allclose(selection.metrics["hvs/loss_selected"], chosen.mean())
        easiest = HardViewSelector(model, 0.2, symmetric, mode="easiest")
        easiest = easiest(views, boxes, model.queue.features, torch.Generator().manual_seed(1))
        off = losses.masked_fill(torch.eye(3, dtype=torch.bool), float("inf"))
        assert torch.allclose(losses[rows, easiest.query_view, easiest.key_view], off.flatten(1).min(dim=1).values)


def test_random_mode_scores_nothing_and_low_resolution_scoring_recomputes_keys():
    model = small_moco()
    views, boxes = torch.randn(4, 3, 3, 28, 28), torch.rand(4, 3, 4)
    calls, handle = count_forwards(model.encoder_k)
    queue, generator = model.queue.features, torch.Generator().manual_seed(0)
    selection = HardViewSelector(model, 0.2, False, mode="random")(views, boxes, queue, generator)
    assert not calls and selection.keys is None and (selection.query_view != selection.key_view).all()
    handle.remove()
    low = HardViewSelector(model, 0.2, False, score_resolution=14)(views, boxes, queue, generator.manual_seed(0))
    assert low.keys is None  # keys from 14 px views are not the 28 px keys: the step re-forwards the chosen view


def hvs_overrides(tiny_overrides, *extra):
    return tiny_overrides + ["hvs.enabled=true", "hvs.num_views=3", *extra]


def test_two_views_without_selection_is_exactly_moco_v2(quick_overrides, plain_run):
    off = Trainer(load_config(None, hvs_overrides(quick_overrides, "name=off", "hvs.num_views=2", "hvs.start_epoch=9")))
    off.train()
    for key, value in plain_run.model.state_dict().items():
        assert torch.equal(value, off.model.state_dict()[key]), key
    # Selecting which of the two views is the query changes the first step already.
    plain = Trainer(load_config(None, quick_overrides + ["name=plain", "optim.steps=1"]))
    plain.train()
    on = Trainer(load_config(None, hvs_overrides(quick_overrides, "name=on", "hvs.num_views=2", "optim.steps=1")))
    on.train()
    assert not torch.equal(on.model.state_dict()["encoder_q.head.2.weight"],
                           plain.model.state_dict()["encoder_q.head.2.weight"])


def test_select_every_and_start_epoch_decide_which_steps_select(tiny_overrides):
    trainer = Trainer(load_config(None, hvs_overrides(tiny_overrides, "hvs.select_every=3", "hvs.start_epoch=1")))
    (method,) = trainer.parts.methods
    assert not any(method.active(0, step) for step in range(8))  # epoch 0: before start_epoch
    assert [s for s in range(8, 16) if method.active(1, s)] == [9, 12, 15]
    trainer.close()


@pytest.mark.slow
def test_flagship_recipe_logs_iou_hardness_and_mochi_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config("configs/moco_mochi_hvs.yaml", [
        f"output_dir={tmp_path}", "name=f", "data.train_subset=512", "optim.batch_size=64", "moco.queue_size=256",
        "optim.epochs=2", "mochi.warmup_epochs=0", "mochi.num_hard=64", "log_every=4", "eval.knn_every=0",
        "eval.analysis_every=0", "eval.knn_train_subset=200", "eval.knn_test_subset=100",
        "eval.knn_baseline=false"])
    Trainer(cfg).fit()
    records = [json.loads(line) for line in (tmp_path / "f" / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*records)
    for name in ("hvs/iou_selected", "hvs/iou_random", "hvs/loss_selected", "hvs/loss_candidates",
                 "mochi/logit_synthetic", "mochi/class_oracle_rate", "mochi/proxy_top1_with_synthetic"):
        assert f"train/{name}" in keys, name
    steps = [r for r in records if "train/hvs/loss_selected" in r]
    # The hardest pair is harder than the average candidate pair, and overlaps less than a random pair.
    assert all(r["train/hvs/loss_selected"] > r["train/hvs/loss_candidates"] for r in steps)
    assert sum(r["train/hvs/iou_selected"] for r in steps) < sum(r["train/hvs/iou_random"] for r in steps)
    events = EventAccumulator(str(tmp_path / "f"), size_guidance={"histograms": 0}).Reload()
    assert {"hvs/iou_selected", "hvs/iou_random"} <= set(events.Tags()["histograms"])
