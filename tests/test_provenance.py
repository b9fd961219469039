"""Result lines name the command, the commit and the machine that produced them."""

import subprocess

from mochi_hvs import provenance
from mochi_hvs.provenance import code_commit, command_line


def test_command_line_of_a_module_a_script_and_a_console_script():
    assert command_line(["/x/mochi_hvs/study/__main__.py", "--config", "a b.yaml"], "mochi_hvs.study.__main__") == \
        "python -m mochi_hvs.study --config 'a b.yaml'"
    assert command_line(["eval/knn.py", "--pixels"], "") == "python eval/knn.py --pixels"
    assert command_line(["/venv/bin/mochi-linear", "--set", "device=cpu"], "") == "mochi-linear --set device=cpu"


def test_commit_is_the_checkouts_head_and_marks_uncommitted_code(tmp_path, monkeypatch):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "r.jsonl").write_text("{}\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    monkeypatch.setattr(provenance, "PACKAGE_ROOT", tmp_path)

    def fresh() -> str:
        code_commit.cache_clear()
        return code_commit()

    assert fresh() == head
    (tmp_path / "results" / "r.jsonl").write_text("{}\n{}\n")  # a record appended: still the commit's code
    assert fresh() == head
    (tmp_path / "code.py").write_text("x = 2\n")
    assert fresh() == head + "+uncommitted"
    monkeypatch.setattr(provenance, "PACKAGE_ROOT", tmp_path / "missing")
    assert fresh() == "unknown"
    code_commit.cache_clear()
