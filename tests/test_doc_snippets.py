"""Every Python snippet in README.md and docs/ runs on the embedded backend, or says why not.

A fenced ``python`` block is run unless the line before it is a marker comment:

* ``<!-- snippet: boinc-only -->``: it needs a BOINC project; not run here.
* ``<!-- snippet: file NAME -->``: written as file NAME next to the page's script
  (``file NAME run``: also run as ``python NAME`` once the page's files are written).

The other blocks of a page run in order as one script, in a fresh directory, with
``import boinc_executor`` and ``from boinc_executor import BoincExecutor, JobParams``
done first (as a page's reader has done).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
PREAMBLE = "import boinc_executor\nfrom boinc_executor import BoincExecutor, JobParams\n\n"
_FENCE = re.compile(
    r"^(?P<marker>[ \t]*<!-- snippet: (?P<how>[^>]*?) -->\n)?"
    r"(?P<indent>[ \t]*)```python\n(?P<code>.*?)^(?P=indent)```",
    re.M | re.S,
)


@dataclass
class Snippet:
    page: Path
    line: int
    how: str
    code: str


def snippets(page: Path) -> list[Snippet]:
    text = page.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        code = textwrap.dedent(match["code"])
        line = text.count("\n", 0, match.start("indent")) + 1
        found.append(Snippet(page, line, (match["how"] or "").strip(), code))
    return found


def test_every_marker_is_known() -> None:
    for page in PAGES:
        for snippet in snippets(page):
            how = snippet.how.split()
            assert not how or how[0] in ("boinc-only", "file"), (page.name, snippet.line, how)
            if how and how[0] == "file":
                assert len(how) in (2, 3) and how[2:] in ([], ["run"]), (page.name, snippet.line)


@pytest.mark.parametrize(
    "page", [p for p in PAGES if snippets(p)], ids=lambda p: p.relative_to(REPO_ROOT).as_posix()
)
def test_page_snippets_run_on_the_embedded_backend(page: Path, tmp_path: Path) -> None:
    found = snippets(page)
    session = [s for s in found if not s.how]
    files = [s for s in found if s.how.startswith("file")]
    env = dict(os.environ, BOINC_EXECUTOR_HOME=str(tmp_path / "home"))
    env.pop("PYBOINC_DIR", None)
    runs = []
    for snippet in files:
        _, name, *run = snippet.how.split()
        (tmp_path / name).write_text(snippet.code)
        if run:
            runs.append(name)
    if session:
        script = PREAMBLE + "\n".join(f"# {page.name}:{s.line}\n{s.code}" for s in session)
        (tmp_path / "page_snippets.py").write_text(script)
        runs.insert(0, "page_snippets.py")
    for name in runs:
        done = subprocess.run(
            [sys.executable, name],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{page.name}: {name} failed:\n{done.stderr}"
