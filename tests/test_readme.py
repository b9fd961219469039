"""The README opens with the two fresh-machine commands, install + the default run and install + the tests, as its
first two code blocks on its first screen; CI runs the second exactly; the README stays short."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FIRST_SCREEN = 40  # lines
RUN = "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && python -m mochi_hvs.pretrain --config " \
      "configs/moco_v2.yaml"
TEST = 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" && python -m pytest -q'


def code_blocks(text: str) -> list[tuple[int, str]]:
    """(line number of the closing fence, content) of each fenced code block, in order."""
    blocks, lines, start = [], text.splitlines(), None
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            if start is None:
                start = number
            else:
                blocks.append((number, "\n".join(lines[start:number - 1])))
                start = None
    return blocks


def opening_problems(text: str) -> list[str]:
    """What is wrong with the opening of a README: its first two code blocks must be the default run's and the
    tests' fresh-machine commands, ending within the first screen."""
    blocks = code_blocks(text)[:2]
    if len(blocks) < 2:
        return ["fewer than two code blocks"]
    (_, run), (test_end, test) = blocks
    problems = []
    if "apt-get install -y dataset-fashion-mnist" not in run or not run.endswith(RUN):
        problems.append(f"first block is not the default run: {run!r}")
    if test != TEST:
        problems.append(f"second block is not the test command: {test!r}")
    if test_end > FIRST_SCREEN:
        problems.append(f"the test command ends on line {test_end}, past the first screen")
    return problems


def test_the_first_two_code_blocks_are_the_fresh_machine_commands_on_the_first_screen():
    assert opening_problems(README) == []


def test_a_readme_whose_commands_moved_is_caught():
    assert opening_problems("# t\n\n```bash\necho hi\n```\n\n" + README)
    assert opening_problems(README.replace("## Install and run the tests", "\n" * 40 + "## Install and run the tests"))


def test_ci_runs_the_readmes_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert 'python -m pip install -e ".[test]"' in ci
    assert ci[-1] == "python -m pytest -q"


def test_the_readme_is_short_and_keeps_to_the_present():
    assert len(README.splitlines()) <= 250
    history = re.findall(r"\b(?:before the fix|no longer|used to|was replaced|withdrawn|old probe)\b", README)
    assert history == []
