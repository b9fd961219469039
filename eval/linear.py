"""Linear probe of a frozen backbone, or of the raw pixels (the `mochi-linear` command):

    python eval/linear.py --checkpoint FILE [--set eval.linear.l2_grid=[0.01,0.001] eval.linear.val_fraction=0.2 ...]
    python eval/linear.py --pixels --set eval.linear.mode=sklearn
    python eval/linear.py --checkpoint A.pth B.pth [...]   # the concatenation of their L2-normalised features

`--help` lists the settings (config keys) with their defaults.
"""

import sys

from mochi_hvs.evaluation.commands import linear_main as main

if __name__ == "__main__":
    sys.exit(main())
