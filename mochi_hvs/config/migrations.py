"""Settings renamed or retired since checkpoints were first written. A checkpoint's stored config is upgraded
(upgrade_stored), so older runs still resume and evaluate; a recipe or --set using an old name is told the new one
(values.py), and a retired value its successor (validation.py). The configuration changelog is rendered from these
tables (reference.py)."""

from __future__ import annotations

import copy
from typing import Any

RENAMED = {"eval.knn_random_baseline": "eval.knn_baseline"}
RETIRED = {"data.num_views": "the views per image follow from the enabled methods (hvs.num_views with HVS)",
           "eval.linear.standardize": "the linear probe on cached features (eval.linear.mode=lbfgs) always "
                                      "standardises them"}
# Values retired the same way: key -> {old value: new value}.
RETIRED_VALUES = {"eval.linear.mode": {"cached": "lbfgs"}}


def _parent(values: dict[str, Any], key: str) -> tuple[dict[str, Any] | None, str]:
    """The mapping that holds dotted `key` in nested `values` (None when a level is missing), and the last name."""
    *parents, name = key.split(".")
    node: Any = values
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), name


def upgrade_stored(values: dict[str, Any]) -> dict[str, Any]:
    """A stored config (checkpoint) with renamed settings under their new names and retired ones dropped."""
    values = copy.deepcopy(values)
    for old, new in RENAMED.items():
        node, name = _parent(values, old)
        if node is not None and name in node:
            node.setdefault(new.split(".")[-1], node.pop(name))
    for old in RETIRED:
        node, name = _parent(values, old)
        if node is not None:
            node.pop(name, None)
    for key, renamed in RETIRED_VALUES.items():
        node, name = _parent(values, key)
        if node is not None and node.get(name) in renamed:
            node[name] = renamed[node[name]]
    return values
