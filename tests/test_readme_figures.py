"""Every figure of the README's results table is the one its linked records give (mean ± std over the recorded
seeds, formatted as the study reports format them), and a row that says 'not yet' has no such record."""

from pathlib import Path

import pytest

from mochi_hvs.study.report import _cell, read_results

ROOT = Path(__file__).resolve().parents[1]
RECORDS = {"headline": ROOT / "results/fmnist_headline/results.jsonl",
           "frontier": ROOT / "results/fmnist_frontier/results.jsonl"}
ARMS = {  # the start of a row's first cell -> the arm name in the study records
    "raw pixels": "pixels", "random-init ResNet-18": "random_init", "**the default**": "e5",
    "supervised reference (the default trained with labels": "supervised", "the long recipe": "long",
    "the flagship": "flagship_long", "MoCHi alone": "mochi_long", "HVS alone": "hvs_long",
    "supervised reference at 7,020 steps": "long_supervised", "the ViT recipe": "vit_tiny",
    "random-init ViT": "random_init_timm.vit_tiny_patch16_224-depth6-embed_dim128-img_size28-num_heads4-patch_size4",
}
COLUMNS = [("knn", "k20_top1"), ("knn", "k200_top1"), ("linear", "top1"), ("linear_sgd-lr30", "top1")]


def results_rows() -> list[list[str]]:
    """The cells of the README table whose header names the converged and the old probe."""
    text = (ROOT / "README.md").read_text()
    start = text.index("| features | seeds | kNN k = 20 | kNN k = 200 | linear, converged probe |")
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().replace("**", "") for cell in line.strip("|").split("|")])
    return rows


def arm_of(label: str) -> str:
    return next(arm for start, arm in ARMS.items() if label.startswith(start.replace("**", "")))


@pytest.mark.parametrize("row", results_rows(), ids=lambda row: row[0][:30])
def test_readme_figures_match_their_records(row):
    arm, links = arm_of(row[0]), row[-1]
    new = read_results(RECORDS["headline"]) if "headline" in links else None
    old = read_results(RECORDS["frontier"]) if "frontier" in links else None
    assert new or old, f"row {row[0]!r} links no record"
    for cell, (evaluator, metric) in zip(row[2:6], COLUMNS, strict=True):
        source = old if evaluator == "linear_sgd-lr30" or new is None else new
        values = source.values.get((arm, evaluator, metric)) if source else None
        if cell in ("not yet", "—"):
            recorded = new.values.get((arm, evaluator, metric)) if new and evaluator == "linear" else None
            assert not recorded, f"{row[0]!r}: '{cell}' but the record holds {evaluator} {metric}"
            continue
        assert values, f"{row[0]!r}: {cell} has no record ({evaluator} {metric})"
        assert cell == _cell(values), f"{row[0]!r}: README {cell}, records {_cell(values)}"
        if arm not in ("pixels",):
            seeds = sorted(s for s in values if s is not None)
            assert row[1] == ", ".join(map(str, seeds)), f"{row[0]!r}: seeds {row[1]} vs records {seeds}"


def test_every_known_row_is_in_the_table_once():
    arms = [arm_of(row[0]) for row in results_rows()]
    assert sorted(arms) == sorted(ARMS.values())
