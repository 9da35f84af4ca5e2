"""Sphinx configuration: the boinc-executor site, built from the Markdown pages in docs/.

Build it with ``tox -e docs`` (warnings are errors) or
``sphinx-build -W -n -b html docs docs/_build/html``. Everything is offline: no
intersphinx inventories are fetched.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent / "src"))

import boinc_executor  # noqa: E402 - after the path set-up above

project = "boinc-executor"
author = "boinc-executor developers"
copyright = "2026, boinc-executor developers"
release = version = boinc_executor.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "cli_reference",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]
# Pages that are being written elsewhere: index.md lists them where they belong, and
# an entry is dropped while its page does not exist yet (any other missing page is
# still an error).
OPTIONAL_PAGES = ("remote",)

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# No intersphinx (the build is offline), so references to the standard library do
# not resolve; nitpicky mode stays off.
nitpicky = False

html_theme = "alabaster"
html_title = f"boinc-executor {release}"
html_static_path: list[str] = []


def _drop_missing_optional_pages(app: Any, docname: str, source: list[str]) -> None:
    if docname != "index":
        return
    missing = [p for p in OPTIONAL_PAGES if not (HERE / f"{p}.md").is_file()]
    lines = source[0].splitlines(keepends=True)
    source[0] = "".join(line for line in lines if line.strip() not in missing)


def setup(app: Any) -> None:
    """Connect the hook that keeps index.md's toctrees valid while pages are missing."""
    app.connect("source-read", _drop_missing_optional_pages)
