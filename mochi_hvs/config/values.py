"""Values written onto the config's dataclasses, strictly: each checked against its field's type (numbers in any
notation where a float is expected), unknown keys refused with the closest known one, renamed and retired keys with
their successor; recipes read as strict YAML, after the recipe they name as `base`."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..strict_yaml import DuplicateKeyError, load_yaml
from .migrations import RENAMED, RETIRED
from .schema import Config, registered_sections


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check `value` against the annotation `tp`; numbers in any notation are accepted where float is expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [option for option in typing.get_args(tp) if option is not type(None)]
        if value is None and len(options) < len(typing.get_args(tp)):
            return None
        if len(options) == 1:
            return _coerce(value, options[0], key, source)
        for option in options:
            try:
                return _coerce(value, option, key, source)
            except ConfigError:
                continue
        raise ConfigError(f"{source}: '{key}' must be {_type_name(tp)}, got {value!r}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {value!r}")
        return value
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        return [_coerce(v, item_type, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if tp is float:
        return _finite_float(value, key, source)
    if (tp is int and isinstance(value, bool)) or not isinstance(value, tp):
        raise ConfigError(f"{source}: '{key}' must be {_type_name(tp)}, got {value!r}")
    return value


def _finite_float(value: Any, key: str, source: str) -> float:
    """An int, float or numeric text as a finite float (YAML 1.1 reads `1e-4` and `1e6` as text); never a bool."""
    number = None
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except ValueError:
            number = None
        except OverflowError:  # an int beyond float range
            number = math.inf
    if number is None:
        raise ConfigError(f"{source}: '{key}' must be float, got {value!r}")
    if not math.isfinite(number):
        raise ConfigError(f"{source}: '{key}' must be a finite number, got {value!r}")
    return number


def apply_values(obj: Any, values: dict[str, Any], prefix: str, source: str) -> None:
    """Write a nested mapping onto a dataclass instance, strictly."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or '<top>'}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    if isinstance(obj, Config):
        names += list(registered_sections())
    for name, value in values.items():
        key = prefix + str(name)
        if name not in names:
            if key in RENAMED:
                raise ConfigError(f"{source}: '{key}' was renamed '{RENAMED[key]}'")
            if key in RETIRED:
                raise ConfigError(f"{source}: '{key}' no longer exists: {RETIRED[key]}")
            close = difflib.get_close_matches(str(name), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"{source}: unknown key '{key}'{hint}")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            apply_values(current, value, key + ".", source)
        else:
            setattr(obj, name, _coerce(value, hints[name], key, source))


def read_yaml(path: Path) -> dict[str, Any]:
    """A recipe's top-level mapping, read as strict YAML (a key given twice is an error)."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = load_yaml(path.read_text()) or {}
    except DuplicateKeyError as err:
        raise ConfigError(f"{path}: {err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config keys")
    return values


def apply_file(cfg: Config, path: Path, chain: tuple[Path, ...] = ()) -> None:
    """Apply a recipe onto cfg, after the recipe it names as `base:` (a path relative to it), recursively."""
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"{path}: 'base' chain loops back to itself ({' -> '.join(str(p) for p in chain)})")
    values = read_yaml(path)
    base = values.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: 'base' must be the path of another recipe, got {base!r}")
        apply_file(cfg, path.parent / base, (*chain, path))
    for stage in values.get("stages") or []:
        if isinstance(stage, dict) and isinstance(stage.get("base"), str):
            stage["base"] = str((path.parent / stage["base"]).resolve())  # a stage's recipe, relative to this file
    apply_values(cfg, values, "", str(path))
