"""Timing helpers shared by the benchmarks: interleaved repeats, device synchronisation, JSON output."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable

import torch

from mochi_hvs.config import MIN_BN_GROUP, load_config
from mochi_hvs.data.records import ViewBatch
from mochi_hvs.machine import machine_info  # noqa: E402
from mochi_hvs.train import Trainer


def synchronize(device: torch.device) -> None:
    """Wait for queued device work so that wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, warmup: int,
                        device: torch.device) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved (A B A B ...) so drift hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def benchmark_trainer(overrides: list[str], device: str, recipe: str | None = None) -> Trainer:
    """A Trainer on the embedded dataset (a 4096-image subset unless overridden) with the defaults or a recipe."""
    folder = tempfile.mkdtemp(prefix="mochi_hvs_bench_")
    base = [f"output_dir={folder}", f"device={device}", "eval.knn_baseline=false", "data.train_subset=4096"]
    return Trainer(load_config(recipe, base + overrides))


def bn_splits_for(batch: int) -> int:
    """8 BatchNorm groups (the recipes' setting), fewer where the batch would leave under MIN_BN_GROUP per group."""
    return max(1, min(8, batch // MIN_BN_GROUP))


def synthetic_batch(batch: int, views: int, size: int, device: torch.device) -> ViewBatch:
    """Random normalised views, boxes, labels and indices shaped like a training batch (no view flipped)."""
    index = torch.arange(batch, device=device)
    return ViewBatch(views=torch.randn(batch, views, 3, size, size, device=device),
                     boxes=torch.rand(batch, views, 4, device=device),
                     flips=torch.zeros(batch, views, dtype=torch.bool, device=device),
                     labels=torch.randint(0, 10, (batch,), device=device), index=index, source=index)


def emit(record: dict, device: torch.device | str) -> None:
    """Print one JSON result line, with the machine it was measured on (CPU model, cores, ISA; GPU on CUDA)."""
    print(json.dumps({**record, "machine": machine_info(device)}), flush=True)
