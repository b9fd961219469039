"""The config on the command line: the `--config FILE` and `--set KEY=VALUE ...` options every entry point shares,
and the listing of the keys a command reads (its --help), each with its default, help, choices and bounds."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import textwrap
import typing
from dataclasses import dataclass
from typing import Any

import yaml

from .schema import section_types
from .settings import default_of, help_of, nullable


@dataclass(frozen=True)
class Keys:
    """Config keys a command reads: the settings `names` (all when None) of the section `settings` under `prefix`."""

    prefix: str
    settings: type
    names: tuple[str, ...] | None = None

    def fields(self) -> list[dataclasses.Field]:
        """The section's settings (not the sections it holds): its own in declaration order, then those it
        inherits."""
        own = inspect.get_annotations(self.settings)
        chosen = [f for f in dataclasses.fields(self.settings)
                  if "section" not in f.metadata and (self.names is None or f.name in self.names)]
        return sorted(chosen, key=lambda f: f.name not in own)


def every_key() -> list[Keys]:
    """Every key of a pretraining config, section by section (the run-level keys first)."""
    return [Keys(prefix, cls) for prefix, cls in section_types()]


def yaml_value(value: Any) -> str:
    """A value as it is written after --set KEY= (null, true, [0.75,0.92], ''): YAML, lists without spaces."""
    if isinstance(value, list):
        return "[" + ",".join(yaml_value(item) for item in value) + "]"
    return yaml.safe_dump(value, width=10**6).removesuffix("...\n").strip()


def constraints(f: dataclasses.Field, tp: Any) -> str:
    """What a setting's value may be, as --help and the reference add it to its help: `one of: a, b` and
    `must be ...` (empty when it declares neither)."""
    parts = []
    if "choices" in f.metadata:
        parts.append(f"one of: {', '.join(f.metadata['choices'])}")
    if "bounds" in f.metadata:
        parts.append(f"must be {f.metadata['bounds'].describe(nullable(tp))}")
    return "; ".join(parts)


def settings_help(keys: list[Keys], intro: str) -> str:
    """The --help text listing every key of `keys` with its default, its help and what it may be, after `intro`."""
    lines = [textwrap.fill(intro, width=100)]
    for group in keys:
        hints = typing.get_type_hints(group.settings)
        for f in group.fields():
            text = help_of(f)
            if allowed := constraints(f, hints[f.name]):
                text += f" ({allowed})"
            lines.append(f"  {group.prefix}{f.name}={yaml_value(default_of(f))}")
            lines.append(textwrap.fill(text, width=100, initial_indent=" " * 6, subsequent_indent=" " * 6,
                                       break_on_hyphens=False))
    return "\n".join(lines)


def recipe_intro(example: str) -> str:
    """The intro of a command's settings that reads a --config recipe and --set overrides; `example`: a recipe
    snippet setting one."""
    return ("settings: config keys with their defaults; change them with --set KEY=VALUE ... or in the --config recipe "
            f"(e.g. `{example}`):")


def add_config_arguments(parser: argparse.ArgumentParser, config_help: str,
                         example: str = "optim.lr=0.06 data.root=/data device=cpu") -> None:
    """The `--config FILE` and `--set key=value ...` options shared by the command-line entry points; `example`
    shows overrides that command reads."""
    parser.add_argument("--config", help=config_help)
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help=f"override config values, e.g. --set {example}")
