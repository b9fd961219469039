"""The configuration reference and changelog of the docs (docs/reference/) are renderings of the settings'
declarations and of the migration tables, committed: a setting added or changed without rendering them again fails
here, naming the command that does."""

from pathlib import Path

import pytest

from mochi_hvs.config import RENAMED, RETIRED, RETIRED_VALUES, load_config
from mochi_hvs.config.reference import COMMAND, PAGES, changelog_markdown, configuration_markdown, main
from mochi_hvs.config.schema import resume_policy, section_types, settings_of

DOCS = Path(__file__).resolve().parents[1] / "docs" / "reference"


@pytest.mark.parametrize("name", PAGES)
def test_the_committed_reference_is_a_fresh_rendering(name):
    committed = (DOCS / name).read_text() if (DOCS / name).is_file() else ""
    assert committed == PAGES[name](), f"docs/reference/{name} is out of date: run `{COMMAND}`"


def test_the_reference_has_a_row_for_every_key_with_its_resume_policy():
    text = configuration_markdown()
    rows = {line.split(" | ")[0].removeprefix("| `").removesuffix("`"): line for line in text.splitlines()
            if line.startswith("| `")}
    keys = [prefix + f.name for prefix, cls in section_types() for f in settings_of(cls)]
    assert sorted(rows) == sorted(keys) and len(rows) == len(keys)
    assert all(rows[key].endswith(f" | {resume_policy(key)} |") for key in keys)
    assert rows["optim.momentum"] == ("| `optim.momentum` | `float` | `0.9` | SGD's momentum | must be in [0, 1) (SGD "
                                      "momentum) | apply |")
    assert "| `model.arch` | `str` | `resnet18` | the backbone: resnet18 \\| resnet34" in rows["model.arch"]
    assert "## `eval.linear`" in text and "Declared in `mochi_hvs/methods/hvs.py`." in text


def test_the_changelog_names_every_renamed_and_retired_key_and_value_with_its_successor():
    text = changelog_markdown()
    for old, new in RENAMED.items():
        assert f"| `{old}` | `{new}` |" in text
        with pytest.raises(ValueError, match=f"'{old}' was renamed '{new}'"):  # what a recipe using it is told
            load_config(None, [f"{old}=1"])
    for key, why in RETIRED.items():
        assert f"| `{key}` | {why} |" in text
    for key, values in RETIRED_VALUES.items():
        assert all(f"| `{key}` | `{old}` | `{new}` |" in text for old, new in values.items())


def test_the_command_writes_both_pages(tmp_path, capsys):
    assert main([str(tmp_path / "reference")]) == 0
    for name, render in PAGES.items():
        assert (tmp_path / "reference" / name).read_text() == render()
    assert capsys.readouterr().out.split() == [str(tmp_path / "reference" / name) for name in PAGES]
