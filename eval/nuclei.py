"""Nuclei instance segmentation with a small decoder on a frozen or fine-tuned backbone, Dice and AJI (the
`mochi-nuclei` command):

    python eval/nuclei.py --checkpoint FILE --set eval.nuclei.train=ROOT/train eval.nuclei.test=ROOT/test

Each set is a folder with images/ and masks/ (instance maps, same file stems). `--help` lists the settings (config
keys) with their defaults.
"""

import sys

from mochi_hvs.evaluation.commands import nuclei_main as main

if __name__ == "__main__":
    sys.exit(main())
