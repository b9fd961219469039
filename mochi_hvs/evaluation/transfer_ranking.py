"""How well transferability estimates rank the target tasks against the transfer measured by `mochi-transfer`:
Spearman's rho and Kendall's tau (scipy.stats) across the targets, per measured accuracy metric."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from scipy import stats

from ..errors import UserError
from .transfer import markdown_row, number, table_head

ACCURACY_SUFFIXES = ("top1", "_mean")  # kNN top-1 per k, linear top-1, few-shot mean accuracy (not ECE, intervals)
MIN_TARGETS = 3  # fewer targets rank nothing worth a correlation

Measured = dict[str, dict[str, float]]  # metric (group.name, e.g. linear.top1) -> task -> value


@dataclass(frozen=True)
class Correlation:
    """The rank correlations of one estimate with one measured metric over the targets both have."""

    targets: int
    spearman: float | None  # None: too few targets, or a constant ranking
    kendall: float | None


def read_measured(path: str | Path, random_init: bool = False) -> Measured:
    """The accuracy metrics of a `mochi-transfer` results file (JSON lines with "task", "group" and "metrics"), by
    metric and task, from the lines of trained weights (or, with `random_init`, of random-init weights; raw-pixel
    lines never count); when a task and group appear more than once, the last line counts. For trained weights,
    where the file also holds random-init lines of the same task and metric, `gain.<metric>` is the difference: how
    much the pretraining adds on that target, which absolute accuracy confounds with the target's difficulty."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"--measured {path}: {err.strerror}") from err
    by_init: dict[bool, Measured] = {False: {}, True: {}}
    for number_, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"--measured {path}, line {number_}: not JSON ({err.msg})") from err
        weights = entry.get("weights") or {}
        if entry.get("evaluator") != "transfer" or entry.get("group") is None or weights.get("format") == "pixels":
            continue  # another evaluator's line, a skipped task, or the raw pixels
        measured = by_init[bool(weights.get("random_init", False))]
        for name, value in entry["metrics"].items():
            if name.endswith(ACCURACY_SUFFIXES):
                measured.setdefault(f"{entry['group']}.{name}", {})[entry["task"]] = float(value)
    measured = by_init[random_init]
    if not measured:
        kind = "random-init" if random_init else "trained"
        raise UserError(f"--measured {path}: no mochi-transfer results of {kind} weights in it")
    if not random_init:
        baseline = by_init[True]
        gains = {f"gain.{metric}": {task: value - baseline[metric][task] for task, value in values.items()
                                    if task in baseline.get(metric, {})} for metric, values in measured.items()}
        measured = {**measured, **{metric: values for metric, values in gains.items() if values}}
    return measured


def rank_correlation(estimate: dict[str, float], measured: dict[str, float]) -> Correlation:
    """Spearman and Kendall correlation of `estimate` (higher: predicted better) with `measured` over the tasks
    both have values for."""
    tasks = sorted(set(estimate) & set(measured))
    x, y = [estimate[t] for t in tasks], [measured[t] for t in tasks]
    if len(tasks) < MIN_TARGETS or len(set(x)) == 1 or len(set(y)) == 1:  # no ranking to correlate
        return Correlation(len(tasks), None, None)
    return Correlation(len(tasks), float(stats.spearmanr(x, y).statistic), float(stats.kendalltau(x, y).statistic))


def correlations(estimates: dict[str, dict[str, float]], measured: Measured) -> dict[str, dict[str, Correlation]]:
    """Every estimate (name -> task -> score, higher: better) against every measured metric, by metric then estimate."""
    return {metric: {name: rank_correlation(scores, values) for name, scores in estimates.items()}
            for metric, values in measured.items()}


def correlation_table(table: dict[str, dict[str, Correlation]]) -> str:
    """Markdown rows = measured metrics: the number of targets and each estimate's Spearman rho and Kendall tau."""
    names = list(next(iter(table.values())))
    header = ["measured metric", "targets", *(f"{name} {kind}" for name in names for kind in ("Spearman", "Kendall"))]
    lines = table_head(header)
    for metric, by_estimate in table.items():
        targets = max(c.targets for c in by_estimate.values())
        cells = [number(value) for c in by_estimate.values() for value in (c.spearman, c.kendall)]
        lines.append(markdown_row([metric, str(targets), *cells]))
    return "\n".join(lines)
