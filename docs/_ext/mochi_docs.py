"""Directives that write parts of the documentation from the code, so those parts cannot drift from it.

- `module-map PACKAGE`: every module of the package with its docstring (autodoc): the targets of {py:mod} links;
- `config-section KEY`: the keys of one config section (`mochi`, `moco`, `eval.linear`, ...), default and meaning;
- `config-changes`: the renamed and retired configuration keys and values, from config.py's migration tables, with
  what the config loader answers to each in a recipe and does with each in a checkpoint's stored config.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
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
    """A table of one config section's keys: default (as --set writes it) and the meaning its field declares."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        from mochi_hvs.evaluation.cli import yaml_value

        key = self.arguments[0]
        section = section_of(key)
        rows = []
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if dataclasses.is_dataclass(value):
                continue  # a nested section has its own table
            meaning = f.metadata.get("help", "")
            if "choices" in f.metadata:
                meaning += " (one of: " + ", ".join(f.metadata["choices"]) + ")"
            rows.append([code(f"{key}.{f.name}"), code(yaml_value(value)), cell(meaning)])
        return self.parse(markdown_table(["key", "default", "meaning"], rows))


def loader_answer(override: str) -> str:
    """The one-line error the config loader gives for `--set override`."""
    from mochi_hvs.config import ConfigError, load_config

    try:
        load_config(None, [override])
    except ConfigError as error:
        return f"error: {error}"
    raise ValueError(f"config-changes: --set {override} was accepted; the migration table says it is gone")


def stored_answer(key: str, value: Any) -> str:
    """What reading a checkpoint's stored config makes of `key: value`."""
    from mochi_hvs.config import upgrade_stored

    *parents, name = key.split(".")
    stored: dict[str, Any] = {name: value}
    for part in reversed(parents):
        stored = {part: stored}
    upgraded = upgrade_stored(stored)
    for part in parents:
        upgraded = upgraded.get(part, {})
    if name in upgraded:
        return f"read as `{key}: {upgraded[name]}`"
    moved = [f"`{'.'.join(parents + [k])}`" for k in upgraded]
    return "read as " + ", ".join(moved) if moved else "dropped"


class ConfigChanges(GeneratedDirective):
    """The migration tables of mochi_hvs.config (RENAMED, RETIRED, RETIRED_VALUES) as three tables."""

    def run(self) -> list[nodes.Node]:
        from mochi_hvs.config import RENAMED, RETIRED, RETIRED_VALUES

        renamed = [[code(old), code(new), code(loader_answer(f"{old}=1")), stored_answer(old, 1)]
                   for old, new in RENAMED.items()]
        retired = [[code(key), cell(why), code(loader_answer(f"{key}=1")), stored_answer(key, 1)]
                   for key, why in RETIRED.items()]
        values = [[code(key), code(str(old)), code(str(new)), code(loader_answer(f"{key}={old}")),
                   stored_answer(key, old)]
                  for key, changes in RETIRED_VALUES.items() for old, new in changes.items()]
        lines = ["**Renamed keys**", "",
                 *markdown_table(["key", "its name", "in a recipe or `--set`", "in a checkpoint's stored config"],
                                 renamed),
                 "", "**Retired keys**", "",
                 *markdown_table(["key", "why", "in a recipe or `--set`", "in a checkpoint's stored config"], retired),
                 "", "**Retired values**", "",
                 *markdown_table(["key", "value", "replaced by", "in a recipe or `--set`",
                                  "in a checkpoint's stored config"], values)]
        return self.parse(lines)


def setup(app: Sphinx) -> dict[str, object]:
    app.add_directive("module-map", ModuleMap)
    app.add_directive("config-section", ConfigSection)
    app.add_directive("config-changes", ConfigChanges)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
