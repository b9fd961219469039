"""REPORT.md of the IHC demonstration, made from its records (results.jsonl: one mochi-nuclei line per arm and seed),
whatever the figures say: per arm the mean and spread over seeds, the paired differences to the recipe's arm, and
every seed's values."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..study.stats import paired_difference, summarize

ARMS = {  # arm: what its backbone is, in report order; the first is the one the others are read against
    "ihc_stain": "IHC tiles, stain augmentation (the recipe, configs/pathology/ihc.yaml)",
    "ihc_plain": "IHC tiles, no stain augmentation (data.stain_jitter=[0,0])",
    "fmnist": "Fashion-MNIST default (configs/moco_v2.yaml, the fmnist_headline study's e5 runs)",
    "random": "random initialisation",
}
METRICS = (("aji", "AJI"), ("dice", "Dice"))
DESCRIPTION = """Nuclei instance segmentation on the held-out bottom 128 rows of scikit-image's bundled
immunohistochemistry image (`skimage.data.immunohistochemistry()`, 512 x 512 RGB), with a small decoder trained on
the top 384 rows over a frozen ResNet-18 (mochi-nuclei, its default settings). The backbones: pretrained with MoCo-v2
on the tiles of the top 384 rows only (domain-aligned: three fields of view, quarter turns and vertical flips, with and
without stain augmentation in HED space; 56 steps), the Fashion-MNIST default backbone, and a random initialisation.

The labels are pseudo-labels made by a classical algorithm (haematoxylin channel, multi-Otsu threshold, watershed;
mochi_hvs/pathology/ihc.py), not by a person: the figures measure agreement with that algorithm on one image, with
55 nuclei in the test region, and support no claim about pathology images in general, nor about what longer
pretraining would give. Seeds pair the arms: seed N is the pretraining seed, the decoder's seed and, for the
Fashion-MNIST backbone, its run's seed."""


def arm_of(record: dict[str, Any]) -> str:
    """The arm of a record: random init, one of the pretrained runs (by its run folder's name), else Fashion-MNIST."""
    if record["weights"].get("random_init"):
        return "random"
    folder = Path(record["checkpoint"]).parent.name
    return next((arm for arm in ARMS if folder.startswith(f"{arm}_seed")), "fmnist")


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a results file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def report_text(records: list[dict[str, Any]]) -> str:
    """The report's Markdown."""
    values: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for record in records:
        for metric, _ in METRICS:
            values[(arm_of(record), metric)][record["seed"]] = record["metrics"][metric]
    arms = [arm for arm in ARMS if values.get((arm, "aji"))]
    machines = sorted({record["machine"] for record in records})
    commits = sorted({record["commit"] for record in records})
    true = sorted({record["metrics"]["nuclei_true"] for record in records})
    lines = ["# Study: pathology_ihc (the pathology recipe on the IHC image)", "", DESCRIPTION, "",
             f"Measured on: {'; '.join(machines)}. Commits: {', '.join(commits)}. Records: results.jsonl beside this "
             "report, one line per arm and seed, each with its command.", "",
             "## Results (mean ± std over seeds)", "",
             "| arm | seeds | " + " | ".join(title for _, title in METRICS) + " |",
             "| --- | --- | " + " | ".join("---" for _ in METRICS) + " |"]
    for arm in arms:
        cells = []
        for metric, _ in METRICS:
            s = summarize(list(values[(arm, metric)].values()))
            cells.append(f"{s.mean:.3f} ± {s.std:.3f}")
        lines.append(f"| {ARMS[arm]} | {len(values[(arm, 'aji')])} | " + " | ".join(cells) + " |")
    lines += ["", f"True nuclei in the test region: {', '.join(map(str, true))}.", "",
              f"## Differences to {ARMS[arms[0]]}" if arms else "", "",
              "Paired by seed; 95% interval of the mean difference from the t distribution; *better* / *worse* when "
              "it excludes 0.", "",
              "| arm | figure | difference | 95% interval (paired t) | seeds | verdict |",
              "| --- | --- | --- | --- | --- | --- |"]
    for arm in arms[1:]:
        for metric, title in METRICS:
            d = paired_difference(values[(arm, metric)], values[(arms[0], metric)])
            interval = "—" if d.count < 2 else f"[{d.low:+.3f}, {d.high:+.3f}]"
            lines.append(f"| {ARMS[arm]} | {title} | {d.mean:+.3f} | {interval} | {d.count} | {d.verdict} |")
    lines += ["", "## Per-seed values", "", "| arm | seed | AJI | Dice | predicted nuclei | final loss |",
              "| --- | --- | --- | --- | --- | --- |"]
    for record in sorted(records, key=lambda r: (list(ARMS).index(arm_of(r)), r["seed"])):
        m = record["metrics"]
        lines.append(f"| {arm_of(record)} | {record['seed']} | {m['aji']:.3f} | {m['dice']:.3f} | "
                     f"{m['nuclei_predicted']} | {m['final_loss']:.3f} |")
    return "\n".join(lines) + "\n"


def write_report(folder: Path) -> Path:
    """Write folder/REPORT.md from folder/results.jsonl."""
    path = folder / "REPORT.md"
    path.write_text(report_text(read_records(folder / "results.jsonl")), encoding="utf-8")
    return path
