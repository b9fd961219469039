"""Importing this module registers every objective shipped with mochi_hvs (mochi_hvs/__init__.py does, first)."""

from . import burn, byol, contrastive, distill, dspnet, msbreg, relicv2, supervised, twist  # noqa: F401
