"""Every relative link in the README and the docs pages resolves as GitHub renders them: the file exists and, for a
link into a Markdown page, the heading its anchor names does too (GitHub's heading slugs). The documentation site
checks the same links as Sphinx resolves them (test_docs_build.py)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.parts)]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def outside_code(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the lines outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def anchors(page: Path) -> set[str]:
    """The anchors of a Markdown page's headings."""
    return {slug(m.group(2)) for _, line in outside_code(page.read_text())
            if (m := re.match(r"^(#{1,6}) (.*)$", line))}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for number, line in outside_code(page.read_text()):
        for target in LINK.findall(line):
            if re.match(r"^(https?:|mailto:)", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{number}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{number}: {target} (no heading #{anchor})")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_a_broken_link_is_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [bad](#nope) [gone](missing.md)\n```\n[code](skipped.md)\n```\n")
    with pytest.raises(AssertionError, match=r"3: #nope \(no heading #nope\); 3: missing.md \(no such file\)"):
        test_relative_links_resolve(page)
