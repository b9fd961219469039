"""Two CPU processes on gloo, as torchrun would start them: shuffle-BN, queues, and equivalence with one process."""

import atexit
import copy
import os
import queue
import socket
import threading
import time
import traceback
from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from mochi_hvs.config import load_config
from mochi_hvs.distributed import all_gather_cat, shuffle_across_processes
from mochi_hvs.methods.hvs import HardViewSelector
from mochi_hvs.models import MoCo
from mochi_hvs.train import Trainer

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


JOB_TIMEOUT_S = 600.0  # the longest job takes about 10 s on a 2-core AVX-512 CPU, a few times that on an AVX2-only one


class Ranks:
    """`world_size` processes started once as torchrun would start them (fresh interpreters, its environment
    variables) and kept: each run() calls one function in all of them, under a process group of its own. Starting an
    interpreter that imports torch and the package costs seconds per process, more than most of what they run."""

    def __init__(self, world_size: int) -> None:
        context = mp.get_context("spawn")
        self.results = context.Queue()
        self.jobs = [context.Queue() for _ in range(world_size)]
        self.processes = [context.Process(target=_serve, args=(rank, world_size, jobs, self.results))
                          for rank, jobs in enumerate(self.jobs)]
        for process in self.processes:
            process.start()

    def alive(self) -> bool:
        return all(process.is_alive() for process in self.processes)

    def run(self, fn: Callable[..., None], args: tuple, timeout_s: float = JOB_TIMEOUT_S) -> None:
        """fn(rank, *args) in every process; raises on the first failure (a traceback, a process that died, or no
        result within timeout_s: a process left waiting in a collective for a partner that will never join)."""
        port = free_port()
        for jobs in self.jobs:
            jobs.put((fn, port, args))
        deadline = time.monotonic() + timeout_s
        for _ in self.jobs:
            failure = self._next_result(deadline)
            if failure is not None:
                raise RuntimeError(f"{fn.__name__} failed in a process:\n{failure}")

    def _next_result(self, deadline: float) -> str | None:
        while True:
            try:
                return self.results.get(timeout=1)
            except queue.Empty:
                if not self.alive():
                    return "a process exited: " + ", ".join(str(p.exitcode) for p in self.processes)
                if time.monotonic() > deadline:
                    return "no result before the deadline: a process is still running or waiting for its partner"

    def close(self) -> None:
        """Stop the processes (a failed run may have left one waiting for the other)."""
        for process in self.processes:
            process.kill()
            process.join()


RANKS: dict[int, Ranks] = {}  # by world size, for the whole session


@atexit.register
def _close_ranks() -> None:
    for ranks in RANKS.values():
        ranks.close()


def run_ranks(fn: Callable[..., None], world_size: int, *args) -> None:
    """fn(rank, *args) in each of `world_size` processes started as torchrun would (see Ranks)."""
    if world_size not in RANKS or not RANKS[world_size].alive():
        RANKS[world_size] = Ranks(world_size)
    try:
        RANKS[world_size].run(fn, args)
    except BaseException:
        RANKS.pop(world_size).close()
        raise


def _serve(rank: int, world_size: int, jobs, results) -> None:
    """A process of Ranks: runs each job it is given and reports None or the traceback."""
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    while True:
        fn, port, args = jobs.get()
        os.environ["MASTER_PORT"] = str(port)
        try:
            fn(rank, *args)
            results.put(None)
        except BaseException:
            results.put(traceback.format_exc())
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()


def _shuffle_roundtrip(rank, out_dir):
    dist.init_process_group("gloo")
    x = torch.arange(12.0).view(6, 2) + 100 * rank
    shuffled, restore = shuffle_across_processes(x, torch.Generator().manual_seed(rank))  # rank 0's draw wins
    torch.save({"x": x, "shuffled": shuffled, "restored": restore(shuffled),
                "global": all_gather_cat(x), "global_shuffled": all_gather_cat(shuffled)}, out_dir / f"{rank}.pt")


def test_shuffle_then_unshuffle_is_the_identity_across_processes(tmp_path):
    run_ranks(_shuffle_roundtrip, 2, tmp_path)
    r0, r1 = torch.load(tmp_path / "0.pt"), torch.load(tmp_path / "1.pt")
    for r in (r0, r1):
        assert torch.equal(r["restored"], r["x"])
    # The global batch is interleaved by rank (position j*2 + r is sample j of rank r) ...
    assert torch.equal(r0["global"][0::2], r0["x"]) and torch.equal(r0["global"][1::2], r1["x"])
    # ... and the shuffle is a real permutation of it, samples moving between processes.
    assert torch.equal(r0["global_shuffled"].sort(dim=0).values, r0["global"].sort(dim=0).values)
    assert not torch.equal(r0["shuffled"], r0["x"])
    assert (r0["shuffled"] >= 100).any()  # rank 0 now holds some of rank 1's samples


def _candidate_embeddings(rank, out_dir):
    # float64: the batched and the separate forwards agree to ~1e-13 whatever the CPU; mixed view slots ~0.1.
    dist.init_process_group("gloo")
    torch.manual_seed(0)  # the same weights on both processes
    plain = MoCo("resnet18", bn_splits=1, feature_dim=16, queue_size=64).double()
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(plain))
    views = torch.randn(4, 3, 3, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(rank))
    results = {}
    for name, model in (("shuffle_bn", plain), ("sync_bn", synced)):
        queries, keys = HardViewSelector(model, 0.2, symmetric=False).embed_candidates(
            views, torch.Generator().manual_seed(5))
        results[name] = {"queries": queries, "keys": keys.embedding}
    assert not any("forward" in vars(layer) for layer in synced.modules())  # scoring put SyncBatchNorm back
    reference = copy.deepcopy(plain)  # plain training-mode forwards, per view slot
    with torch.no_grad():
        # Shuffle-BN across processes: a key forward per slot, each drawing the same permutation.
        results["shuffle_bn"]["expected_queries"] = torch.stack(
            [reference.encoder_q(views[:, v]).embedding for v in range(3)], 1)
        results["shuffle_bn"]["expected_keys"] = torch.stack(
            [reference.key(views[:, v], torch.Generator().manual_seed(5)).embedding for v in range(3)], 1)
        # SyncBN is BatchNorm over the global batch: a plain forward of the global slot batch, this rank's rows.
        everyone = all_gather_cat(views)
        for side, encoder in (("queries", reference.encoder_q), ("keys", reference.encoder_k)):
            per_slot = [encoder(everyone[:, v]).embedding[rank::2] for v in range(3)]
            results["sync_bn"][f"expected_{side}"] = torch.stack(per_slot, dim=1)
    torch.save(results, out_dir / f"{rank}.pt")


def test_candidate_embeddings_equal_separate_forwards_per_view_under_shuffle_bn_and_sync_bn(tmp_path):
    run_ranks(_candidate_embeddings, 2, tmp_path)  # one start of two processes for both settings (kept short)
    for rank in range(2):
        for name, result in torch.load(tmp_path / f"{rank}.pt").items():
            for side in ("queries", "keys"):
                error = (result[side] - result[f"expected_{side}"]).abs().max()
                assert error < 1e-9, f"{name} {side} on rank {rank}: {error}"


def _train(rank, overrides, out_dir):
    trainer = Trainer(load_config(None, overrides))
    losses = []
    real = trainer.train_step

    def record(batch):
        metrics = real(batch)
        # The loss of this process's half, and the mean over processes: what a single process computes.
        losses.append(float(all_gather_cat(metrics["loss"].detach().reshape(1)).mean()))
        return metrics

    trainer.train_step = record
    trainer.train()
    params = {k: v for k, v in trainer.model.state_dict().items() if "running" not in k and "num_batches" not in k}
    torch.save({"losses": losses, "params": params, "queue": trainer.model.queue.features.clone(),
                "labels": trainer.model.queue.labels.clone()}, out_dir / f"rank{rank}.pt")


def overrides_for(tiny_overrides, tmp_path, name, *extra):
    return [*tiny_overrides, f"output_dir={tmp_path}", f"name={name}", "optim.epochs=1", "data.augment_on=cpu",
            "data.workers=0", "model.bn_splits=2", "log_every=4", *extra]


def identical_replicas(out_dir):
    """The results _train saved for ranks 0 and 1 in `out_dir`, checked to hold the same queue and query encoder (DDP
    averaged the gradients); rank 0's."""
    r0, r1 = torch.load(out_dir / "rank0.pt"), torch.load(out_dir / "rank1.pt")
    assert torch.equal(r0["queue"], r1["queue"])
    for key, value in r0["params"].items():
        if key.startswith("encoder_q."):
            assert torch.equal(value, r1["params"][key]), key
    return r0


def test_two_processes_match_one_process_with_the_same_global_batch(tiny_overrides, tmp_path):
    # Views on the CPU path depend only on (seed, epoch, index), and with bn_splits=2 the single process's
    # split BatchNorm groups hold exactly the samples each of the two processes holds.
    single = tmp_path / "single"
    single.mkdir()
    _train(0, overrides_for(tiny_overrides, tmp_path, "one"), single)
    run_ranks(_train, 2, overrides_for(tiny_overrides, tmp_path, "two"), tmp_path)
    one, r0, r1 = (torch.load(p) for p in (single / "rank0.pt", tmp_path / "rank0.pt", tmp_path / "rank1.pt"))
    assert len(one["losses"]) == len(r0["losses"]) == 8
    losses_one, losses_two = torch.tensor(one["losses"]), torch.tensor(r0["losses"])
    # Same loss at the first two steps to float precision: the forward (BN grouping, shuffle) and the first
    # averaged update agree, where a wrong grouping or shuffle would differ by ~0.1 at once. Later, convolutions
    # over 8 instead of 16 images sum in another order, and 1e-7 differences flip max-pool ties on the exact-zero
    # background pixels (the gradient goes to another position), so the trajectories drift apart at a rate that
    # depends on the CPU's kernels (at most 0.02 in 8 steps on an AVX2 EPYC, 0.037 on an AVX-512 one): the whole
    # run is only held below the error a wrong grouping makes at once.
    assert torch.allclose(losses_one[:2], losses_two[:2], atol=1e-5)
    assert torch.allclose(losses_one, losses_two, atol=0.1)
    assert torch.equal(r0["queue"], r1["queue"]) and torch.equal(r0["labels"], r1["labels"])
    assert torch.equal(one["labels"], r0["labels"])  # keys enqueued in the single process's order


@pytest.mark.slow
def test_mochi_hvs_and_the_symmetric_loss_run_unchanged_under_two_processes(tiny_overrides, tmp_path):
    run_ranks(_train, 2, overrides_for(
        tiny_overrides, tmp_path, "flagship", "moco.symmetric=true", "mochi.enabled=true", "mochi.warmup_epochs=0",
        "mochi.num_hard=32", "mochi.num_mix=16", "mochi.num_query_mix=8", "hvs.enabled=true", "hvs.num_views=3",
        "hvs.score_with_mochi=true"), tmp_path)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(r0["queue"], r1["queue"])
    for key, value in r0["params"].items():
        if key.startswith("encoder_q."):
            assert torch.equal(value, r1["params"][key]), key  # DDP kept the replicas identical
    assert all(torch.isfinite(torch.tensor(r0["losses"])))


def _rank_zero_never_returns(rank):
    if rank == 0:
        threading.Event().wait()  # as a process blocked in a collective whose partner has failed or left


def test_a_job_that_never_reports_fails_at_the_deadline_instead_of_hanging_the_suite():
    ranks = Ranks(2)
    try:
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="no result before the deadline"):
            ranks.run(_rank_zero_never_returns, (), timeout_s=3)
        assert time.monotonic() - started < 60
    finally:
        ranks.close()
