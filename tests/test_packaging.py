"""Release packaging: what the sdist and the wheel hold, and a wheel that works on its own.

The source tree is copied (the files git tracks) and the PyBOINC example is run in
the copy first, as a developer would, so its batch files lie next to it when the
sdist and the wheel are built. The wheel is then installed into a fresh venv that
cannot see the source tree, and the example and the CLI run from there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# What a run leaves in a batch directory (docs/protocol.md): none of it may ship.
BATCH_FILES = ("pyboinc_checkpoint", "journal.jsonl", ".lock", "/new/", "/old/", "/local/")


def _tracked_copy(dest: Path) -> Path:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in filter(None, listed):
        name = raw.decode()
        source = REPO_ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(source copy, sdist, wheel), built after the PyBOINC example ran in the copy."""
    tree = _tracked_copy(tmp_path_factory.mktemp("tree"))
    example = tree / "examples" / "pyboinc_squares"
    env = dict(os.environ, BOINC_EXECUTOR_HOME=str(tree / ".home"))
    env.pop("PYBOINC_DIR", None)
    ran = subprocess.run(
        [sys.executable, "app_master.py"],
        cwd=example,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    assert (example / "pyboinc_checkpoint").exists()  # the batch files are there to leak
    dist = tree / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "-o", str(dist)],
        cwd=tree,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    return tree, sdist, wheel


def test_sdist_and_wheel_hold_no_batch_files(built: tuple[Path, Path, Path]) -> None:
    _, sdist, wheel = built
    with tarfile.open(sdist) as tar:
        sdist_names = tar.getnames()
    with zipfile.ZipFile(wheel) as whl:
        wheel_names = whl.namelist()
    for names in (sdist_names, wheel_names):
        leaked = [n for n in names if any(mark in f"/{n}" for mark in BATCH_FILES)]
        assert leaked == []
    top = sdist_names[0].split("/")[0]
    for needed in (
        "LICENSE",
        "CHANGELOG.md",
        "README.md",
        "pyproject.toml",
        "examples/pyboinc_squares/app_master.py",
        "src/boinc_executor/cli/__init__.py",
    ):
        assert f"{top}/{needed}" in sdist_names
    assert "boinc_executor/_daemons/pyboinc_assimilator.py" in wheel_names
    assert "boinc_executor/py.typed" in wheel_names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in wheel_names)
    metadata = next(n for n in wheel_names if n.endswith(".dist-info/METADATA"))
    with zipfile.ZipFile(wheel) as whl:
        text = whl.read(metadata).decode()
    assert "License-Expression: MIT" in text
    assert "Provides-Extra: progress" in text and "Provides-Extra: boinc" in text


def test_wheel_works_in_a_fresh_venv_without_the_source_tree(
    built: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    tree, _, wheel = built
    target = tmp_path / "venv"
    venv.create(target, with_pip=True)
    python = target / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    away = tmp_path / "elsewhere"
    (away / "pyboinc_squares").mkdir(parents=True)
    for script in (tree / "examples").glob("**/*.py"):  # the scripts, not the earlier run's batch
        shutil.copy2(script, away / script.relative_to(tree / "examples"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYBOINC_DIR")}
    env["BOINC_EXECUTOR_HOME"] = str(tmp_path / "home")
    where = subprocess.run(
        [str(python), "-c", "import boinc_executor; print(boinc_executor.__file__)"],
        cwd=away,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(target))  # the installed copy, not the source tree
    squares = subprocess.run(
        [str(python), "squares.py"],
        cwd=away,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert squares.returncode == 0, squares.stderr
    assert "sum of squares of 0..99 = 328350" in squares.stdout
    master = subprocess.run(
        [str(python), "app_master.py"],
        cwd=away / "pyboinc_squares",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert master.returncode == 0, master.stderr
    assert "The answer is 328350" in master.stdout
    helped = subprocess.run(
        [str(target / "bin" / "boinc-executor"), "--help"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert helped.returncode == 0 and "status" in helped.stdout
