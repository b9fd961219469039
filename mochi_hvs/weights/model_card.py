"""The model card (README.md) of a timm folder export: how to load it, the recipe, data, steps, seed and commit of
its run, and the evaluation figures the run recorded (run_records.py), from whatever the source file and its folder
hold; what they do not hold is said to be unknown."""

from __future__ import annotations

from typing import Any

import yaml

from .run_records import RunRecords

UNKNOWN = "not recorded"
SUMMARY_FIGURES = {  # summary.json key -> what it is
    "knn_top1": "kNN top-1 (%), trained backbone",
    "knn_top5": "kNN top-5 (%), trained backbone",
    "init_knn_top1": "kNN top-1 (%), its starting point (random init or init_from)",
    "pixels_knn_top1": "kNN top-1 (%), raw pixels",
    "train_seconds": "training seconds",
}


def _row(name: str, value: Any) -> str:
    return f"| {name} | {UNKNOWN if value is None else value} |"


def _recipe(config: dict[str, Any], run: dict[str, Any], steps: Any) -> list[str]:
    data = config.get("data", {})
    optim = config.get("optim", {})
    return ["## Recipe", "", "| setting | value |", "| --- | --- |",
            _row("run name", config.get("name")), _row("objective", config.get("objective")),
            _row("data", data.get("name")), _row("image size (px)", data.get("image_size")),
            _row("images (train_subset)", data.get("train_subset") or "all"),
            _row("normalisation mean / std", f"{data.get('mean')} / {data.get('std')}" if data else None),
            _row("optimiser", optim.get("name")), _row("batch size", optim.get("batch_size")),
            _row("steps", steps), _row("seed", config.get("seed")), _row("commit", run.get("commit")), ""]


def _evaluation(records: RunRecords) -> list[str]:
    summary = records.summary or {}
    rows = [_row(label, summary[key]) for key, label in SUMMARY_FIGURES.items() if key in summary]
    if "knn_k" in summary:
        rows.append(_row("kNN neighbours (k)", summary["knn_k"]))
    last = records.last_evaluation
    if last is not None:
        rows += [_row(f"{key} at step {last.get('step')} (metrics.jsonl)", round(value, 2))
                 for key, value in last.items() if key.startswith("knn/") and isinstance(value, float)]
    if not rows:
        return ["## Evaluation", "", "No summary.json or metrics.jsonl beside the exported file.", ""]
    return ["## Evaluation", "", "From the run's records beside the exported file.", "",
            "| figure | value |", "| --- | --- |", *rows, ""]


def model_card(folder_name: str, timm_name: str, model_args: dict[str, Any], description: str, width: int,
               config: dict[str, Any] | None, run: dict[str, Any], records: RunRecords) -> str:
    """README.md of a timm folder `folder_name` holding timm's `timm_name` built with `model_args`; `description`
    names the backbone and where it came from, `width` its feature width."""
    args = "".join(f", {key}={value!r}" for key, value in model_args.items())
    steps = run.get("steps", (records.summary or {}).get("steps"))
    lines = ["---", "library_name: timm", "tags:", "- image-feature-extraction", "- timm", "- mochi_hvs", "---", "",
             f"# {timm_name}, self-supervised with mochi_hvs", "",
             f"{description}. A backbone without classifier: its forward returns pooled features of width {width}.",
             "", "## Load", "", "```python", "import timm", "",
             f'model = timm.create_model("local-dir:{folder_name}", pretrained=True)  # offline, from this folder',
             f'model = timm.create_model("{timm_name}", pretrained=True, num_classes=0{args},',
             f'                          pretrained_cfg_overlay=dict(file="{folder_name}/model.safetensors",'
             ' num_classes=0))', "```", ""]
    if config is None:
        recipe = ["## Recipe", "", f"The source file records no run config: recipe, data and seed are {UNKNOWN}.", ""]
        stored: list[str] = []
    else:
        recipe = _recipe(config, run, steps)
        stored = ["## Config", "", "<details><summary>the run's config, as mochi_hvs stores it</summary>", "",
                  "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```", "", "</details>", ""]
    return "\n".join([*lines, *recipe, *_evaluation(records), *stored])
