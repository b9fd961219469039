"""results/<study>/REPORT.md from results.jsonl: per arm and evaluator the final average accuracy and the forgetting
(matrix.py) over seeds, paired differences to the baseline arm, the accuracy matrix averaged over seeds, and the
untrained references (pixels, random init) on every task."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..study.stats import paired_difference, summarize
from .matrix import average_accuracy, forgetting
from .runner import EVALUATORS, RESULTS


def matrices(lines: list[dict[str, Any]], evaluator: str) -> dict[str, dict[int, list[list[float | None]]]]:
    """arm -> seed -> R (rows: after_task, columns: task; None where not evaluated) of top-1."""
    cells: dict[str, dict[int, dict[tuple[int, int], float]]] = defaultdict(lambda: defaultdict(dict))
    for r in lines:
        if r.get("evaluator") == evaluator and not r.get("reference"):
            cells[r["arm"]][r["seed"]][(r["after_task"], r["task"])] = r["top1"]
    out: dict[str, dict[int, list[list[float | None]]]] = defaultdict(dict)
    for arm, seeds in cells.items():
        for seed, cell in seeds.items():
            size = max(max(i, j) for i, j in cell) + 1
            out[arm][seed] = [[cell.get((i, j)) for j in range(size)] for i in range(size)]
    return out


def complete(r: list[list[float | None]]) -> bool:
    """Whether the last row is whole and every earlier row holds its seen tasks (a sequential arm's)."""
    return all(v is not None for v in r[-1]) and all(r[i][j] is not None for i in range(len(r)) for j in range(i + 1))


def _cell(values: list[float]) -> str:
    s = summarize(values)
    return f"{s.mean:.2f} ± {s.std:.2f} ({', '.join(f'{v:.2f}' for v in values)})"


def _difference(arm: dict[int, float], base: dict[int, float]) -> str:
    d = paired_difference(arm, base)
    return f"{d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}] {d.verdict}"


def summary_table(by_arm: dict[str, dict[int, list[list[float | None]]]], baseline: str) -> list[str]:
    """One row per arm: average accuracy and forgetting over seeds, and their paired differences to the baseline."""
    lines = ["| arm | seeds | final average accuracy | vs " + baseline + " | forgetting | vs " + baseline + " |",
             "| --- | --- | --- | --- | --- | --- |"]
    acc = {arm: {s: average_accuracy(r) for s, r in seeds.items()} for arm, seeds in by_arm.items()}
    forget = {arm: {s: forgetting(r) for s, r in seeds.items() if complete(r)} for arm, seeds in by_arm.items()}
    for arm in by_arm:
        base = arm != baseline and baseline in acc
        f = forget[arm]
        lines.append(f"| {arm} | {len(acc[arm])} | {_cell(list(acc[arm].values()))} | "
                     f"{_difference(acc[arm], acc[baseline]) if base else ''} | "
                     f"{_cell(list(f.values())) if f else 'n/a (no sequence)'} | "
                     f"{_difference(f, forget[baseline]) if base and f and forget[baseline] else ''} |")
    return lines


def mean_matrix(seeds: dict[int, list[list[float | None]]]) -> list[str]:
    """The accuracy matrix averaged over seeds, as a Markdown table (rows: after task i; columns: task j)."""
    first = next(iter(seeds.values()))
    size = len(first)
    lines = ["| after task | " + " | ".join(f"task {j}" for j in range(size)) + " |",
             "| --- |" + " --- |" * size]
    for i in range(size):
        row = [[r[i][j] for r in seeds.values() if r[i][j] is not None] for j in range(size)]
        if any(row):
            lines.append(f"| {i} | " + " | ".join(f"{sum(v) / len(v):.2f}" if v else "" for v in row) + " |")
    return lines


def reference_table(lines: list[dict[str, Any]], evaluator: str) -> list[str]:
    """One row per reference: top-1 on each task (mean over its seeds) and their mean, the floor of the final
    average accuracy; empty without reference lines."""
    cells: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in lines:
        if r.get("reference") and r["evaluator"] == evaluator:
            cells[r["arm"]][r["task"]].append(r["top1"])
    if not cells:
        return []
    tasks = max(j for per_task in cells.values() for j in per_task) + 1
    out = ["| reference (untrained) | seeds | average over tasks | " + " | ".join(f"task {j}" for j in range(tasks))
           + " |", "| --- | --- | --- |" + " --- |" * tasks]
    for name, per_task in cells.items():
        if any(not per_task.get(j) for j in range(tasks)):
            continue  # an interrupted evaluation: its remaining tasks come with the next call
        means = [sum(per_task[j]) / len(per_task[j]) for j in range(tasks)]
        out.append(f"| {name} | {len(per_task[0])} | {sum(means) / tasks:.2f} | "
                   + " | ".join(f"{m:.2f}" for m in means) + " |")
    return out


def write_report(report_dir: Path, title: str, description: str, baseline: str) -> Path:
    """REPORT.md beside results.jsonl, made from it alone."""
    lines = [json.loads(line) for line in (report_dir / RESULTS).read_text().splitlines() if line.strip()]
    runs = [r for r in lines if r["evaluator"] == "train"]
    out = [f"# Study: {title}", "", description.strip(), "",
           "Made from `results.jsonl` beside this report by `python -m mochi_hvs.continual --config ... --report`. "
           "R[i][j]: top-1 (%) on task j after training on task i, each task's own classes; final average accuracy: "
           "mean of the last row; forgetting: mean over the earlier tasks of their best accuracy before the last "
           "task minus their accuracy after it (docs/methods/continual.md). Differences: arm - baseline paired by "
           "seed, mean [95% t interval].", ""]
    for evaluator in EVALUATORS:
        by_arm = matrices(lines, evaluator)
        if not by_arm:
            continue
        name = "converged linear probe" if evaluator == "linear" else "kNN"
        out += [f"## {name}", "", *summary_table(by_arm, baseline), ""]
        references = reference_table(lines, evaluator)
        if references:
            out += [*references, ""]
        for arm, seeds in by_arm.items():
            out += [f"### {arm}: accuracy matrix ({name}, mean over {len(seeds)} seeds)", "", *mean_matrix(seeds), ""]
    finals = {evaluator: {arm: {seed: average_accuracy(r) for seed, r in seeds.items()}
                          for arm, seeds in matrices(lines, evaluator).items()} for evaluator in EVALUATORS}
    out += ["## Per-seed values", "",
            "| arm | seed | " + " | ".join(f"final average accuracy, {e}" for e in EVALUATORS)
            + " | steps | training seconds |", "| --- | --- | " + "--- | " * len(EVALUATORS) + "--- | --- |"]
    for r in runs:
        cells = [finals[e].get(r["arm"], {}).get(r["seed"]) for e in EVALUATORS]
        out.append(f"| {r['arm']} | {r['seed']} | " + " | ".join("" if c is None else f"{c:.2f}" for c in cells)
                   + f" | {r['steps']} | {r['train_seconds']:.0f} |")
    machines = sorted({r["machine"] for r in lines})
    commits = sorted({r["commit"] for r in lines})
    out += ["", "Machines: " + "; ".join(machines) + ".", "", "Commits: " + ", ".join(commits) + ".", ""]
    path = report_dir / "REPORT.md"
    path.write_text("\n".join(out))
    return path
