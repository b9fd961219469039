"""`python -m mochi_hvs.pretrain --config FILE [--set key=value ...] [--resume auto|PATH] [--no-verify]`."""

from __future__ import annotations

import argparse
import json
import sys

from .config import (
    Config,
    add_config_arguments,
    every_key,
    load_config,
    recipe_intro,
    settings_help,
    stage_configs,
)
from .distributed import world
from .errors import exit_status
from .objectives.registry import declared
from .run_files import SUMMARY
from .train import Trainer
from .weights.checkpoint import resolve_resume
from .weights.errors import CheckpointError


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of the pretraining entry point."""
    parser = argparse.ArgumentParser(prog="mochi-pretrain",
                                     description="Contrastive pretraining (MoCo-v2, MoCHi, HVS).",
                                     epilog=settings_help(every_key(), recipe_intro("optim: {lr: 0.03}")),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, "YAML recipe (defaults apply where it is silent)")
    parser.add_argument("--resume", metavar="auto|PATH",
                        help="continue from the run's last checkpoint (auto) or from a checkpoint file")
    parser.add_argument("--no-verify", action="store_true",
                        help="load the resumed checkpoint and model.init_from even when they fail their SHA-256 "
                             "digest, or are ours and have none (written before digests existed); files from "
                             "elsewhere without a digest load anyway, with a note")
    return parser


def report(summary: dict, title: str = "") -> str:
    """The end-of-run table: kNN of the trained backbone next to the same evaluation of its starting point and of
    the raw pixels (where the data set has labels)."""
    trained = declared(summary.get("objective", "contrastive")).label
    start = "random init" if summary.get("init_from") is None else "start (init_from)"
    lines = [f"{title}trained for {summary['steps']} steps in {summary['train_seconds']:.0f} s"]
    if "knn_top1" in summary:  # unlabelled sets (tiles, slides) have no kNN
        rows = [(trained, summary["knn_top1"]), (start, summary.get("init_knn_top1")),
                ("raw pixels", summary.get("pixels_knn_top1"))]
        lines.append(f"{'features':<18}{'kNN top-1 (k=' + str(summary['knn_k']) + ')':>22}")
        lines += [f"{name:<18}{value:>21.2f}%" for name, value in rows if value is not None]
    collapse = summary.get("collapse")
    if collapse and collapse["collapsed"]:
        lines.append(f"warning: the representation ended collapsed (since step {collapse['since_step']}; "
                     f"embedding rank {collapse['rank']:.2f})")
    return "\n".join(lines)


def run(cfg: Config, resume: str | None, verify: bool = True) -> list[tuple[str, dict]]:
    """Train the run, or each of its stages in order; returns (stage name, summary) pairs. `verify` checks the
    digests of the files loaded (the resumed checkpoint, model.init_from).

    With --resume auto a staged run skips the stages that finished (their summary.json exists) and
    continues the interrupted one where its checkpoint left it.
    """
    stages = stage_configs(cfg)
    if stages and resume not in (None, "auto"):
        raise CheckpointError("a staged run resumes with --resume auto (each stage keeps its own checkpoint)")
    results = []
    for stage in stages or [cfg]:
        finished = stage.run_dir / SUMMARY
        if stages and resume == "auto" and finished.is_file():
            results.append((stage.name, json.loads(finished.read_text())))
            continue
        results.append((stage.name, Trainer(stage, resolve_resume(resume, stage.run_dir), verify=verify).fit()))
    return results


def main(argv: list[str] | None = None) -> int:
    """Run pretraining; user errors print one clear line and exit with status 2."""
    args = build_parser().parse_args(argv)

    def train_and_report() -> None:
        cfg = load_config(args.config, args.set)
        results = run(cfg, args.resume, verify=not args.no_verify)
        if world()[0] == 0:
            print("\n\n".join(report(summary, f"[{name}] " if cfg.stages else "") for name, summary in results))

    return exit_status(train_and_report, "")

if __name__ == "__main__":
    sys.exit(main())
