"""Shared plumbing of the eval/ command-line entry points.

Every entry point takes `--checkpoint` (our checkpoint, an exported backbone or an official MoCo .pth.tar; checked
against its SHA-256 digest unless `--no-verify`),
`--config`/`--set` (data, device and eval settings, as for pretraining; without --config the data, device, amp and
seed settings of the checkpoint's own config are used when it has one, less the pretraining subset
data.train_subset; eval.* keeps its defaults, i.e. the full labelled sets and k = 20, 200), `--random-init` (the
same architecture at a seeded random initialisation: the baseline) and `--results` (a JSON-lines file that gets one
line per run). Evaluator-specific options are generated from the evaluator's settings dataclass (see settings.py),
so flags and defaults are defined once.
Under torchrun, feature extraction is sharded across the processes and gathered in dataset order (kNN, cached
linear probe); the trained evaluators are not data-parallel, and only the first process reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..config import Config, add_config_arguments, load_config
from ..distributed import init_distributed
from ..errors import UserError
from ..models.backbone import build_backbone
from ..runtime import resolve_amp, resolve_device, seed_everything
from ..weights import LoadReport, WeightsMeta, load_backbone_weights, read_backbone_state
from .settings import add_settings_arguments, settings_from_args

DEFAULT_RESULTS = "eval_results.jsonl"
INHERITED_SECTIONS = ("seed", "device", "amp", "data")  # what evaluation takes from a checkpoint's config
# Pretraining-only keys of those sections: evaluation never reads them, and their checks refer to sections it does not
# inherit (data.train_subset must hold one batch of the checkpoint's optim.batch_size, not of the default one).
PRETRAINING_ONLY = {"data": ("train_subset",)}


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The options every evaluator shares: weights, config, baseline switch and results file."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--checkpoint", required=True,
                        help="our training checkpoint, an exported backbone (.pth) or an official MoCo .pth.tar")
    add_config_arguments(parser, "YAML recipe for data/device/eval settings (default: the checkpoint's data settings)")
    parser.add_argument("--random-init", action="store_true",
                        help="evaluate the same architecture at a seeded random initialisation (the baseline)")
    parser.add_argument("--results", default=DEFAULT_RESULTS, help="JSON-lines file to append the result to")
    parser.add_argument("--no-verify", action="store_true",
                        help="read --checkpoint even without a matching SHA-256 digest (e.g. an official MoCo file)")
    return parser


@dataclass
class EvalContext:
    """What an evaluator needs: config, device, the backbone (loaded or random) and where its weights came from."""

    cfg: Config
    device: torch.device
    amp_dtype: torch.dtype | None
    state: dict[str, torch.Tensor] | None  # None with --random-init
    meta: WeightsMeta
    backbone: nn.Module
    width: int
    report: LoadReport
    is_main: bool = True  # under torchrun, only the first process prints and writes results


def inherited_settings(stored: dict[str, Any] | None) -> dict[str, Any]:
    """The part of a checkpoint's stored config that evaluation starts from (without --config)."""
    inherited = {}
    for section, values in (stored or {}).items():
        if section not in INHERITED_SECTIONS:
            continue
        if isinstance(values, dict):  # anything else is reported by load_config
            values = {k: v for k, v in values.items() if k not in PRETRAINING_ONLY.get(section, ())}
        inherited[section] = values
    return inherited


def prepare(args: argparse.Namespace) -> EvalContext:
    """Read the weights, resolve the config and device, and build the backbone (seeded)."""
    state, meta = read_backbone_state(args.checkpoint, verify=not args.no_verify)
    cfg = load_config(args.config, args.set, defaults=None if args.config else inherited_settings(meta.config))
    env = init_distributed(cfg.device)
    device = resolve_device(cfg.device, env.local_rank)
    amp_dtype = resolve_amp(cfg.amp, device)
    seed_everything(cfg.seed)
    backbone, width = build_backbone(meta.arch, meta.small_stem)
    if args.random_init:
        state, report = None, LoadReport(0, missing=list(backbone.state_dict()))
    else:
        report = load_backbone_weights(backbone, state)
    if env.is_main:
        print(f"{meta.arch} ({'random init' if args.random_init else meta.source + ' weights'}): "
              f"{report.summary()}", file=sys.stderr)
    return EvalContext(cfg, device, amp_dtype, state, meta, backbone.to(device), width, report, env.is_main)


def results_table(title: str, metrics: dict[str, Any]) -> str:
    """A two-column table of metric names and values."""
    width = max(len(name) for name in metrics)
    lines = [title, "-" * max(len(title), width + 12)]
    for name, value in metrics.items():
        shown = f"{value:10.2f}" if isinstance(value, float) else f"{value!s:>10}"
        lines.append(f"{name:<{width}}  {shown}")
    return "\n".join(lines)


def append_result(path: str | Path, entry: dict[str, Any]) -> Path:
    """Append one JSON line to the results file (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")
    return path


def result_entry(evaluator: str, args: argparse.Namespace, ctx: EvalContext, settings: Any,
                 metrics: dict[str, Any]) -> dict[str, Any]:
    """The JSON record of one evaluation: what was measured, on which weights and data, with which settings."""
    return {
        "evaluator": evaluator,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": str(Path(args.checkpoint).resolve()),
        "weights": {"format": ctx.meta.source, "arch": ctx.meta.arch, "small_stem": ctx.meta.small_stem,
                    "random_init": args.random_init, "loaded_tensors": ctx.report.loaded},
        "data": {"name": ctx.cfg.data.name, "root": ctx.cfg.data.root, "image_size": ctx.cfg.data.image_size},
        "seed": ctx.cfg.seed,
        "settings": dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else settings,
        "metrics": metrics,
    }


def run_settings_cli(evaluator: str, description: str, settings_cls: type, choices: dict[str, tuple[str, ...]],
                     evaluate: Callable[[EvalContext, Any], tuple[Any, dict[str, Any]]],
                     argv: list[str] | None = None) -> int:
    """A whole eval/ entry point: shared options plus one per settings field, then run_evaluation."""
    parser = base_parser(f"eval/{evaluator}.py", description)
    add_settings_arguments(parser, settings_cls, choices)
    args = parser.parse_args(argv)
    settings = settings_from_args(settings_cls, args)
    return run_evaluation(evaluator, args, lambda ctx: evaluate(ctx, settings))


def run_evaluation(evaluator: str, args: argparse.Namespace,
                   evaluate: Callable[[EvalContext], tuple[Any, dict[str, Any]]]) -> int:
    """Prepare, evaluate, print the table and append the JSON line; user errors print one line and return 2."""
    try:
        ctx = prepare(args)
        settings, metrics = evaluate(ctx)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not ctx.is_main:
        return 0
    title = f"{evaluator} | {args.checkpoint}{' (random init)' if args.random_init else ''}"
    print(results_table(title, metrics))
    path = append_result(args.results, result_entry(evaluator, args, ctx, settings, metrics))
    print(f"appended to {path}", file=sys.stderr)
    return 0
