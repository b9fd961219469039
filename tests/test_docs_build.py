"""The documentation site (docs/, Sphinx with MyST Markdown) builds offline with warnings as errors and nitpicky
references: a broken local link or anchor, a {py:mod}/{py:func} reference to a missing object, or a page outside the
toctrees fails it. Built once into a temporary folder from a copy of docs/ (so the checkout is left untouched)."""

import os
import pickle
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BROKEN = "[gone](no-such-page.md) {py:mod}`mochi_hvs.no_such_module` {py:func}`mochi_hvs.config.no_such_function`"


@dataclass
class Site:
    docs: Path  # the copy of docs/ it was built from
    html: Path
    build: subprocess.CompletedProcess
    toctree: dict[str, list[str]]  # page -> the pages its toctrees list
    pages: set[str]  # every page Sphinx found


def sphinx(docs: Path, html: Path) -> subprocess.CompletedProcess:
    """`python -m sphinx -W --keep-going -n -b html` in a fresh process, as the development page says to build."""
    command = [sys.executable, "-m", "sphinx", "-q", "-W", "--keep-going", "-n", "-b", "html", str(docs), str(html)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Site:
    root = tmp_path_factory.mktemp("site")
    shutil.copytree(ROOT / "docs", root / "docs", ignore=shutil.ignore_patterns("_build"))
    for linked in ("results", "configs"):  # what the pages link to, beside docs/ as in the checkout
        (root / linked).symlink_to(ROOT / linked)
    build = sphinx(root / "docs", root / "html")
    with open(root / "html" / ".doctrees" / "environment.pickle", "rb") as file:
        env = pickle.load(file)
    return Site(root / "docs", root / "html", build, dict(env.toctree_includes), set(env.found_docs))


def test_the_site_builds_without_a_warning(site):
    assert site.build.returncode == 0, site.build.stderr
    assert not site.build.stderr.strip(), site.build.stderr


def test_every_page_is_reachable_from_the_index_toctree(site):
    reached, todo = set(), ["index"]
    while todo:
        page = todo.pop()
        if page not in reached:
            reached.add(page)
            todo += site.toctree.get(page, [])
    sources = {str(p.relative_to(ROOT / "docs").with_suffix("")) for p in (ROOT / "docs").rglob("*.md")
               if "_build" not in p.parts}
    assert site.pages == sources
    assert sorted(sources - reached) == []


def test_every_study_report_is_included_in_a_results_page(site):
    for report in sorted(ROOT.glob("results/*/REPORT.md")):
        study = report.parent.name
        page = (site.html / "results" / f"{study}.html").read_text()
        assert f"Study: {study}" in page and "Per-seed values" in page, f"{report} is not on its results page"


def test_a_broken_link_or_reference_in_a_copy_of_a_page_fails_the_build(site):
    """A copy of a real page builds clean (its own links resolve from the same folder); the line appended to it, a
    link to a missing page and references to a missing module and function, fails the build, each named."""
    copy = site.docs / "methods" / "broken_copy.md"
    original = (site.docs / "methods" / "hpt.md").read_text()
    copy.write_text(original + "\n" + BROKEN + "\n")
    try:
        build = sphinx(site.docs, site.html)  # incremental: only the copy is read
    finally:
        copy.unlink()
    assert build.returncode != 0
    line = len(original.splitlines()) + 2
    warnings = [w for w in build.stderr.splitlines() if "WARNING" in w]
    assert any(f"broken_copy.md:{line}:" in w and "no-such-page.md" in w for w in warnings), build.stderr
    assert any(f"broken_copy.md:{line}:" in w and "mochi_hvs.no_such_module" in w for w in warnings), build.stderr
    assert any(f"broken_copy.md:{line}:" in w and "mochi_hvs.config.no_such_function" in w for w in warnings), \
        build.stderr
    elsewhere = [w for w in warnings if f"broken_copy.md:{line}:" not in w and "toc.not_included" not in w]
    assert elsewhere == []
