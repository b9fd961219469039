"""How a setting is declared: `setting(default, help, choices, bounds=..., resume=...)` on its dataclass field, the
one place its help (`--help`, the configuration reference), its allowed values (config validation) and its resume
policy (what a resumed run may change) are read from."""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

APPLY, REFUSE = "apply", "refuse"  # a resumed run takes the setting's new value, or refuses to continue

_NUMBER = r"-?\d+(?:\.\d+)?(?:\*\*\d+)?"  # 0, 0.5, -1, 2**63
_COMPARISON = re.compile(rf"^(>=|>|<=|<) ({_NUMBER})$")
_INTERVAL = re.compile(rf"^([\[(])({_NUMBER}), ({_NUMBER})([\])])$")
_NOTE = re.compile(r"^(.*?)(?: \((.*)\))?$")


def _number(text: str) -> float:
    base, _, power = text.partition("**")
    return float(base) ** int(power) if power else float(base)


@dataclass(frozen=True)
class Bounds:
    """The range of a numeric setting (each item's, for a list), written as its error message reads it: `positive`,
    a comparison (`>= 0`, `> -1`) or an interval (`[0, 1)`, `(0, 1]`), optionally followed by a note in parentheses
    (`[0, 1) (SGD momentum)`)."""

    text: str  # the range as written, without its note
    note: str
    low: float
    high: float
    low_closed: bool
    high_closed: bool

    @classmethod
    def parse(cls, spec: str) -> Bounds:
        """The Bounds a spec such as `positive`, `>= 0` or `[0, 2**63) (a seed)` declares."""
        text, note = typing.cast(re.Match[str], _NOTE.match(spec)).groups()
        if text == "positive":
            return cls(text, note or "", 0.0, math.inf, False, False)
        if comparison := _COMPARISON.match(text):
            op, value = comparison.group(1), _number(comparison.group(2))
            if op.startswith(">"):
                return cls(text, note or "", value, math.inf, op == ">=", False)
            return cls(text, note or "", -math.inf, value, False, op == "<=")
        if interval := _INTERVAL.match(text):
            opening, low, high, closing = interval.groups()
            return cls(text, note or "", _number(low), _number(high), opening == "[", closing == "]")
        raise ValueError(f"bounds {spec!r}: expected positive, a comparison (>= 0) or an interval ([0, 1))")

    def holds(self, value: Any) -> bool:
        """Whether a value (every item of a list) lies in the range; None (null) always does."""
        if isinstance(value, list):
            return all(self.holds(item) for item in value)
        if value is None:
            return True
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return above and below

    def describe(self, nullable: bool = False) -> str:
        """The range as a message reads it after "must be": `null or in [0, 1) (SGD momentum)`."""
        interval = "in " if self.text[0] in "[(" else ""
        note = f" ({self.note})" if self.note else ""
        return f"{'null or ' if nullable else ''}{interval}{self.text}{note}"


def setting(default: Any, help: str, choices: tuple[str, ...] | None = None, *, bounds: str | None = None,
            resume: str | None = None) -> Any:
    """A config field with its help text, and where it has them its choices, its bounds (see Bounds) and its resume
    policy (APPLY or REFUSE; None: that of the section it is in), as metadata; lists and mappings get a default
    factory."""
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = choices
    if bounds is not None:
        metadata["bounds"] = Bounds.parse(bounds)
    if resume is not None:
        metadata["resume"] = resume
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def section(cls: type, *, resume: str | None = None) -> Any:
    """A field holding a config section (a dataclass of settings, its docstring its help), at its defaults; `resume`:
    the policy of its settings that declare none."""
    return dataclasses.field(default_factory=cls, metadata={"section": cls} | ({"resume": resume} if resume else {}))


def help_of(f: dataclasses.Field) -> str:
    """A setting's help text (a section's: the first paragraph of its docstring), one line."""
    if "section" in f.metadata:
        return " ".join((f.metadata["section"].__doc__ or "").split("\n\n")[0].split())
    return f.metadata.get("help", "")


def default_of(f: dataclasses.Field) -> Any:
    """A field's default value."""
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def nullable(tp: Any) -> bool:
    """Whether a type annotation admits None (null)."""
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def check(condition: bool, source: str, key: str, message: str) -> None:
    """A ConfigError "<source>: '<key>' <message>" unless `condition` holds: the one-line error of every rule."""
    if not condition:
        raise ConfigError(f"{source}: '{key}' {message}")
