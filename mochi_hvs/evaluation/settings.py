"""Evaluator settings dataclasses as command-line options: each field defined once, with its help."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any


def setting(default: Any, help: str) -> Any:
    """A settings-dataclass field with its command-line help (lists get a default factory)."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def _plain_type(tp: Any) -> Any:
    """`X | None` -> X."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next(t for t in typing.get_args(tp) if t is not type(None))
    return tp


def add_settings_arguments(parser: argparse.ArgumentParser, settings_cls: type,
                           choices: dict[str, tuple[str, ...]] | None = None) -> None:
    """One `--field-name` option per field of a settings dataclass, typed and defaulted from it."""
    hints = typing.get_type_hints(settings_cls)
    group = parser.add_argument_group(f"{settings_cls.__name__} options")
    for f in dataclasses.fields(settings_cls):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        tp = _plain_type(hints[f.name])
        option: dict[str, Any] = {"default": default, "help": f"{f.metadata.get('help', '')} (default: {default})"}
        if tp is bool:
            option["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is list:
            option.update(nargs="+", type=typing.get_args(tp)[0])
        else:
            option.update(type=tp, choices=(choices or {}).get(f.name))
        group.add_argument("--" + f.name.replace("_", "-"), **option)


def settings_from_args(settings_cls: type, args: argparse.Namespace) -> Any:
    """The settings dataclass filled from parsed options."""
    return settings_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(settings_cls)})
