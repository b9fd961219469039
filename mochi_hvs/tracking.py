"""Run logging: per-step metric windows reduced at log points, TensorBoard events and a JSON-lines file."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from .distributed import all_reduce_mean
from .run_files import METRICS

HISTOGRAM_BINS = 20
# A run prints its estimated training time after ESTIMATE_WARMUP_STEPS untimed steps (the first pays for warm-up,
# and shared cloud CPUs run the first seconds of load at a boosted clock) and ESTIMATE_STEPS timed ones.
ESTIMATE_WARMUP_STEPS = 10
ESTIMATE_STEPS = 20


class RunLogger:
    """Writes scalars to TensorBoard and one JSON object per call to metrics.jsonl (main process only).

    A run that starts at `start_step` (a resume; 0 for a fresh run) supersedes what an earlier writer of the
    folder logged after that step: those lines leave metrics.jsonl, and TensorBoard hides those events
    (SummaryWriter's purge_step), so that steps run again are not recorded twice.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, start_step: int = 0) -> None:
        self.enabled = enabled
        self.writer = None
        self.jsonl = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            run_dir.mkdir(parents=True, exist_ok=True)
            drop_lines_after(run_dir / METRICS, start_step)
            self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=start_step + 1)
            self.jsonl = open(run_dir / METRICS, "a", encoding="utf-8")

    def log(self, step: int, metrics: dict[str, Any], **context: Any) -> None:
        """Record scalar metrics at a global step; `context` (epoch, phase...) goes to the JSON line only."""
        if not self.enabled:
            return
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        self.jsonl.write(json.dumps({"step": step, **context, **metrics}) + "\n")
        self.jsonl.flush()

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        """A histogram of per-sample values: in TensorBoard, and as bin counts in metrics.jsonl (20 bins over
        [0, 1] when the values lie there, as IoUs do, else over their range)."""
        if not self.enabled:
            return
        self.writer.add_histogram(tag, values, step)
        values = values.detach().float().cpu()
        low, high = float(values.min()), float(values.max())
        if low >= 0 and high <= 1:
            low, high = 0.0, 1.0
        counts, edges = torch.histogram(values, bins=HISTOGRAM_BINS, range=(low, high))
        self.jsonl.write(json.dumps({"step": step, "histograms": {tag: {"edges": edges.tolist(),
                                                                        "counts": counts.tolist()}}}) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        """Flush and close both outputs."""
        if self.enabled:
            self.writer.close()
            self.jsonl.close()


def drop_lines_after(path: Path, step: int) -> None:
    """Rewrite a metrics.jsonl file atomically without its lines logged after `step` (and any torn line)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines() if _logged_step(line) <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def _logged_step(line: str) -> float:
    """The step of a metrics line; infinity for a line that is not one (torn by a kill mid-write)."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


class MetricWindow:
    """Per-step device scalars gathered between two log points; reduced with one host sync."""

    def __init__(self, first_step: int) -> None:
        self.first_step = first_step
        self.values: dict[str, list[torch.Tensor]] = {}
        self.data_wait = 0.0
        self.images = 0
        self.start = time.perf_counter()

    def add(self, metrics: dict[str, torch.Tensor], data_wait: float, images: int) -> None:
        """Record one step."""
        for key, value in metrics.items():
            self.values.setdefault(key, []).append(value.detach().float())
        self.data_wait += data_wait
        self.images += images

    def __len__(self) -> int:
        return len(self.values.get("loss", []))

    def reduce(self) -> tuple[dict[str, float], int | None]:
        """Means of each metric over steps and processes plus throughput, and the first step whose loss is not
        finite on any process (or None). Every process gets the same answer; one collective, one host sync."""
        names = list(self.values)
        device = self.values["loss"][0].device  # host-side values (lr, momentum) join the loss's device
        means = torch.stack([torch.stack(self.values[n]).nanmean().to(device) for n in names])
        packed = all_reduce_mean(torch.cat([means, torch.stack(self.values["loss"])])).cpu()  # the one host sync
        means, losses = packed[:len(names)], packed[len(names):]
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        bad = (~torch.isfinite(losses)).nonzero()
        first_bad = self.first_step + int(bad[0]) if len(bad) else None
        means = {name: float(value) for name, value in zip(names, means, strict=True)}  # NaN: undefined there
        means["images_per_s"] = self.images / elapsed
        means["data_wait_frac"] = self.data_wait / elapsed
        return means, first_bad


class TimeEstimate:
    """The training time a run will take, estimated once from the pace of ESTIMATE_STEPS steps after
    ESTIMATE_WARMUP_STEPS untimed ones (allocation, data loading start, lazy initialisation, a boosted clock: on a
    2-core cloud EPYC the 10 steps after the first ran 20% faster than the run went on to)."""

    def __init__(self, first_step: int, total_steps: int) -> None:
        self.first_step = first_step
        self.total_steps = total_steps
        self.warmup_steps = ESTIMATE_WARMUP_STEPS
        self.timed_steps = ESTIMATE_STEPS
        self.start: float | None = None

    def step_done(self, global_step: int) -> str | None:
        """Call after each step; returns the estimate line once, after the warm-up and the timed steps."""
        if global_step == self.first_step + self.warmup_steps:
            self.start = time.perf_counter()
        elif self.start is not None and global_step == self.first_step + self.warmup_steps + self.timed_steps:
            per_step = (time.perf_counter() - self.start) / self.timed_steps
            left = self.total_steps - global_step
            return (f"{per_step:.2f} s per step: about {format_duration(per_step * left)} for the {left} steps left "
                    "(training only; evaluations come on top)")
        return None


def format_duration(seconds: float) -> str:
    """E.g. '42 s', '7.5 min', '2.3 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
