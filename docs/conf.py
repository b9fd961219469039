"""Sphinx configuration of the mochi_hvs documentation (MyST Markdown sources).

Build: `python -m sphinx -W --keep-going -n -b html docs docs/_build/html`; tests/test_docs_build.py builds it the
same way into a temporary folder and fails on any warning.
"""

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path[:0] = [str(DOCS.parent), str(DOCS / "_ext")]

project = "mochi_hvs"
author = "the mochi_hvs authors"
extensions = ["myst_parser", "mochi_docs"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
root_doc = "index"

# Headings get GitHub's anchors, so `page.md#a-heading` links resolve on the site and on GitHub alike.
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence"]

nitpicky = True

html_theme = "alabaster"
html_title = "mochi_hvs"
html_static_path: list[str] = []
