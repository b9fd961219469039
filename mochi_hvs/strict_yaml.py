"""YAML reading that refuses a key given twice in one mapping (PyYAML keeps the last value silently)."""

from __future__ import annotations

from typing import Any

import yaml

MERGE_TAG = "tag:yaml.org,2002:merge"  # `<<: *anchor` may be overridden by later keys: not a duplicate


class DuplicateKeyError(yaml.YAMLError):
    """A key repeated within one mapping; the message names its dotted path and both lines."""


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that checks every mapping of a document for repeated keys before constructing it.

    The check runs on the node tree as written: merge keys (`<<`) flatten mappings in place during
    construction, after which a legitimately overridden merged key would look repeated.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        self._check_unique_keys(node, "", set())
        return super().construct_document(node)

    def _check_unique_keys(self, node: yaml.Node, path: str, visited: set[int]) -> None:
        """Raise DuplicateKeyError for the first key repeated in a mapping at or under `node` (at `path`)."""
        if id(node) in visited:  # an alias of a node already checked
            return
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._check_unique_keys(item, f"{path}[{index}]", visited)
        elif isinstance(node, yaml.MappingNode):
            first_lines: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == MERGE_TAG:
                    self._check_unique_keys(value_node, path, visited)
                    continue
                key = self.construct_object(key_node, deep=True)
                child = f"{path}.{key}" if path else str(key)
                line = key_node.start_mark.line + 1
                try:
                    first = first_lines.get(key)
                except TypeError:  # an unhashable key: construction reports it
                    continue
                if first is not None:
                    raise DuplicateKeyError(f"'{child}' is given twice (line {line}; first on line {first})")
                first_lines[key] = line
                self._check_unique_keys(value_node, child, visited)


def load_yaml(text: str) -> Any:
    """Parse YAML (safe types only); raises DuplicateKeyError for a key repeated in one mapping."""
    return yaml.load(text, Loader=UniqueKeyLoader)
