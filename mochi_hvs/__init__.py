"""mochi_hvs: MoCo-v2 pretraining with hard negatives (MoCHi) and hard views (HVS)."""

from .startup import guard_command_start

guard_command_start()  # before the imports below load torch: a command stops cleanly from its first second

from . import methods  # noqa: E402, F401  (registers the training methods and their config sections before any config)
from .objectives import catalogue  # noqa: E402, F401  (registers the objectives and their config sections before any config)

__version__ = "0.1.0"
