"""The evaluator commands `mochi-knn`, `mochi-linear`, `mochi-semisup`, `mochi-select`, `mochi-detect`,
`mochi-transfer`, `mochi-transferability` and `mochi-nuclei` (console scripts, also run as `python eval/knn.py`,
`eval/linear.py`, `eval/semisup.py`, `eval/select_labels.py`, `eval/detection.py`, `eval/transfer.py`,
`eval/transferability.py`, `eval/nuclei.py`).
Each reads its settings from its config section; `--help` lists them."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import EvalConfig, Keys, evaluators
from ..data.subsets import write_split_file
from .cli import (
    EvalContext,
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
from .nuclei import nuclei_segmentation
from .semisup import SemisupFinetune, subset_fingerprint
from .transfer import TaskResult, evaluate_task, group_lines, markdown_table
from .transfer_ranking import Measured, correlation_table, correlations, read_measured
from .transferability import TaskEstimate, estimate_transferability, estimates_table
from .usl import LabelSelection

KNN_KEYS = ("knn_k", "knn_temperature", "knn_backend", "knn_fp16", "knn_train_subset", "knn_test_subset", "batch_size")
KNN = [Keys("eval.", EvalConfig, KNN_KEYS)]
LINEAR = [Keys("eval.linear.", evaluators.LinearSettings), Keys("eval.", EvalConfig, ("batch_size",))]
SEMISUP = [Keys("eval.semisup.", evaluators.SemisupSettings), Keys("eval.", EvalConfig, ("batch_size",))]
SELECT = [Keys("eval.select.", evaluators.SelectSettings), Keys("eval.", EvalConfig, ("batch_size",))]
DETECTION = [Keys("eval.detection.", evaluators.DetectionSettings)]
NUCLEI = [Keys("eval.nuclei.", evaluators.NucleiSettings)]
PROBE_KEYS = ("l2_grid", "val_fraction", "max_iter", "tolerance", "seed")  # the converged probe on frozen features
TRANSFER = [Keys("eval.transfer.", evaluators.TransferSettings),
            Keys("eval.linear.", evaluators.LinearSettings, PROBE_KEYS), Keys("eval.", EvalConfig, KNN_KEYS)]
TRANSFERABILITY = [Keys("eval.transferability.", evaluators.TransferabilitySettings),
                   Keys("eval.linear.", evaluators.LinearSettings, PROBE_KEYS)]


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


def linear(ctx: EvalContext) -> tuple[evaluators.LinearSettings, dict[str, float]]:
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


def detection(ctx: EvalContext) -> tuple[evaluators.DetectionSettings, dict[str, float]]:
    """Fine-tune the detector and score it on the validation set."""
    settings, data = ctx.cfg.eval.detection, ctx.cfg.data
    backbone = ctx.single_backbone("detection")
    metrics, _ = detection_transfer(backbone.state, backbone.meta, settings, data.mean, data.std, ctx.device)
    return settings, metrics


def nuclei(ctx: EvalContext) -> tuple[evaluators.NucleiSettings, dict[str, float]]:
    """Train the nuclei decoder on the backbone and score its instances on the test set."""
    settings, data = ctx.cfg.eval.nuclei, ctx.cfg.data
    backbone = ctx.single_backbone("nuclei")
    return settings, nuclei_segmentation(backbone.module, settings, data.mean, data.std, ctx.device)


def knn_main(argv: list[str] | None = None) -> int:
    """mochi-knn: weighted kNN top-1/top-5 of a backbone (or of the raw pixels) for every eval.knn_k."""
    parser = base_parser("Weighted kNN top-1/top-5 of a frozen backbone (or of the raw pixels), for every k.", KNN,
                         "eval.knn_k=[20,200] eval.knn_backend=torch device=cpu", pixels=True)
    return run_evaluation("knn", parse_arguments(parser, KNN, argv), knn)


def linear_main(argv: list[str] | None = None) -> int:
    """mochi-linear: linear probe of a frozen backbone (or of the raw pixels)."""
    parser = base_parser("Linear probe of a frozen backbone (or of the raw pixels): by default (lbfgs) "
                         "logistic regression fitted to convergence on cached features, its L2 strength chosen on a "
                         "validation split of the training set; classic: MoCo's SGD protocol on augmented images; "
                         "sklearn: scikit-learn's logistic regression at a fixed C.", LINEAR,
                         "eval.linear.l2_grid=[0.01,0.001] eval.linear.val_fraction=0.2 device=cpu", pixels=True)
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


def nuclei_main(argv: list[str] | None = None) -> int:
    """mochi-nuclei: nuclei instance segmentation with a small decoder on a frozen or fine-tuned backbone, Dice and
    AJI."""
    parser = base_parser("Nuclei instance segmentation: a small decoder on the dense maps of the backbone's first "
                         "three stages (frozen, or fine-tuned with eval.nuclei.finetune=true) learns background / "
                         "interior / boundary per pixel on eval.nuclei.train; nuclei are the interiors' connected "
                         "components grown over the boundaries; Dice and aggregated Jaccard index (AJI) on "
                         "eval.nuclei.test. Each set is a folder with images/ and masks/ (instance maps).", NUCLEI,
                         "eval.nuclei.train=data/nuclei/train eval.nuclei.test=data/nuclei/test device=cpu")
    return run_evaluation("nuclei", parse_arguments(parser, NUCLEI, argv), nuclei)


def transfer(ctx: EvalContext) -> tuple[dict[str, Any], list[TaskResult]]:
    """Every task of eval.transfer.tasks in turn; the settings record the suite's, the probe's and kNN's."""
    e = ctx.cfg.eval
    model = ctx.feature_model()
    results = [evaluate_task(ctx.cfg, task, model, ctx.device, ctx.amp_dtype) for task in e.transfer.tasks]
    settings = {"transfer": dataclasses.asdict(e.transfer),
                "linear": {name: getattr(e.linear, name) for name in PROBE_KEYS}, "knn": knn_settings(e)}
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


def add_tasks_argument(parser: argparse.ArgumentParser, what: str, key: str) -> None:
    """--tasks TASK ...: shorthand for the config key `key` (see task_list_override)."""
    parser.add_argument("--tasks", nargs="+", metavar="TASK",
                        help=f"{what}, NAME or NAME=ROOT (shorthand for --set {key}=[...])")


def task_list_override(key: str, tasks: list[str]) -> str:
    """--set text giving a list of tasks (JSON is YAML: any path survives)."""
    return f"{key}={json.dumps(tasks)}"


def transfer_main(argv: list[str] | None = None) -> int:
    """mochi-transfer: kNN, linear probe with calibration and few-shot episodes of a backbone (or of the raw pixels)
    on every transfer task; one JSON line per task and metric group, one Markdown table."""
    parser = base_parser("Transfer suite: one backbone (several: their features concatenated; or the raw pixels), "
                         "many target tasks, one table. Per task, on frozen features: weighted kNN top-1, the "
                         "converged linear probe's top-1 and expected calibration error (15 bins), and N-way K-shot "
                         "prototype episodes (mean and 95% interval) drawn from the test split. Every task uses the "
                         "checkpoint's data settings (image size, mean, std). A task whose data is missing is skipped "
                         "with the reason.", TRANSFER,
                         "eval.transfer.episodes=1000 eval.linear.val_fraction=0.2 device=cpu", pixels=True)
    add_tasks_argument(parser, "the tasks", "eval.transfer.tasks")
    parser.add_argument("--table", help="also write the Markdown table to this file")
    args = parse_arguments(parser, TRANSFER, argv)
    if args.tasks:
        args.set = [*args.set, task_list_override("eval.transfer.tasks", args.tasks)]
    return run_evaluation("transfer", args, transfer, report_transfer)


@dataclass
class TransferabilityResults:
    """The estimates per target and, with --measured, the transfer they are ranked against."""

    estimates: list[TaskEstimate]
    measured: Measured | None


def transferability(ctx: EvalContext, measured: str | None,
                     random_init: bool = False) -> tuple[dict[str, Any], TransferabilityResults]:
    """The --measured file first (a bad one stops before any work; its lines of the same kind of weights, trained or
    random-init, count), then the estimates of every target."""
    truth = None if measured is None else read_measured(measured, random_init)
    estimates = estimate_transferability(ctx.cfg, ctx.single_backbone("transferability").module, ctx.device)
    e = ctx.cfg.eval
    settings = {"transferability": dataclasses.asdict(e.transferability),
                "linear": {name: getattr(e.linear, name) for name in PROBE_KEYS}}
    return settings, TransferabilityResults(estimates, truth)


def report_transferability(evaluator: str, args: argparse.Namespace, ctx: EvalContext, settings: dict[str, Any],
                           results: TransferabilityResults) -> None:
    """One JSON line per target (and, with --measured, one with the rank correlations), then the Markdown tables."""
    source = ctx.cfg.eval.transferability.source
    lines = [{**result_entry(evaluator, args, dataclasses.replace(ctx, cfg=e.cfg), settings, e.metrics()),
              "task": e.task, "source": source, "skipped": e.skipped} for e in results.estimates]
    text = f"{title_of(evaluator, args)}\n\n{estimates_table(results.estimates, source)}"
    if results.measured is not None:
        kept = [e for e in results.estimates if e.skipped is None]
        scores = {"PGE": {e.task: -e.pge_distance for e in kept if e.pge_distance is not None},
                  "LogME": {e.task: e.logme for e in kept}}
        table = correlations(scores, results.measured)
        records = {metric: {name: dataclasses.asdict(c) for name, c in row.items()} for metric, row in table.items()}
        lines.append({**result_entry(evaluator, args, ctx, settings, records), "task": None, "source": source,
                      "measured": str(Path(args.measured).resolve()), "skipped": None})
        text += (f"\n\nRank correlation with the measured transfer ({args.measured}) across the targets; PGE is "
                 f"ranked by -distance, so positive means the estimate orders the targets as measured:\n\n"
                 f"{correlation_table(table)}")
    for line in lines:
        append_result(args.results, line)
    print(f"appended {len(lines)} lines to {args.results}", file=sys.stderr)
    print(text)


def transferability_main(argv: list[str] | None = None) -> int:
    """mochi-transferability: PGE distance and LogME from a source task to every target task, optionally ranked
    against the transfer mochi-transfer measured."""
    parser = base_parser("Transferability estimates from a source task to every target task, for one backbone: "
                         "PGE (distance of the normalised expected gradients of the backbone parameters named by "
                         "eval.transferability.parameters, each task with its own fitted linear head; smaller: "
                         "better) and LogME (log maximum evidence of a linear model on the frozen features; larger: "
                         "better). With --measured, their rank correlations with the measured transfer.",
                         TRANSFERABILITY, "eval.transferability.batches=4 eval.linear.l2_grid=[0.001] device=cpu")
    parser.add_argument("--source", help="the source task, NAME or NAME=ROOT (shorthand for --set "
                                         "eval.transferability.source=...)")
    add_tasks_argument(parser, "the target tasks", "eval.transferability.tasks")
    parser.add_argument("--measured", metavar="FILE",
                        help="results of mochi-transfer (its --results JSON lines): report how well each estimate "
                             "ranks the targets against them (Spearman and Kendall, per measured metric)")
    args = parse_arguments(parser, TRANSFERABILITY, argv)
    if args.source:
        args.set = [*args.set, f"eval.transferability.source={json.dumps(args.source)}"]
    if args.tasks:
        args.set = [*args.set, task_list_override("eval.transferability.tasks", args.tasks)]
    return run_evaluation("transferability", args, lambda ctx: transferability(ctx, args.measured, args.random_init),
                          report_transferability)
