"""The supervised reference: the same backbone, views, optimiser and number of steps as a pretraining recipe, trained
with labels (cross-entropy of a linear classifier on the backbone's features), so that every self-supervised figure
can be read between its floor (raw pixels, random initialisation) and this ceiling at equal budget.

    python -m mochi_hvs.supervised --config configs/moco_v2.yaml        # = pretrain with objective=supervised

The run is an ordinary pretraining run (`objective: supervised`): checkpoints, resume, logs, the kNN monitor and
every evaluator work on it as on a MoCo run (its backbone is stored where a MoCo checkpoint keeps the query's). This
module is the command line only; the objective and its step are objectives/supervised.py.
"""

from __future__ import annotations

import sys

from . import pretrain
from .config import load_config
from .errors import UserError


def main(argv: list[str] | None = None) -> int:
    """`python -m mochi_hvs.supervised`: pretraining's command line with objective=supervised, the run named
    <recipe's name>_supervised unless --set name=... says otherwise."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = pretrain.build_parser().parse_args(argv)
    extra = ["objective=supervised"]
    if not any(text.startswith("name=") for text in args.set):
        try:
            extra.append(f"name={load_config(args.config, args.set).name}_supervised")
        except UserError:
            pass  # pretraining reports it in its own words
    return pretrain.main([*argv, "--set", *extra])


if __name__ == "__main__":
    sys.exit(main())
