"""Semi-supervised fine-tuning on a labelled subset, top-1/top-5 on the full test split (the `mochi-semisup`
command):

    python eval/semisup.py --checkpoint FILE --set eval.semisup.label_fraction=0.01
    (or eval.semisup.labels_per_class=K, eval.semisup.split_file=FILE, e.g. from eval/select_labels.py, or
    eval.semisup.random_labels=N)

`--help` lists the settings (config keys) with their defaults.
"""

import sys

from mochi_hvs.evaluation.commands import semisup_main as main

if __name__ == "__main__":
    sys.exit(main())
