"""`python -m mochi_hvs.pretrain --config FILE [--set key=value ...] [--resume auto|PATH]`."""

from __future__ import annotations

import argparse
import sys

from .checkpoint import CheckpointError, resolve_resume
from .config import ConfigError, add_config_arguments, load_config
from .data.datasets import DatasetError
from .engine import Interrupted, Trainer, TrainingDiverged
from .runtime import DeviceError

USER_ERRORS = (ConfigError, DatasetError, CheckpointError, DeviceError, TrainingDiverged)


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of the pretraining entry point."""
    parser = argparse.ArgumentParser(prog="mochi-pretrain",
                                     description="Contrastive pretraining (MoCo-v2, MoCHi, HVS).")
    add_config_arguments(parser, "YAML recipe (defaults apply where it is silent)")
    parser.add_argument("--resume", metavar="auto|PATH",
                        help="continue from the run's last checkpoint (auto) or from a checkpoint file")
    return parser


def report(summary: dict) -> str:
    """The end-of-run table: kNN of the trained backbone next to the random-init one."""
    lines = [
        f"trained for {summary['steps']} steps in {summary['train_seconds']:.0f} s",
        f"{'backbone':<16}{'kNN top-1 (k=' + str(summary['knn_k']) + ')':>22}",
        f"{'MoCo-pretrained':<16}{summary['knn_top1']:>21.2f}%",
    ]
    if "random_init_knn_top1" in summary:
        lines.append(f"{'random init':<16}{summary['random_init_knn_top1']:>21.2f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run pretraining; user errors print one clear line and exit with status 2."""
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
        trainer = Trainer(cfg, resolve_resume(args.resume, cfg.run_dir))
        summary = trainer.fit()
    except Interrupted as stop:
        print(f"\ninterrupted: {stop}", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if trainer.env.is_main:
        print(report(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
