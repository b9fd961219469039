"""`python -m mochi_hvs.export` (the `mochi-export` command): the command line of weights/export.py."""

import sys

from .weights.export import main

if __name__ == "__main__":
    sys.exit(main())
