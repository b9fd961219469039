"""The study's figures (PNG, matplotlib: the optional `report` extra), from the files under results/<study>/."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from .floors import FLOORS, arm_floors, parse_floor, resolved_arms
from .report import ACCURACY, REFERENCE_NAMES, StudyResults, display_name, read_results
from .stats import mean_interval, summarize

REFERENCE_STYLES = {"pixels": ":", "random_init": "--", "supervised": "-."}
MATPLOTLIB_MISSING = "plots need matplotlib: pip install 'mochi_hvs[report]' (the report is written without them)"


def matplotlib_pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def run_records(report_dir: Path) -> dict[str, dict[int, list[dict]]]:
    """records[arm][seed]: the metrics.jsonl lines of each copied run."""
    records: dict[str, dict[int, list[dict]]] = defaultdict(dict)
    for path in sorted((report_dir / "runs").glob("*/seed*/metrics.jsonl")):
        seed = int(path.parent.name.removeprefix("seed"))
        records[path.parent.parent.name][seed] = [json.loads(line) for line in path.read_text().splitlines()
                                                  if line.strip()]
    return records


def curves(records: dict[int, list[dict]], key: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per seed, the (steps, values) of one logged metric, finite values only."""
    out = {}
    for seed, lines in records.items():
        points = [(r["step"], r[key]) for r in lines if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        if points:
            steps, values = zip(*points, strict=True)
            out[seed] = (np.asarray(steps, dtype=float), np.asarray(values, dtype=float))
    return out


def supervised_arms(report_dir: Path) -> set[str]:
    """The runs trained with labels: the supervised reference, and arms whose resolved config (study.yaml beside
    the results) has objective: supervised. Their top-1 is a classification accuracy, not a pretext task's."""
    return {"supervised"} | {arm for arm, config in resolved_arms(report_dir).items()
                             if config.get("objective") == "supervised"}


def image_sizes(report_dir: Path, baseline: str) -> tuple[dict[str, int], int | None]:
    """Each arm's training image size (from study.yaml) and the baseline's; the references without a size suffix
    and the supervised reference are at the baseline's size."""
    sizes = {arm: (config.get("data") or {}).get("image_size") for arm, config in resolved_arms(report_dir).items()}
    base = sizes.get(baseline)
    sizes["supervised"] = base
    return sizes, base


def arm_colors(arms: list[str]) -> dict[str, str]:
    """One colour per arm (the study's arms, then the trained references), the same in every figure and distinct
    for any number of arms: matplotlib's ten default colours, tab20 beyond ten arms, a continuous map beyond 20."""
    if len(arms) <= 10:
        return {arm: f"C{i}" for i, arm in enumerate(arms)}
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    palette = colormaps["tab20"].colors if len(arms) <= 20 else colormaps["turbo"](np.linspace(0, 1, len(arms)))
    return {arm: to_hex(color) for arm, color in zip(arms, palette, strict=False)}


def _band(ax, per_seed: dict[int, tuple[np.ndarray, np.ndarray]], label: str, color: str | None,
          scale: float = 1.0) -> bool:
    """Mean over seeds on the steps all seeds logged, with a min-max band."""
    if not per_seed:
        return False
    common = sorted(set.intersection(*(set(steps.tolist()) for steps, _ in per_seed.values())))
    if not common:
        return False
    stacked = np.stack([np.interp(common, steps, values) for steps, values in per_seed.values()]) * scale
    line, = ax.plot(common, stacked.mean(axis=0), label=f"{label} (n={len(per_seed)})", color=color)
    if len(per_seed) > 1:
        ax.fill_between(common, stacked.min(axis=0), stacked.max(axis=0), color=line.get_color(), alpha=0.2)
    return True


def _curve_figure(plt, records, colors: dict[str, str], panels: list[tuple[str, str, float]], title: str,
                  path: Path) -> bool:
    """One panel per (metric key, y label, scale), one line per arm with a band over seeds."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    drawn = False
    for ax, (key, ylabel, scale) in zip(axes[0], panels, strict=True):
        for arm in sorted(records, key=lambda a: list(colors).index(a) if a in colors else len(colors)):
            drawn |= _band(ax, curves(records[arm], key), arm, colors.get(arm), scale)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if drawn:
        _save(plt, fig, title, path)
    else:
        plt.close(fig)
    return drawn


def _save(plt, fig, title: str, path: Path) -> None:
    """Title, tight layout, PNG at 120 dpi, figure closed."""
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _reference_lines(ax, results: StudyResults, evaluator: str, metric: str, references: tuple[str, ...],
                     size: int | None = None) -> None:
    """The references' mean levels of one figure as black horizontal lines, one line style per reference (at the
    baseline's image size; `size` names it in the legend)."""
    for reference in references:
        level = results.values.get((reference, evaluator, metric))
        if level:
            ax.axhline(summarize(list(level.values())).mean, linestyle=REFERENCE_STYLES[reference], color="black",
                       linewidth=1, label=REFERENCE_NAMES[reference] + (f" at {size} px" if size else ""))


def own_floors(floors: dict[str, dict[str, str]], arm: str) -> list[str]:
    """The labels of an arm's floors that are not the baseline's (`floors` from arm_floors)."""
    return [label for label in floors.get(arm, {}).values() if label not in FLOORS]


def _own_floor_name(label: str) -> str:
    """An arm's own floor in a legend: e.g. random init at the arm's size, random init of the arm's backbone."""
    reference, backbone, size = parse_floor(label)
    if backbone:
        return f"{REFERENCE_NAMES[reference]} of the arm's backbone" + (" at its size" if size else "")
    return f"{REFERENCE_NAMES[reference]} at the arm's size"


def _own_floor_ticks(ax, results: StudyResults, evaluator: str, metric: str, x: int, labels: list[str]) -> None:
    """An arm trained at another image size or with another backbone than the baseline's: its own floors (their
    `labels`) as short grey segments at its position, in the floors' line styles."""
    for label in labels:
        level = results.values.get((label, evaluator, metric))
        if level:
            ax.plot([x - 0.35, x + 0.35], [summarize(list(level.values())).mean] * 2, color="grey", linewidth=1.5,
                    linestyle=REFERENCE_STYLES[parse_floor(label)[0]], label=_own_floor_name(label))


def _final_figure(plt, results: StudyResults, colors: dict[str, str], baseline: str, sizes: dict[str, int],
                  floors: dict[str, dict[str, str]], path: Path) -> bool:
    """Per accuracy figure: each arm's per-seed values, mean and 95% interval; the floors at the baseline's image
    size as lines across, an arm at another size or with another backbone with its own floors beside it."""
    base = sizes.get(baseline)
    panels = [(e, m, t) for e, m, t in ACCURACY if any((a, e, m) in results.values for a in results.arms)]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.5), squeeze=False)
    for ax, (evaluator, metric, title) in zip(axes[0], panels, strict=True):
        for x, arm in enumerate(results.arms):
            per_seed = results.values.get((arm, evaluator, metric), {})
            if not per_seed:
                continue
            values = list(per_seed.values())
            ax.scatter([x] * len(values), values, s=14, color="grey", zorder=2)
            mean = summarize(values).mean
            if len(values) > 1:
                low, high = mean_interval(values)
                ax.errorbar([x], [mean], yerr=[[mean - low], [high - mean]], fmt="o", capsize=4, zorder=3,
                            color=colors.get(arm))
            else:
                ax.plot([x], [mean], "o", zorder=3, color=colors.get(arm))
            _own_floor_ticks(ax, results, evaluator, metric, x, own_floors(floors, arm))
        _reference_lines(ax, results, evaluator, metric, ("pixels", "random_init", "supervised"), base)
        labels = [display_name(a) + (f" ({sizes[a]} px)" if sizes.get(a) not in (None, base) else "")
                  for a in results.arms]
        ax.set_xticks(range(len(results.arms)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(title)
        ax.set_ylabel("top-1 (%)")
        ax.grid(axis="y", alpha=0.3)
        handles, names = ax.get_legend_handles_labels()
        if handles:
            unique = dict(zip(names, handles, strict=True))  # one entry per floor style
            ax.legend(unique.values(), unique.keys(), fontsize=8)
    _save(plt, fig, f"final accuracy per arm (points: seeds; bars: 95% interval; baseline {baseline})", path)
    return True


def time_points(results: StudyResults, arm: str, evaluator: str, metric: str) -> list[tuple[float, float]]:
    """(training minutes, accuracy) of each of an arm's seeds that recorded both, in seed order."""
    seconds = results.values.get((arm, "train", "train_seconds"), {})
    accuracy = results.values.get((arm, evaluator, metric), {})
    seeds = sorted(set(seconds) & set(accuracy), key=lambda seed: (seed is None, seed or 0))  # 2 before 10
    return [(seconds[seed] / 60, accuracy[seed]) for seed in seeds]


def _time_figure(plt, results: StudyResults, colors: dict[str, str], sizes: dict[str, int], base: int | None,
                 floors: dict[str, dict[str, str]], path: Path) -> bool:
    """Per accuracy figure: every trained arm at the baseline's image size, its runs at their training minutes, the
    untrained references at that size as lines (black; an arm with another backbone: its own random init in its
    colour): the frontier of accuracy against training time. Arms at other sizes are left out: their floors are
    not these lines (final_accuracy.png shows them beside their own)."""
    trained = [a for a in results.arms + [r for r in results.references if r == "supervised"]
               if sizes.get(a) in (None, base)]
    panels = [(e, m, t) for e, m, t in ACCURACY if any(time_points(results, a, e, m) for a in trained)]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    for ax, (evaluator, metric, title) in zip(axes[0], panels, strict=True):
        for arm in trained:
            points = time_points(results, arm, evaluator, metric)
            if points:
                minutes, values = zip(*points, strict=True)
                ax.scatter(minutes, values, s=22, color=colors.get(arm), label=display_name(arm), zorder=3)
        _reference_lines(ax, results, evaluator, metric, ("pixels", "random_init"), base)
        for arm in trained:
            for label in own_floors(floors, arm):
                level = results.values.get((label, evaluator, metric))
                if level:
                    ax.axhline(summarize(list(level.values())).mean, linestyle=REFERENCE_STYLES["random_init"],
                               color=colors.get(arm), linewidth=1, label=f"random init of {display_name(arm)}'s "
                                                                         "backbone")
        ax.set_xlabel("training minutes")
        ax.set_ylabel("top-1 (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    entries = {}  # one legend for all panels, beside them rather than over the points
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    axes[0][-1].legend(entries.values(), entries.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    _save(plt, fig, "final accuracy against training time (points: runs; lines: untrained references)", path)
    return True


def _iou_figure(plt, records, path: Path) -> bool:
    """HVS: histograms of the selected pair's and a random pair's crop IoU, summed over each arm's runs."""
    arms = {}
    for arm, per_seed in records.items():
        sums: dict[str, np.ndarray] = {}
        edges = None
        for lines in per_seed.values():
            for r in lines:
                for key, hist in r.get("histograms", {}).items():
                    if "iou" in key:
                        counts = np.asarray(hist["counts"], dtype=float)
                        sums[key] = sums.get(key, 0) + counts
                        edges = np.asarray(hist["edges"], dtype=float)
        if sums:
            arms[arm] = (edges, sums)
    if not arms:
        return False
    fig, axes = plt.subplots(1, len(arms), figsize=(5.5 * len(arms), 4), squeeze=False)
    for ax, (arm, (edges, sums)) in zip(axes[0], arms.items(), strict=True):
        for key, counts in sorted(sums.items()):
            ax.stairs(counts / counts.sum(), edges, label=key.split("/")[-1].replace("iou_", "") + " pair")
        ax.set_xlabel("IoU of the two crops")
        ax.set_ylabel("share of samples")
        ax.set_title(arm)
        ax.legend(fontsize=8)
    _save(plt, fig, "HVS: crop overlap of the selected pair vs a random pair of the same candidates", path)
    return True


def write_plots(report_dir: Path, baseline: str) -> list[tuple[str, str]] | None:
    """Write every figure that has data; returns (file, caption) pairs, or None without matplotlib."""
    plt = matplotlib_pyplot()
    if plt is None:
        return None
    records = run_records(report_dir)
    results = read_results(report_dir / "results.jsonl")
    colors = arm_colors(results.arms + [r for r in results.references if r in records])
    supervised = supervised_arms(report_dir)
    sizes, base = image_sizes(report_dir, baseline)
    others = sorted(arm for arm in results.arms if sizes.get(arm) not in (None, base))
    left_out = f"; arms at other image sizes left out: {', '.join(others)}" if others else ""
    floors = arm_floors(report_dir, baseline)
    backbones = [arm for arm in results.arms if any(parse_floor(label)[1] for label in own_floors(floors, arm))]
    own = "size or backbone where they differ" if backbones else "size where it differs"
    coloured = [arm for arm in backbones if arm not in others]
    in_colour = (f"; lines in an arm's colour: the random init of its own backbone ({', '.join(coloured)})"
                 if coloured else "")
    written = []
    figures = [
        ("final_accuracy.png", "Final accuracy per arm on the full test set (points: seeds; bars: 95% interval "
         f"of the mean; lines: references at the baseline's image size; grey segments: the floors at an arm's own "
         f"{own})", lambda p: _final_figure(plt, results, colors, baseline, sizes, floors, p)),
        ("accuracy_vs_time.png", "Final accuracy against training time on this machine (points: runs; lines: raw "
         f"pixels and random init at the baseline's image size{in_colour}{left_out})",
         lambda p: _time_figure(plt, results, colors, sizes, base, floors, p)),
        ("knn_vs_step.png", "kNN top-1 of the in-training monitor vs step (line: mean over seeds; band: min-max)",
         lambda p: _curve_figure(plt, records, colors, [("knn/top1", "kNN top-1 (%)", 1.0)], "kNN monitor", p)),
        ("proxy_vs_step.png", "Proxy-task top-1 (positive ranked first among K + 1) vs step (the contrastive arms)",
         lambda p: _curve_figure(plt, {a: r for a, r in records.items() if a not in supervised}, colors,
                                 [("train/proxy_top1", "proxy top-1", 1.0)], "pretext task", p)),
        ("mochi_vs_step.png", "MoCHi: share of synthetic negatives above the positive, and share of the top-N "
         "hard negatives from the query's own class (class-oracle rate), vs step",
         lambda p: _curve_figure(plt, records, colors,
                                 [("train/mochi/synthetic_above_positive", "synthetic above positive", 1.0),
                                  ("train/mochi/class_oracle_rate", "class-oracle rate", 1.0)], "MoCHi", p)),
        ("hvs_iou.png", "HVS: crop IoU of the selected pair vs a random pair of the same candidates",
         lambda p: _iou_figure(plt, records, p)),
    ]
    for file, caption, draw in figures:
        if draw(report_dir / file):
            written.append((file, caption))
    return written
