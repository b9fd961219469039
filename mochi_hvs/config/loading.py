"""Loading a config: the defaults, then stored values (a checkpoint's), a YAML recipe and its `base` chain, and
`--set key=value` overrides, validated once at the end against every source that gave values."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..strict_yaml import DuplicateKeyError, load_yaml
from .migrations import upgrade_stored
from .schema import Config
from .validation import validate
from .values import apply_file, apply_values


def parse_override(text: str) -> tuple[str, Any]:
    """Split `a.b=value` into the dotted key and the YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"--set: expected key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        return key, load_yaml(raw) if raw.strip() else None
    except DuplicateKeyError as err:
        raise ConfigError(f"--set: in the value of '{key}', {err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"--set: the value of '{key}' is not valid YAML: {raw!r}") from err


def _expects_text(cfg: Config, key: str) -> bool:
    """True when the dotted key names a str (or optional str) field."""
    node: Any = cfg
    *parents, name = key.split(".")
    for part in parents:
        node = getattr(node, part, None)
        if not dataclasses.is_dataclass(node):
            return False
    tp = typing.get_type_hints(type(node)).get(name)
    return tp is str or (typing.get_origin(tp) in (typing.Union, types.UnionType) and str in typing.get_args(tp))


def _nest(key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                defaults: dict[str, Any] | None = None) -> Config:
    """Build a Config from a YAML recipe (and its `base:` chain) and `key=value` overrides, then validate it.

    defaults: values applied first, before the recipe (e.g. settings stored in a checkpoint).
    """
    cfg = Config()
    if defaults is not None:
        apply_values(cfg, upgrade_stored(defaults), "", "<checkpoint config>")
    if path is not None:
        path = Path(path)
        apply_file(cfg, path)
    for text in overrides or []:
        key, value = parse_override(text)
        if value is not None and not isinstance(value, str) and _expects_text(cfg, key):
            value = text.split("=", 1)[1].strip()  # name=off or name=2024 stay text, not YAML's bool / int
        apply_values(cfg, _nest(key, value), "", "--set")
    sources = [name for name, given in (("<checkpoint config>", defaults), (str(path), path), ("--set", overrides))
               if given]
    validate(cfg, " + ".join(sources) or "<defaults>")
    return cfg
