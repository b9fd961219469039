"""Training methods on the MoCo step's seam (base.py): each one module, with its config section, registered under
that section's key.

Importing this package registers every method shipped with mochi_hvs and its config section (`mochi_hvs/__init__.py`
does, before any config is read). The step calls their hooks in the order each declares (Method.order), not in the
order of these imports.
"""

from . import fast_moco, hvs, lc, mochi, multicrop, ssql  # noqa: F401  (registers them)
from .base import (
    METHODS,
    ExtraLoss,
    ExtraNegatives,
    ExtraQueries,
    Method,
    StepContext,
    ViewChoice,
    build_methods,
    pick_view,
    register,
)

__all__ = ["METHODS", "ExtraLoss", "ExtraNegatives", "ExtraQueries", "Method", "StepContext", "ViewChoice",
           "build_methods", "pick_view", "register"]
