"""Training methods on the MoCo step's seam (base.py): each one module registered under its config section.

Importing this package registers every method shipped with mochi_hvs, in this order (the order the step calls
their hooks in).
"""

from . import mochi, hvs, fast_moco, multicrop, lc  # noqa: F401, I001  (registration order: negatives before view selection)
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
