"""The transfer suite: one backbone (or the raw pixels) on many target tasks, after Ericsson et al., "How well do
self-supervised models transfer?" (2021). Every task is a labelled dataset read with the evaluated checkpoint's
data settings (image size, mean and std; grayscale repeated to three channels); its train and test features are
extracted once, then scored by weighted kNN, the converged linear probe (top-1 and expected calibration error) and
few-shot prototype episodes drawn from the test split. A task whose data is missing or damaged is skipped, with
the reason, and the others still run."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..config import Config
from ..config.evaluators import TransferSettings, task_name_and_root
from ..data.datasets import DatasetError
from .calibration import expected_calibration_error
from .few_shot import TooFewImages, few_shot_accuracy
from .frozen import FrozenEvaluation, FrozenFeatures
from .knn import topk_accuracy


@dataclass
class TaskResult:
    """One task's metrics by group (knn, linear, few_shot), or why the task or a group was skipped."""

    task: str  # as listed: NAME or NAME=ROOT
    cfg: Config  # the evaluation config with the task's dataset
    groups: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # group ("task": all of it) -> reason


def task_config(cfg: Config, task: str) -> Config:
    """`cfg` with the task's dataset: its root when the task gives one, else the config's own root for the config's
    own dataset and the dataset's default location for any other."""
    name, root = task_name_and_root(task)
    task_cfg = copy.deepcopy(cfg)
    if root is None and name != cfg.data.name:
        task_cfg.data.root = None
    elif root is not None:
        task_cfg.data.root = root
    task_cfg.data.name = name
    return task_cfg


def shot_key(ways: int, shots: int) -> str:
    """The metric name stem of one few-shot setting, e.g. 5way_1shot."""
    return f"{ways}way_{shots}shot"


def few_shot_metrics(features: FrozenFeatures, settings: TransferSettings) -> tuple[dict[str, float], str | None]:
    """Mean and 95% interval of prototype accuracy for every shot count, and why any shot count was left out."""
    s, metrics, skipped = settings, {}, []
    for shots in s.shots:
        try:
            result = few_shot_accuracy(features.test, features.test_labels, s.ways, shots, s.queries, s.episodes,
                                       s.seed)
        except TooFewImages as err:
            skipped.append(str(err))
            continue
        metrics[f"{shot_key(s.ways, shots)}_mean"] = result.mean
        metrics[f"{shot_key(s.ways, shots)}_interval"] = result.interval
    return metrics, "; ".join(skipped) or None


def linear_metrics(evaluation: FrozenEvaluation, features: FrozenFeatures) -> dict[str, float]:
    """Top-1 and expected calibration error (percent) of the converged linear probe, and how its fit was chosen."""
    fit = evaluation.linear_fit(features)
    with torch.no_grad():
        scores = fit.logits(features.test)
    labels = features.test_labels.to(scores.device)
    return {"top1": topk_accuracy(scores, labels, ks=(1,))[1],
            "ece": expected_calibration_error(scores.softmax(dim=1), labels), **fit.summary()}


def evaluate_task(cfg: Config, task: str, backbone: nn.Module | None, device: torch.device,
                  amp_dtype: torch.dtype | None) -> TaskResult:
    """All metric groups of one task for `backbone` (None: the raw pixels); a DatasetError skips the task."""
    result = TaskResult(task, task_config(cfg, task))
    try:
        evaluation = FrozenEvaluation(result.cfg, device, amp_dtype)
        features = evaluation.features(evaluation.pixels() if backbone is None else backbone)
    except DatasetError as err:
        result.skipped["task"] = str(err)
        return result
    result.groups["knn"] = evaluation.knn(features)
    result.groups["linear"] = linear_metrics(evaluation, features)
    result.groups["few_shot"], reason = few_shot_metrics(features, cfg.eval.transfer)
    if reason is not None:
        result.skipped["few_shot"] = reason
    return result


def markdown_table(results: list[TaskResult], ks: list[int], settings: TransferSettings) -> str:
    """Rows = tasks; columns: kNN top-1 per k, linear top-1 and ECE, few-shot mean +- 95% interval per shot count.
    A skipped task's row says why; a value that could not be measured is n/a."""
    header = ["task", *(f"kNN k={k}" for k in ks), "linear top-1", "linear ECE",
              *(f"{settings.ways}-way {shots}-shot" for shots in settings.shots)]
    lines = table_head(header)
    for result in results:
        if "task" in result.skipped:
            cells = [f"skipped: {result.skipped['task']}"] + [""] * (len(header) - 2)
        else:
            knn, linear, few = (result.groups[name] for name in ("knn", "linear", "few_shot"))
            cells = [*(number(knn.get(f"k{k}_top1")) for k in ks), number(linear["top1"]), number(linear["ece"])]
            for shots in settings.shots:
                stem = shot_key(settings.ways, shots)
                cells.append(number(few.get(f"{stem}_mean"), few.get(f"{stem}_interval")))
        lines.append(markdown_row([result.task, *cells]))
    return "\n".join(lines)


def table_head(header: list[str]) -> list[str]:
    """The first two lines of a Markdown table: the header row and its separator."""
    return [markdown_row(header), "|" + "---|" * len(header)]


def markdown_row(cells: list[str]) -> str:
    """One Markdown table row; a cell's pipes are escaped and its line breaks become spaces."""
    return "| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in cells) + " |"


def number(value: float | None, interval: float | None = None, digits: int = 2) -> str:
    """A table cell: `digits` decimals, `mean ± interval` with an interval, n/a when missing."""
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" if interval is None else f"{value:.{digits}f} ± {interval:.{digits}f}"


def group_lines(result: TaskResult) -> list[tuple[str | None, dict[str, Any], str | None]]:
    """(group, metrics, skipped reason) of every JSON line a task gets: one per metric group, or one (group None)
    saying why the whole task was skipped."""
    if "task" in result.skipped:
        return [(None, {}, result.skipped["task"])]
    return [(group, metrics, result.skipped.get(group)) for group, metrics in result.groups.items()]
