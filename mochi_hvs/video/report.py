"""results/<name>/REPORT.md of a video study, made from its results.jsonl: per arm and task the probe's test top-1
(mean, standard deviation and every seed), chance, and paired differences (95% t interval) of the distilled encoder
to the temporal one and to the image model alone."""

from __future__ import annotations

import json
from pathlib import Path

from ..study.stats import paired_difference, summarize

ARM_NAMES = {"image_model": "image model alone (frame features averaged)", "random_init": "video encoder, random init",
             "temporal": "video encoder, temporal InfoNCE", "distilled": "video encoder, InfoNCE + distillation"}
COMPARISONS = (("distilled", "temporal"), ("distilled", "image_model"), ("temporal", "random_init"))


def read_results(path: Path) -> list[dict]:
    """The lines of a results.jsonl."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def top1_by_seed(lines: list[dict], arm: str, task: str) -> dict[int, float]:
    """seed -> test top-1 of one arm and task (the last line of each seed)."""
    return {r["seed"]: r["metrics"]["top1"] for r in lines if r["arm"] == arm and r["task"] == task}


def write_report(results: Path) -> Path:
    """Write REPORT.md beside `results` and return its path."""
    lines = read_results(results)
    tasks = list(dict.fromkeys(r["task"] for r in lines))
    arms = [arm for arm in ARM_NAMES if any(r["arm"] == arm for r in lines)]
    chance = {r["task"]: r["metrics"]["chance"] for r in lines}
    out = [f"# Study: {results.parent.name}", "", "Linear-probe test top-1 (%) on frozen centre-clip features; "
           "records: `results.jsonl` beside this report, each line naming its command, commit and machine.", "",
           "Image model: " + "; ".join(f"`{m}`" for m in sorted({r["image_model"] for r in lines})), "",
           "## Results (mean ± std over seeds)", "",
           "| arm | seeds | " + " | ".join(f"{t} (chance {chance[t]:.1f})" for t in tasks) + " |",
           "| --- | --- | " + " | ".join("---" for _ in tasks) + " |"]
    for arm in arms:
        stats = [summarize(list(top1_by_seed(lines, arm, task).values())) for task in tasks]
        out.append(f"| {ARM_NAMES[arm]} | {stats[0].count} | "
                   + " | ".join(f"{s.mean:.2f} ± {s.std:.2f}" for s in stats) + " |")
    out += ["", "## Paired differences", "", "Per seed (same seed, same videos), 95% t interval over the seeds.", "",
            "| comparison | task | difference | 95% interval | verdict |", "| --- | --- | --- | --- | --- |"]
    for arm, base in COMPARISONS:
        if arm not in arms or base not in arms:
            continue
        for task in tasks:
            d = paired_difference(top1_by_seed(lines, arm, task), top1_by_seed(lines, base, task))
            out.append(f"| {arm} − {base} | {task} | {d.mean:+.2f} | [{d.low:+.2f}, {d.high:+.2f}] | {d.verdict} |")
    out += ["", "## Per-seed values", "", "Training: seconds of the run's steps (wall clock) and its last step's loss.",
            "", "| arm | seed | " + " | ".join(tasks) + " | train s | final loss | machine |",
            "| --- | --- | " + " | ".join("---" for _ in tasks) + " | --- | --- | --- |"]
    for arm in arms:
        for seed in sorted(top1_by_seed(lines, arm, tasks[0])):
            rows = {r["task"]: r for r in lines if r["arm"] == arm and r["seed"] == seed}
            train = next((r["train"] for r in rows.values() if "train" in r), None)
            figures = " | ".join(f"{rows[t]['metrics']['top1']:.2f}" if t in rows else "—" for t in tasks)
            cost = f"{train['seconds']} | {train['final']['loss']:.3f}" if train else "— | —"
            out.append(f"| {arm} | {seed} | {figures} | {cost} | {next(iter(rows.values()))['machine']} |")
    commits = sorted({r["commit"] for r in lines})
    out += ["", f"Commits: {', '.join(commits)}. Commands: " + "; ".join(f"`{c}`" for c in
                                                                        sorted({r['command'] for r in lines})), ""]
    path = results.parent / "REPORT.md"
    path.write_text("\n".join(out))
    return path
