"""The transfer suite of a backbone, or of the raw pixels (the `mochi-transfer` command): kNN, linear probe with
calibration, and few-shot episodes on every task, one Markdown table:

    python eval/transfer.py --checkpoint FILE [--tasks fashion_mnist sklearn_digits cifar10=/data/cifar ...]
                            [--table transfer.md] [--random-init] [--set eval.transfer.episodes=1000 ...]
    python eval/transfer.py --pixels [--config F] [--tasks ...]
    python eval/transfer.py --checkpoint A.pth B.pth C.pth [--tasks ...]   # their features, concatenated

`--help` lists the settings (config keys) with their defaults.
"""

import sys

from mochi_hvs.evaluation.commands import transfer_main as main

if __name__ == "__main__":
    sys.exit(main())
