"""Detection transfer with torchvision's Faster R-CNN (ResNet-FPN from the checkpoint), COCO AP/AP50/AP75 (the
`mochi-detect` command):

    python eval/detection.py --checkpoint FILE --set eval.detection.train=[ROOT:SPLIT,...] eval.detection.val=ROOT:SPLIT

`--help` lists the settings (config keys) with their defaults.
"""

import sys

from mochi_hvs.evaluation.commands import detection_main as main

if __name__ == "__main__":
    sys.exit(main())
