"""mochi_hvs: MoCo-v2 pretraining with hard negatives (MoCHi) and hard views (HVS)."""

__version__ = "0.1.0"
