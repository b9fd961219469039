"""Directives that write parts of the documentation from the code, so those parts cannot drift from it.

- `module-map PACKAGE`: every module of the package, imported, with its summary and its public classes and functions:
  the targets of {py:mod}, {py:class} and {py:func} references;
- `config-section KEY`: the keys of one config section (`mochi`, `moco`, `eval.linear`, ...): default, meaning and
  allowed values, from the settings' declarations.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import typing
from types import ModuleType
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles


def package_modules(package: str) -> list[str]:
    """The dotted names of `package` and of every module under it, sorted."""
    root = importlib.import_module(package)
    return sorted([package, *(m.name for m in pkgutil.walk_packages(root.__path__, package + "."))])


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def code(value: str) -> str:
    """`value` as inline code in a Markdown table cell."""
    return f"`{cell(value)}`"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


class GeneratedDirective(SphinxDirective):
    """A directive whose content is Markdown it writes, parsed as part of its page."""

    def parse(self, lines: list[str]) -> list[nodes.Node]:
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, self.get_source_info()[0]), container)
        return container.children


def summary(obj: object) -> str:
    """The first paragraph of an object's docstring, on one line (docstrings here are plain text, not reST)."""
    paragraph = inspect.cleandoc(obj.__doc__ or "").split("\n\n")[0]
    return " ".join(paragraph.split())


def public_objects(module: ModuleType) -> list[tuple[str, str, object]]:
    """(directive, name, object) of the public classes and functions defined in `module`."""
    found = []
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj):
            found.append(("py:class", name, obj))
        elif inspect.isfunction(obj):
            found.append(("py:function", name, obj))
    return sorted(found, key=lambda item: item[1])


class ModuleMap(GeneratedDirective):
    """Every module of the package named in the argument, imported, with its summary and its public classes and
    functions: the targets {py:mod}, {py:class} and {py:func} references resolve to (nitpicky builds fail on any
    other)."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        lines = []
        for name in package_modules(self.arguments[0]):
            module = importlib.import_module(name)
            lines += [f"## `{name}`", "", f"```{{py:module}} {name}", "```", "", summary(module), ""]
            for directive, member, obj in public_objects(module):
                lines += [f"```{{{directive}}} {member}", ":no-index-entry:", "", summary(obj), "```", ""]
        return self.parse(lines)


def section_of(key: str) -> Any:
    """The default instance of the config section at dotted `key` of a fresh Config."""
    from mochi_hvs.config import Config

    node: Any = Config()
    for part in key.split("."):
        node = getattr(node, part)
    if not dataclasses.is_dataclass(node):
        raise ValueError(f"config-section: {key!r} is not a config section")
    return node


class ConfigSection(GeneratedDirective):
    """A table of one config section's keys: default (as --set writes it), the meaning and the values its fields
    declare (mochi_hvs/config: the same text as --help and the configuration reference)."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        from mochi_hvs.config.commandline import Keys, constraints, yaml_value
        from mochi_hvs.config.settings import default_of, help_of

        key = self.arguments[0]
        settings = type(section_of(key))
        hints = typing.get_type_hints(settings)
        rows = [[code(f"{key}.{f.name}"), code(yaml_value(default_of(f))), cell(help_of(f)),
                 cell(constraints(f, hints[f.name]))] for f in Keys(key + ".", settings).fields()]
        return self.parse(markdown_table(["key", "default", "meaning", "allowed"], rows))


def setup(app: Sphinx) -> dict[str, object]:
    app.add_directive("module-map", ModuleMap)
    app.add_directive("config-section", ConfigSection)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
