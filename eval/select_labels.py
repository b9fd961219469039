"""Unsupervised selection of the images to label (USL; the `mochi-select` command), then semi-supervised
fine-tuning on them:

    python eval/select_labels.py --checkpoint FILE --budget 40 --out usl_40.txt
    python eval/semisup.py --checkpoint FILE --set eval.semisup.split_file=usl_40.txt

`--help` lists the settings (config keys) with their defaults.
"""

import sys

from mochi_hvs.evaluation.commands import select_main as main

if __name__ == "__main__":
    sys.exit(main())
