"""The evaluator commands `mochi-knn`, `mochi-linear`, `mochi-semisup`, `mochi-select`, `mochi-detect` and
`mochi-transfer` (console scripts, also run as `python eval/knn.py`, `eval/linear.py`, `eval/semisup.py`,
`eval/select_labels.py`, `eval/detection.py`, `eval/transfer.py`). Each reads its settings from its config section;
`--help` lists them."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..config import EvalConfig
from ..data.subsets import write_split_file
from ..evaluator_settings import (
    DetectionSettings,
    LinearSettings,
    SelectSettings,
    SemisupSettings,
    TransferSettings,
)
from .cli import (
    EvalContext,
    Section,
    append_result,
    base_parser,
    parse_arguments,
    result_entry,
    run_evaluation,
    title_of,
)
from .detection import detection_transfer
from .knn import KnnMonitor
from .linear import LinearProbe
from .semisup import SemisupFinetune, subset_fingerprint
from .transfer import TaskResult, evaluate_task, group_lines, markdown_table
from .usl import LabelSelection

KNN_KEYS = ("knn_k", "knn_temperature", "knn_backend", "knn_fp16", "knn_train_subset", "knn_test_subset", "batch_size")
KNN = [Section("eval.", EvalConfig, KNN_KEYS)]
LINEAR = [Section("eval.linear.", LinearSettings), Section("eval.", EvalConfig, ("batch_size",))]
SEMISUP = [Section("eval.semisup.", SemisupSettings), Section("eval.", EvalConfig, ("batch_size",))]
SELECT = [Section("eval.select.", SelectSettings), Section("eval.", EvalConfig, ("batch_size",))]
DETECTION = [Section("eval.detection.", DetectionSettings)]
CACHED_PROBE_KEYS = ("epochs", "lr", "momentum", "weight_decay", "batch_size", "schedule", "seed", "standardize")
TRANSFER = [Section("eval.transfer.", TransferSettings), Section("eval.linear.", LinearSettings, CACHED_PROBE_KEYS),
            Section("eval.", EvalConfig, KNN_KEYS)]


def knn_settings(e: EvalConfig) -> dict[str, Any]:
    """The kNN settings a result records."""
    return {"k": e.knn_ks, "temperature": e.knn_temperature, "backend": e.knn_backend, "fp16": e.knn_fp16,
            "train_subset": e.knn_train_subset, "test_subset": e.knn_test_subset}


def knn(ctx: EvalContext) -> tuple[dict, dict[str, float]]:
    """kNN results for every configured k."""
    monitor = KnnMonitor(ctx.cfg, ctx.device, ctx.amp_dtype)
    model = ctx.feature_model()
    results = monitor.evaluate_pixels() if model is None else monitor.evaluate_all(model)
    metrics = {}
    for result in results:
        metrics[f"k{result.k}_top1"] = result.top1
        metrics[f"k{result.k}_top5"] = result.top5
    return knn_settings(ctx.cfg.eval), metrics


def linear(ctx: EvalContext) -> tuple[LinearSettings, dict[str, float]]:
    """Top-1/top-5 of the linear probe."""
    probe = LinearProbe(ctx.cfg, ctx.cfg.eval.linear, ctx.device, ctx.amp_dtype)
    model = ctx.feature_model()
    metrics = probe.evaluate_pixels() if model is None else probe.evaluate(model, ctx.width)
    return ctx.cfg.eval.linear, metrics


def semisup(ctx: EvalContext) -> tuple[dict, dict[str, float]]:
    """Fine-tune on the labelled subset; the settings record the subset's fingerprint."""
    backbone = ctx.single_backbone("semisup")
    settings = ctx.cfg.eval.semisup
    finetune = SemisupFinetune(ctx.cfg, settings, ctx.device, ctx.amp_dtype)
    metrics = finetune.evaluate(backbone.module, backbone.width)
    return {**vars(settings), "subset_sha1": subset_fingerprint(finetune.indices)}, metrics


def select_labels(ctx: EvalContext, out: str | None) -> tuple[dict, dict]:
    """Choose the images to label without labels and write the split file (default usl_<budget>.txt); only then
    are the labels read, to report how many classes the choice covers."""
    settings = ctx.cfg.eval.select
    selection = LabelSelection(ctx.cfg, settings, ctx.device, ctx.amp_dtype)
    chosen = selection.select(ctx.feature_model())
    path = Path(out or f"usl_{settings.budget}.txt")
    if ctx.is_main:
        write_split_file(selection.images, chosen, path)
    counts = np.bincount(selection.images.labels[chosen], minlength=len(selection.images.classes))
    record = {**vars(settings), "out": str(path.resolve()), "subset_sha1": subset_fingerprint(chosen)}
    metrics = {"labelled_images": len(chosen), "pool_images": len(selection.pool),
               "classes_covered": int((counts > 0).sum()), "class_counts": counts.tolist()}
    return record, metrics


def detection(ctx: EvalContext) -> tuple[DetectionSettings, dict[str, float]]:
    """Fine-tune the detector and score it on the validation set."""
    settings, data = ctx.cfg.eval.detection, ctx.cfg.data
    backbone = ctx.single_backbone("detection")
    metrics, _ = detection_transfer(backbone.state, backbone.meta, settings, data.mean, data.std, ctx.device)
    return settings, metrics


def knn_main(argv: list[str] | None = None) -> int:
    """mochi-knn: weighted kNN top-1/top-5 of a backbone (or of the raw pixels) for every eval.knn_k."""
    parser = base_parser("Weighted kNN top-1/top-5 of a frozen backbone (or of the raw pixels), for every k.", KNN,
                         "eval.knn_k=[20,200] eval.knn_backend=torch device=cpu", pixels=True)
    return run_evaluation("knn", parse_arguments(parser, KNN, argv), knn)


def linear_main(argv: list[str] | None = None) -> int:
    """mochi-linear: linear probe of a frozen backbone (or of the raw pixels)."""
    parser = base_parser("Linear probe of a frozen backbone (or of the raw pixels): eval.linear.mode classic "
                         "(MoCo's protocol), cached or sklearn.", LINEAR,
                         "eval.linear.mode=cached eval.linear.epochs=100 device=cpu", pixels=True)
    return run_evaluation("linear", parse_arguments(parser, LINEAR, argv), linear)


def semisup_main(argv: list[str] | None = None) -> int:
    """mochi-semisup: semi-supervised fine-tuning on a labelled subset."""
    parser = base_parser("Semi-supervised fine-tuning of backbone and a new head on a labelled subset (exactly one of "
                         "eval.semisup.label_fraction, labels_per_class, split_file or random_labels); top-1/top-5 "
                         "on the full test split.", SEMISUP,
                         "eval.semisup.label_fraction=0.01 eval.semisup.epochs=30 device=cpu")
    return run_evaluation("semisup", parse_arguments(parser, SEMISUP, argv), semisup)


def select_main(argv: list[str] | None = None) -> int:
    """mochi-select: USL, the images to label chosen from a backbone's (or the raw pixels') features, as a split
    file for mochi-semisup."""
    parser = base_parser("Unsupervised selection of the images to label (USL): k-means of the training images' "
                         "features into eval.select.budget clusters, from each the densest image, kept apart by a "
                         "diversity regulariser; no label is used. Writes a split file for mochi-semisup (--set "
                         "eval.semisup.split_file=FILE).", SELECT,
                         "eval.select.knn_k=20 eval.select.reg_lambda=0.5 device=cpu", pixels=True)
    parser.add_argument("--budget", type=int, help="images to select: short for --set eval.select.budget=N")
    parser.add_argument("--out", help="split file to write, one training-set index (or file) per line "
                                      "(default: usl_<budget>.txt)")
    args = parse_arguments(parser, SELECT, argv)
    if args.budget is not None:
        args.set.append(f"eval.select.budget={args.budget}")
    return run_evaluation("select", args, lambda ctx: select_labels(ctx, args.out))


def detection_main(argv: list[str] | None = None) -> int:
    """mochi-detect: detection transfer with torchvision's Faster R-CNN, COCO AP/AP50/AP75."""
    parser = base_parser("Detection transfer: a torchvision Faster R-CNN (ResNet-FPN initialised from the checkpoint) "
                         "fine-tuned on eval.detection.train and scored on eval.detection.val (COCO AP/AP50/AP75).",
                         DETECTION, "eval.detection.train=[data/det:train] eval.detection.val=data/det:val")
    return run_evaluation("detection", parse_arguments(parser, DETECTION, argv), detection)


def transfer(ctx: EvalContext) -> tuple[dict[str, Any], list[TaskResult]]:
    """Every task of eval.transfer.tasks in turn; the settings record the suite's, the probe's and kNN's."""
    e = ctx.cfg.eval
    model = ctx.feature_model()
    results = [evaluate_task(ctx.cfg, task, model, ctx.device, ctx.amp_dtype) for task in e.transfer.tasks]
    settings = {"transfer": dataclasses.asdict(e.transfer),
                "linear": {name: getattr(e.linear, name) for name in CACHED_PROBE_KEYS}, "knn": knn_settings(e)}
    return settings, results


def report_transfer(evaluator: str, args: argparse.Namespace, ctx: EvalContext, settings: dict[str, Any],
                    results: list[TaskResult]) -> None:
    """One JSON line per task and metric group (or per skipped task), then the Markdown table, printed and written
    to --table."""
    lines = [{**result_entry(evaluator, args, dataclasses.replace(ctx, cfg=result.cfg), settings, metrics),
              "task": result.task, "group": group, "skipped": skipped}
             for result in results for group, metrics, skipped in group_lines(result)]
    for line in lines:
        append_result(args.results, line)
    print(f"appended {len(lines)} lines to {args.results}", file=sys.stderr)
    table = markdown_table(results, ctx.cfg.eval.knn_ks, ctx.cfg.eval.transfer)
    print(f"{title_of(evaluator, args)}\n\n{table}")
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text(table + "\n", encoding="utf-8")
        print(f"table written to {args.table}", file=sys.stderr)


def transfer_main(argv: list[str] | None = None) -> int:
    """mochi-transfer: kNN, linear probe with calibration and few-shot episodes of a backbone (or of the raw pixels)
    on every transfer task; one JSON line per task and metric group, one Markdown table."""
    parser = base_parser("Transfer suite: one backbone (several: their features concatenated; or the raw pixels), "
                         "many target tasks, one table. Per task, on frozen features: weighted kNN top-1, the cached "
                         "linear probe's top-1 and expected calibration error (15 bins), and N-way K-shot prototype "
                         "episodes (mean and 95% interval) drawn from the test split. Every task uses the "
                         "checkpoint's data settings (image size, mean, std). A task whose data is missing is skipped "
                         "with the reason.", TRANSFER,
                         "eval.transfer.episodes=1000 eval.linear.epochs=50 device=cpu", pixels=True)
    parser.add_argument("--tasks", nargs="+", metavar="TASK",
                        help="the tasks, NAME or NAME=ROOT (shorthand for --set eval.transfer.tasks=[...])")
    parser.add_argument("--table", help="also write the Markdown table to this file")
    args = parse_arguments(parser, TRANSFER, argv)
    if args.tasks:
        args.set = [*args.set, f"eval.transfer.tasks={json.dumps(args.tasks)}"]  # JSON is YAML: any path survives
    return run_evaluation("transfer", args, transfer, report_transfer)
