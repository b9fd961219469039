"""The package's import graph has no cycle, counting the imports made inside functions too (a cycle hidden behind
a lazy import is still a cycle: the modules cannot be understood, tested or moved one without the other)."""

import ast
import graphlib
from pathlib import Path

import pytest

import mochi_hvs

# Deliberately lazy, and known: load_images() dispatches to digits.py, which builds on datasets.py's ImageSet.
ALLOWED_LAZY = {("mochi_hvs.data.datasets", "mochi_hvs.data.digits")}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    """The module names an import statement may load: `from a import b` loads a, and a.b where b is a module."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*anchor, base] if base else anchor)
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Each module of the package (a folder under root) -> the package's modules it imports, anywhere in its code."""
    paths = {module_name(path, root): path for path in (root / package).rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        home = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = (target for node in ast.walk(ast.parse(path.read_text()))
                   if isinstance(node, ast.Import | ast.ImportFrom) for target in imported(node, home))
        graph[name] = {t for t in targets if t in paths and t != name and (name, t) not in ALLOWED_LAZY}
    return graph


def test_the_package_has_no_import_cycle():
    root = Path(mochi_hvs.__file__).resolve().parents[1]
    graph = import_graph(root, "mochi_hvs")
    assert "mochi_hvs.step" in graph["mochi_hvs.objectives.contrastive"]  # the walk sees edges
    assert "mochi_hvs.pretrain" in graph["mochi_hvs.supervised"]
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the cycle


def test_a_cycle_behind_an_import_inside_a_function_is_found(tmp_path):
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "__init__.py").write_text("")
    (tmp_path / "toy" / "cli.py").write_text("def main():\n    from .run import go\n    go()\n")
    (tmp_path / "toy" / "run.py").write_text("from . import cli\n\ndef go():\n    pass\n")
    graph = import_graph(tmp_path, "toy")
    assert graph == {"toy": set(), "toy.cli": {"toy.run"}, "toy.run": {"toy", "toy.cli"}}
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter(graph).prepare()
