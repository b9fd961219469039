"""mochi_hvs: MoCo-v2 pretraining with hard negatives (MoCHi) and hard views (HVS)."""

from . import methods  # noqa: F401  (registers the training methods and their config sections before any config)
from .objectives import catalogue  # noqa: F401  (registers the objectives and their config sections before any config)

__version__ = "0.1.0"
