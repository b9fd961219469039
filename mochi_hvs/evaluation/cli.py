"""Shared plumbing of the evaluator commands (mochi-knn, mochi-linear, mochi-semisup, mochi-select, mochi-detect,
mochi-transfer, mochi-transferability and their eval/*.py wrappers).

Every command takes `--checkpoint` (our checkpoint, an exported backbone or an official MoCo .pth.tar; checked
against its SHA-256 digest unless `--no-verify`), `--config`/`--set` (data, device and evaluator settings, as for
pretraining), `--random-init` (the same architecture at a seeded random initialisation: the baseline) and
`--results` (a JSON-lines file that gets one line per run; the transfer suite: one per task and metric group); kNN,
the linear probe, the label selection and the transfer suite also take `--pixels` (the raw pixels of the dataset as
features: no checkpoint needed). The frozen-feature evaluators (kNN, linear probe, label selection, transfer suite)
also take several checkpoints, `--checkpoint A B C`, and evaluate the concatenation of their features, each model's
L2-normalised, in the order given (see ensemble.py); the trained ones (semi-supervised, detection) take one. Each
evaluator reads its settings from its config section (eval.knn_*, eval.linear.*, eval.semisup.*, eval.select.*,
eval.detection.*, eval.transfer.*, eval.transferability.*), which `--help` lists with defaults.

Without --config, the data, device, amp and seed settings of the checkpoint's own config are used when it has one
(less the pretraining subset data.train_subset); of several checkpoints, the first one's, and their configs must
agree on the dataset, image size, mean and std. Evaluator settings are never taken from a checkpoint: a
pretraining recipe's eval.* keys configure its in-training monitor (often on subsets, for speed), while an
evaluation runs its protocol's defaults, on the full labelled sets, unless --config or --set say otherwise.
Under torchrun, feature extraction is sharded across the processes and gathered in dataset order (kNN, cached
linear probe); the trained evaluators are not data-parallel, and only the first process reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..config import Config, DataConfig, Keys, add_config_arguments, load_config, recipe_intro, settings_help
from ..distributed import init_distributed
from ..errors import UserError
from ..provenance import provenance
from ..runtime import resolve_amp, resolve_device, seed_everything
from ..weights.loader import LoadReport, WeightsMeta, load_backbone_weights, read_backbone_state
from .ensemble import ConcatenatedBackbones, check_shared_data

DEFAULT_RESULTS = "eval_results.jsonl"
INHERITED_SECTIONS = ("seed", "device", "amp", "data")  # what evaluation takes from a checkpoint's config
# Pretraining-only keys of those sections: evaluation never reads them, and their checks refer to sections it does not
# inherit (data.train_subset must hold one batch of the checkpoint's optim.batch_size, not of the default one).
PRETRAINING_ONLY = {"data": ("train_subset",)}


def evaluator_keys(sections: list[Keys]) -> list[Keys]:
    """The keys an evaluator reads: its sections', then those it may take from a checkpoint (INHERITED_SECTIONS)."""
    data = tuple(f.name for f in dataclasses.fields(DataConfig) if f.name not in PRETRAINING_ONLY["data"])
    inherited = [Keys("", Config, tuple(name for name in INHERITED_SECTIONS if name != "data")),
                 Keys("data.", DataConfig, data)]
    return [*sections, *inherited]


def base_parser(description: str, sections: list[Keys], example: str,
                pixels: bool = False) -> argparse.ArgumentParser:
    """The options every evaluator shares (weights, config, baseline switch, results file), its settings in --help
    (`example`: overrides it reads, for --set's help), and with `pixels` the --pixels reference (then --checkpoint
    is optional)."""
    parser = argparse.ArgumentParser(description=textwrap.fill(description, width=100),
                                     epilog=settings_help(evaluator_keys(sections),
                                                          recipe_intro("eval: {linear: {epochs: 50}}"))
                                     + "\nA checkpoint's evaluator settings are not used: only its data, device, amp "
                                       "and seed.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", nargs="+", metavar="FILE", required=not pixels,
                        help="our training checkpoint, an exported backbone (.safetensors, .pth, .pkl), an official "
                             "MoCo .pth.tar or a torchvision-named state dict; "
                             "several (frozen-feature evaluators): their features, each L2-normalised, concatenated"
                             + (" (with --pixels: one, optional, its config's data settings are used)" if pixels
                                else ""))
    add_config_arguments(parser, "YAML recipe for data/device/eval settings (default: the checkpoint's data settings)",
                         example)
    baselines = parser.add_mutually_exclusive_group()
    baselines.add_argument("--random-init", action="store_true",
                           help="evaluate the same architecture at a seeded random initialisation (the baseline; of "
                                "several checkpoints, each at its own seed: seed + its position)")
    if pixels:
        baselines.add_argument("--pixels", action="store_true",
                               help="evaluate the raw pixels of the dataset instead of a backbone (the reference "
                                    "every learned representation should beat; features cached per dataset)")
    else:
        parser.set_defaults(pixels=False)
    parser.add_argument("--results", default=DEFAULT_RESULTS, help="JSON-lines file to append the result to")
    parser.add_argument("--no-verify", action="store_true",
                        help="read the --checkpoint files even when they fail their SHA-256 digest, or are ours and "
                             "have none; files from elsewhere without a digest (e.g. official MoCo files) load "
                             "anyway, with a note")
    return parser


def parse_arguments(parser: argparse.ArgumentParser, sections: list[Keys],
                    argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line; an unknown option that names a setting points to its config key."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        settings: dict[str, str] = {}  # option-style name -> config key (the first section wins)
        for section in sections:
            for f in section.fields():
                settings.setdefault(f.name, section.prefix + f.name)
        names = [u[2:].split("=")[0].replace("-", "_") for u in unknown if u.startswith("--")]
        moved = [settings[name] for name in names if name in settings]
        hint = f"; evaluator settings are config keys: --set {moved[0]}=VALUE" if moved else ""
        parser.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    if args.checkpoint is None and not args.pixels:
        parser.error("the following arguments are required: --checkpoint (or --pixels)")
    return args


@dataclass
class LoadedBackbone:
    """The backbone to evaluate and where its weights came from."""

    module: nn.Module
    width: int
    state: dict[str, torch.Tensor] | None  # None with --random-init
    meta: WeightsMeta
    report: LoadReport


@dataclass
class EvalContext:
    """What an evaluator needs: config, device and the backbones (none with --pixels: the raw pixels are evaluated)."""

    cfg: Config
    device: torch.device
    amp_dtype: torch.dtype | None
    backbones: list[LoadedBackbone]  # one per --checkpoint file, in the order given
    is_main: bool = True  # under torchrun, only the first process prints and writes results

    def feature_model(self) -> nn.Module | None:
        """What the frozen-feature evaluators read: the backbone, the concatenation of several backbones' features
        (each L2-normalised, in --checkpoint order), or None for the raw pixels."""
        if len(self.backbones) > 1:
            return ConcatenatedBackbones([backbone.module for backbone in self.backbones])
        return self.backbones[0].module if self.backbones else None

    @property
    def width(self) -> int:
        """Feature width of feature_model(): the sum of the backbones' widths."""
        return sum(backbone.width for backbone in self.backbones)

    def single_backbone(self, evaluator: str) -> LoadedBackbone:
        """The one backbone a trained evaluator fine-tunes (or transferability differentiates); several checkpoints
        are a UserError."""
        if len(self.backbones) > 1:
            raise UserError(f"{evaluator} works on one backbone: give one --checkpoint (the concatenation of "
                            f"several applies to the frozen-feature evaluators: kNN, linear, transfer, select)")
        return self.backbones[0]


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


def load_backbone(state: dict[str, torch.Tensor], meta: WeightsMeta, random_init: bool, seed: int) -> LoadedBackbone:
    """The checkpoint's architecture with its weights, or (random_init) at the initialisation of `seed`."""
    seed_everything(seed)
    module, width = meta.architecture.build()
    if random_init:
        return LoadedBackbone(module, width, None, meta, LoadReport(0, missing=list(module.state_dict())))
    return LoadedBackbone(module, width, state, meta, load_backbone_weights(module, state))


def stored_data(metas: list[WeightsMeta]) -> dict[str, DataConfig]:
    """The data settings each checkpoint's own config resolves to, by file (files without a config left out)."""
    return {meta.path: load_config(None, None, defaults=inherited_settings(meta.config)).data
            for meta in metas if meta.config is not None}


def prepare(args: argparse.Namespace) -> EvalContext:
    """Read the weights of every --checkpoint file, resolve the config (the first file's, without --config) and the
    device, and build the backbones (the i-th seeded with seed + i) unless --pixels."""
    paths = args.checkpoint or []
    if args.pixels and len(paths) > 1:
        raise UserError("--pixels reads one --checkpoint at most (for its config's data settings), "
                        f"not {len(paths)}")
    weights = [read_backbone_state(path, verify=not args.no_verify) for path in paths]
    metas = [meta for _, meta in weights]
    if len(weights) > 1:
        check_shared_data(stored_data(metas))
    stored = metas[0].config if metas else None
    cfg = load_config(args.config, args.set, defaults=None if args.config else inherited_settings(stored))
    env = init_distributed(cfg.device)
    device = resolve_device(cfg.device, env.local_rank)
    amp_dtype = resolve_amp(cfg.amp, device)
    seed_everything(cfg.seed)
    backbones = [] if args.pixels else [load_backbone(state, meta, args.random_init, cfg.seed + index)
                                        for index, (state, meta) in enumerate(weights)]
    if env.is_main and args.pixels:
        print(f"raw pixels of {cfg.data.name}", file=sys.stderr)
    for backbone in backbones:
        meta = backbone.meta
        if env.is_main:
            named = f"{meta.path}: " if len(backbones) > 1 else ""
            print(f"{named}{meta.arch} (random init): {backbone.report.summary()}" if args.random_init
                  else f"{meta.summary()}; {backbone.report.summary()}", file=sys.stderr)
        backbone.module.to(device)
    return EvalContext(cfg, device, amp_dtype, backbones, env.is_main)


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


def backbone_record(args: argparse.Namespace, backbone: LoadedBackbone) -> dict[str, Any]:
    """One backbone's weights: format, architecture (arch_kwargs where it has them) and load count."""
    meta = backbone.meta
    kwargs = {"arch_kwargs": meta.architecture.arch_kwargs} if meta.architecture.arch_kwargs else {}
    return {"format": meta.source, "arch": meta.arch, "small_stem": meta.small_stem, **kwargs,
            "random_init": args.random_init, "loaded_tensors": backbone.report.loaded}


def weights_record(args: argparse.Namespace, ctx: EvalContext) -> dict[str, Any]:
    """What was evaluated: the raw pixels, one backbone's weights, or the concatenation of several (each one's
    record under `members`, in --checkpoint order)."""
    records = [backbone_record(args, backbone) for backbone in ctx.backbones]
    if not records:
        return {"format": "pixels"}
    if len(records) == 1:
        return records[0]
    return {"format": "concatenation", "random_init": args.random_init, "width": ctx.width, "members": records}


def checkpoint_record(args: argparse.Namespace) -> str | list[str] | None:
    """The evaluated file's absolute path, or the list of them for several (None: raw pixels without a file)."""
    paths = [str(Path(path).resolve()) for path in args.checkpoint or []]
    if len(paths) > 1:
        return paths
    return paths[0] if paths else None


def result_entry(evaluator: str, args: argparse.Namespace, ctx: EvalContext, settings: Any,
                 metrics: dict[str, Any]) -> dict[str, Any]:
    """The JSON record of one evaluation: what was measured, on which weights and data, with which settings, and the
    command, commit and machine that measured it."""
    return {
        "evaluator": evaluator,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": checkpoint_record(args),
        "weights": weights_record(args, ctx),
        "data": {"name": ctx.cfg.data.name, "root": ctx.cfg.data.root, "image_size": ctx.cfg.data.image_size},
        "seed": ctx.cfg.seed,
        "settings": dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else settings,
        "metrics": metrics,
        **provenance(ctx.device),
    }


def title_of(evaluator: str, args: argparse.Namespace) -> str:
    """The results table's title: evaluator and what it evaluated."""
    if args.pixels:
        return f"{evaluator} | raw pixels"
    several = f"{len(args.checkpoint)} checkpoints (concatenated): " if len(args.checkpoint) > 1 else ""
    return f"{evaluator} | {several}{', '.join(args.checkpoint)}{' (random init)' if args.random_init else ''}"


def report_result(evaluator: str, args: argparse.Namespace, ctx: EvalContext, settings: Any,
                  metrics: dict[str, Any]) -> None:
    """Print the results table and append the JSON line."""
    print(results_table(title_of(evaluator, args), metrics))
    path = append_result(args.results, result_entry(evaluator, args, ctx, settings, metrics))
    print(f"appended to {path}", file=sys.stderr)


def run_evaluation(evaluator: str, args: argparse.Namespace, evaluate: Callable[[EvalContext], tuple[Any, Any]],
                   report: Callable[[str, argparse.Namespace, EvalContext, Any, Any], None] = report_result) -> int:
    """Prepare, evaluate and report (by default report_result: the table and one JSON line); user errors print one
    line and return 2."""
    try:
        ctx = prepare(args)
        settings, metrics = evaluate(ctx)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if ctx.is_main:
        report(evaluator, args, ctx, settings, metrics)
    return 0
