"""The study report (results/<study>/REPORT.md), regenerated from results.jsonl and the copied run files."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..evaluation.linear import OLD_PROTOCOL, PROTOCOL
from .floors import arm_floors, parse_floor
from .stats import paired_difference, summarize

OLD_LINEAR = "linear_" + OLD_PROTOCOL  # how the old probe's lines are told apart from the converged probe's
# (evaluator, metric, column title): the accuracy figures a study compares, in report order.
ACCURACY = [("knn", "k20_top1", "kNN k=20"), ("knn", "k200_top1", "kNN k=200"), ("linear", "top1", "linear"),
            (OLD_LINEAR, "top1", "linear (old SGD probe)"), ("semisup", "top1", "semi-sup 1%")]
TRAINING = [("train", "proxy_top1", "proxy top-1"), ("train", "train_seconds", "train s"),
            ("train", "forward_units", "encoder fwd (M)"), ("train", "embedding_rank", "embedding rank")]
REFERENCE_NAMES = {"pixels": "raw pixels", "random_init": "random init", "supervised": "supervised (same budget)"}


def display_name(arm: str) -> str:
    """An arm's or reference's name in tables and legends; a floor of another arm's backbone or size names them
    (e.g. random init at 42 px, random init of timm.vit_tiny_patch16_224-...)."""
    floor = parse_floor(arm)
    if floor is None:
        return REFERENCE_NAMES.get(arm, arm)
    reference, backbone, size = floor
    return (REFERENCE_NAMES[reference] + (f" of {backbone}" if backbone else "")
            + (f" at {size} px" if size else ""))


@dataclass
class StudyResults:
    """Every recorded value: values[(arm, evaluator, metric)][seed] (seed None for seedless references)."""

    values: dict[tuple[str, str, str], dict[int | None, float]]
    arms: list[str]  # in the order they were first recorded
    references: list[str]
    devices: list[str]
    commits: dict[str, int]  # commit -> result lines it wrote ("not recorded": lines older than the field)


def evaluator_of(entry: dict[str, Any]) -> str:
    """A result line's evaluator, with linear lines of any protocol but the current one under their own name: lines
    written before the converged probe carry no protocol and hold the old SGD probe's figures."""
    if entry["evaluator"] == "linear" and entry.get("protocol") != PROTOCOL:
        return "linear_" + entry.get("protocol", OLD_PROTOCOL)
    return entry["evaluator"]


def read_results(path: Path) -> StudyResults:
    """Parse results.jsonl (later lines for the same key win)."""
    values: dict[tuple[str, str, str], dict[int | None, float]] = defaultdict(dict)
    arms: list[str] = []
    references: list[str] = []
    devices: list[str] = []
    commits: dict[str, int] = defaultdict(int)
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        arm = entry["arm"]
        bucket = references if arm in REFERENCE_NAMES or parse_floor(arm) else arms
        if arm not in bucket:
            bucket.append(arm)
        if entry.get("device") and entry["device"] not in devices:
            devices.append(entry["device"])
        commits[entry.get("commit", "not recorded")] += 1
        for metric, value in entry["metrics"].items():
            if isinstance(value, (int, float)):
                values[(arm, evaluator_of(entry), metric)][entry["seed"]] = float(value)
    return StudyResults(dict(values), arms, references, devices, dict(commits))


def _cell(values: dict[Any, float] | None, scale: float = 1.0, digits: int = 2) -> str:
    if not values:
        return "—"
    finite = [v * scale for v in values.values() if math.isfinite(v)]
    if not finite:
        return "—"
    summary = summarize(finite)
    if summary.count == 1:
        return f"{summary.mean:.{digits}f}"
    return f"{summary.mean:.{digits}f} ± {summary.std:.{digits}f}"


def _scale(metric: str) -> tuple[float, int]:
    if metric == "forward_units":
        return 1e-6, 3
    if metric == "train_seconds":
        return 1.0, 0
    if metric == "proxy_top1":
        return 1.0, 3
    return 1.0, 2


def main_table(results: StudyResults, baseline: str) -> list[str]:
    """Mean ± std over seeds of every figure, arms then references."""
    columns = [c for c in TRAINING + ACCURACY if any(k[1:] == c[:2] for k in results.values)]
    header = "| arm | seeds | " + " | ".join(title for *_, title in columns) + " |"
    lines = [header, "|" + " --- |" * (len(columns) + 2)]
    for arm in results.arms + results.references:
        seeds = {s for (a, _, _), per_seed in results.values.items() if a == arm for s in per_seed}
        name = display_name(arm) + (" (baseline)" if arm == baseline else "")
        count = "—" if seeds == {None} else str(len(seeds))
        cells = [_cell(results.values.get((arm, evaluator, metric)), *_scale(metric))
                 for evaluator, metric, _ in columns]
        lines.append(f"| {name} | {count} | " + " | ".join(cells) + " |")
    return lines


def collapse_note(results: StudyResults) -> list[str]:
    """Which runs ended collapsed (the training line's flag from the run's last collapse check), where recorded."""
    flags = {(arm, seed): value for (arm, evaluator, metric), per_seed in results.values.items()
             if (evaluator, metric) == ("train", "collapsed") for seed, value in per_seed.items()}
    if not flags:
        return []
    collapsed = [f"{display_name(arm)} seed {seed}" for (arm, seed), value in flags.items() if value]
    return [f"Collapse monitor: {len(collapsed)} of {len(flags)} runs ended collapsed"
            + (f": {', '.join(collapsed)}." if collapsed else "."), ""]


def _paired_rows(results: StudyResults, arm: str, against: str) -> list[str]:
    """Per accuracy figure both record on shared seeds: 'figure | difference | 95% interval | seeds | verdict |' of
    arm - against."""
    rows = []
    for evaluator, metric, title in ACCURACY:
        mine = results.values.get((arm, evaluator, metric))
        theirs = results.values.get((against, evaluator, metric))
        if not mine or not theirs or not set(mine) & set(theirs):
            continue
        diff = paired_difference(mine, theirs)
        interval = "—" if diff.count < 2 else f"[{diff.low:+.2f}, {diff.high:+.2f}]"
        rows.append(f"{title} | {diff.mean:+.2f} | {interval} | {diff.count} | {diff.verdict} |")
    return rows


def difference_table(results: StudyResults, baseline: str) -> list[str]:
    """Paired differences arm - baseline per accuracy figure, with the 95% interval and the verdict; of the
    references, the baseline's random init and the supervised one (the floors of other arms are read against
    those arms: own_floor_table)."""
    lines = ["| arm | figure | difference to baseline | 95% interval (paired t) | seeds | verdict |",
             "| --- | --- | --- | --- | --- | --- |"]
    for arm in results.arms + [r for r in results.references if r in ("random_init", "supervised")]:
        if arm != baseline:
            lines += [f"| {display_name(arm)} | {row}" for row in _paired_rows(results, arm, baseline)]
    return lines


def own_floor_table(results: StudyResults, floors: dict[str, dict[str, str]]) -> list[str]:
    """Paired differences arm - its own random init, for the arms whose random-init floor is not the baseline's
    (another backbone or image size; `floors` from arm_floors); empty when there is none."""
    rows = []
    for arm in results.arms:
        floor = floors.get(arm, {}).get("random_init", "random_init")
        if floor != "random_init":
            named = f"| {display_name(arm)} | {display_name(floor)} | "
            rows += [named + row for row in _paired_rows(results, arm, floor)]
    if not rows:
        return []
    return ["## Differences to an arm's own random initialisation", "",
            "Arms whose backbone or image size differs from the baseline's, paired by seed with the random "
            "initialisation of their own backbone at their own size, as above.", "",
            "| arm | its random init | figure | difference | 95% interval (paired t) | seeds | verdict |",
            "| --- | --- | --- | --- | --- | --- | --- |", *rows, ""]


def per_seed_table(results: StudyResults) -> list[str]:
    """Every value of every seed."""
    columns = [c for c in ACCURACY + TRAINING if any(k[1:] == c[:2] for k in results.values)]
    lines = ["| arm | seed | " + " | ".join(title for *_, title in columns) + " |",
             "|" + " --- |" * (len(columns) + 2)]
    for arm in results.arms + results.references:
        seeds = sorted({s for (a, _, _), v in results.values.items() if a == arm for s in v},
                       key=lambda s: -1 if s is None else s)
        for seed in seeds:
            cells = []
            for evaluator, metric, _ in columns:
                value = results.values.get((arm, evaluator, metric), {}).get(seed)
                scale, digits = _scale(metric)
                cells.append("—" if value is None else f"{value * scale:.{digits}f}")
            lines.append(f"| {display_name(arm)} | {'—' if seed is None else seed} | "
                         + " | ".join(cells) + " |")
    return lines


def write_report(report_dir: Path, name: str, baseline: str, description: str = "",
                 plots: list[tuple[str, str]] | None = None) -> Path:
    """Write REPORT.md from results.jsonl; `plots`: (file name, caption) of the figures written beside it."""
    results = read_results(report_dir / "results.jsonl")
    lines = [f"# Study: {name}", ""]
    if description:
        lines += [description.strip(), ""]
    if results.devices:
        lines += [f"Trained on: {'; '.join(results.devices)}.", ""]
    lines += ["Records: results.jsonl beside this report; each line names its command, commit and machine (lines "
              "written before those fields existed say 'not recorded'). Lines by commit: "
              + ", ".join(f"{commit} ({count})" for commit, count in results.commits.items()) + ".", ""]
    if any(evaluator == OLD_LINEAR for _, evaluator, _ in results.values):
        lines += ["'linear (old SGD probe)': the probe these runs were first evaluated with (SGD at lr 30 for 100 "
                  "epochs on unnormalised cached features), which did not converge and under-reports (on the raw "
                  "pixels 81.2 against the converged probe's 84.5); 'linear': the converged probe (logistic "
                  "regression fitted by L-BFGS, its L2 strength chosen on a validation split). The two are never "
                  "mixed in one column; docs/evaluation/linear-probe.md has both protocols.", ""]
    lines += ["## Results (mean ± std over seeds)", "", *main_table(results, baseline), "", *collapse_note(results),
              "Training time and proxy top-1 (the positive ranked first among the K + 1 logits, at the end of "
              "training; for the supervised reference and arms trained with labels, their training classification "
              "top-1) are per run; encoder forwards count one per image through an encoder, a backward as two"
              + ("; embedding rank: RankMe of the last collapse check's embeddings (1: collapsed to one direction)."
                 if any(key[1:] == ("train", "embedding_rank") for key in results.values) else "."),
              "", "## Differences to the baseline", "",
              f"Paired by seed (same data order and initialisation); 95% interval of the mean difference from the "
              f"t distribution; *better* / *worse* when the interval excludes 0, else *not distinguishable*. "
              f"Baseline: {baseline}.", "", *difference_table(results, baseline), "",
              *own_floor_table(results, arm_floors(report_dir, baseline)),
              "## Per-seed values", "", *per_seed_table(results), ""]
    if plots:
        lines += ["## Figures", ""]
        for file, caption in plots:
            lines += [f"![{caption}]({file})", "", f"*{caption}*", ""]
    path = report_dir / "REPORT.md"
    path.write_text("\n".join(lines))
    return path
