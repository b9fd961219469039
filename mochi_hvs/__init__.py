"""mochi_hvs: MoCo-v2 pretraining with hard negatives (MoCHi) and hard views (HVS)."""

from .objectives import catalogue  # noqa: F401  (registers the objectives and their config sections before any config)

__version__ = "0.1.0"
