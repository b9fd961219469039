"""Transferability estimates of a backbone from a source task to every target task (the `mochi-transferability`
command): PGE distance and LogME per target, and with --measured their rank correlation with the transfer that
`mochi-transfer` measured:

    python eval/transferability.py --checkpoint FILE [--source fashion_mnist] [--tasks mnist5k sklearn_digits ...]
                                   [--measured transfer_results.jsonl] [--set eval.transferability.batches=8 ...]

`--help` lists the settings (config keys) with their defaults.
"""

import sys

from mochi_hvs.evaluation.commands import transferability_main as main

if __name__ == "__main__":
    sys.exit(main())
