"""Weighted kNN top-1/top-5 of a backbone, or of the raw pixels (the `mochi-knn` command):

    python eval/knn.py --checkpoint FILE [--config F] [--set eval.knn_k=[20,200] eval.knn_train_subset=10000 ...]
    python eval/knn.py --pixels [--config F] [--set data.name=cifar10 ...]
    python eval/knn.py --checkpoint A.pth B.pth [...]   # the concatenation of their L2-normalised features

`--help` lists the settings (config keys) with their defaults.
"""

import sys

from mochi_hvs.evaluation.commands import knn_main as main

if __name__ == "__main__":
    sys.exit(main())
