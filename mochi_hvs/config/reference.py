"""The configuration reference and changelog as Markdown, rendered from the settings' declarations and the migration
tables; `python -m mochi_hvs.config.reference OUT_DIR` writes them (docs/reference/configuration.md and
changelog.md)."""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path
from typing import Any

from .commandline import constraints, every_key, yaml_value
from .migrations import RENAMED, RETIRED, RETIRED_VALUES
from .schema import resume_policy
from .settings import default_of, help_of

COMMAND = "python -m mochi_hvs.config.reference docs/reference"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|")


def _type_name(tp: Any) -> str:
    return str(tp).replace("typing.", "") if typing.get_origin(tp) else tp.__name__


def _section_title(prefix: str, cls: type) -> list[str]:
    """A section's heading, its help and, for one declared elsewhere, the module declaring it."""
    title = f"`{prefix.rstrip('.')}`" if prefix else "Run-level keys"
    lines = [f"## {title}", "", " ".join((cls.__doc__ or "").split("\n\n")[0].split())]
    if not cls.__module__.startswith(__package__):
        lines[-1] += f" Declared in `{cls.__module__.replace('.', '/')}.py`."
    return [*lines, ""]


def configuration_markdown() -> str:
    """Every section and key of a pretraining config (the registered objectives' and methods' included): type,
    default, help, allowed values (choices, bounds) and whether a resumed run may change it."""
    lines = ["# Configuration reference", "",
             "Every key of a recipe, `--set KEY=VALUE` and a checkpoint's stored config, section by section: its type, "
             "default and meaning, the values it allows (a value outside them stops the run before it starts, in one "
             "line naming the key), and whether a resumed run may change it (`apply`: the resumed run takes the new "
             "value; `refuse`: the resume stops, naming the key). `mochi-pretrain --help` lists the same keys.", "",
             f"Generated from the settings' declarations (`mochi_hvs/config/`) by `{COMMAND}`.", ""]
    for keys in every_key():
        fields = keys.fields()
        if not fields:
            continue
        hints = typing.get_type_hints(keys.settings)
        lines += _section_title(keys.prefix, keys.settings)
        lines += ["| key | type | default | meaning | allowed | resume |", "|---|---|---|---|---|---|"]
        for f in fields:
            key = keys.prefix + f.name
            cells = [f"`{key}`", f"`{_type_name(hints[f.name])}`", f"`{yaml_value(default_of(f))}`", help_of(f),
                     constraints(f, hints[f.name]), resume_policy(key)]
            lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def changelog_markdown() -> str:
    """The keys renamed or retired, and the values retired, with their successors (config/migrations.py)."""
    lines = ["# Configuration changelog", "",
             "Keys and values that a recipe or `--set` can no longer use: using one is an error naming its successor. "
             "A checkpoint's stored config is read with renamed keys under their names, retired keys dropped and "
             "retired values replaced, so older runs still resume and evaluate.", "",
             f"Generated from `mochi_hvs/config/migrations.py` by `{COMMAND}`.", "",
             "## Renamed keys", "", "| key | renamed |", "|---|---|"]
    lines += [f"| `{old}` | `{new}` |" for old, new in RENAMED.items()]
    lines += ["", "## Retired keys", "", "| key | why |", "|---|---|"]
    lines += [f"| `{key}` | {_cell(why)} |" for key, why in RETIRED.items()]
    lines += ["", "## Retired values", "", "| key | value | replaced by |", "|---|---|---|"]
    lines += [f"| `{key}` | `{old}` | `{new}` |"
              for key, values in RETIRED_VALUES.items() for old, new in values.items()]
    return "\n".join([*lines, ""])


PAGES = {"configuration.md": configuration_markdown, "changelog.md": changelog_markdown}


def write_reference(out_dir: Path) -> list[Path]:
    """Write the PAGES into out_dir; their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, render in PAGES.items():
        (out_dir / name).write_text(render())
    return [out_dir / name for name in PAGES]


def main(argv: list[str] | None = None) -> int:
    """`python -m mochi_hvs.config.reference OUT_DIR`."""
    parser = argparse.ArgumentParser(prog="python -m mochi_hvs.config.reference", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write configuration.md and changelog.md into "
                                                   "(the docs: docs/reference)")
    for path in write_reference(parser.parse_args(argv).out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
