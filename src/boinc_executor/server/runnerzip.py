"""``pyboinc.zip``: the volunteer-side runner, the package modules it imports, cloudpickle.

A volunteer host has at most a Python interpreter, so the app version ships the
runner and its pure-Python needs itself, as a zip the launcher runs with
``python -S pyboinc.zip`` in the slot. :data:`RUNNER_MODULES` lists exactly the
package modules in it; :func:`build_runner_zip` checks their import closure, so a
new import in one of them fails on the server, at setup-project, not on every
volunteer.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import io
import zipfile
from pathlib import Path, PurePosixPath

from ..errors import ConfigError

__all__ = ["RUNNER_MODULES", "build_runner_zip", "runner_module_path"]

# The runner and exactly the package modules it imports; build_runner_zip checks the
# closure so a new import in one of them fails here, on the server, not on volunteers.
RUNNER_MODULES = (
    "volunteer",
    "volunteer.runner",
    "volunteer.slotio",
    "protocol",
    "protocol.names",
    "protocol.records",
    "protocol.errorinfo",
    "protocol.fileio",
    "protocol.decoding",
    "protocol.bounded",
    "protocol.classref",
    "protocol.taskoutput",
    "errors",
)

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same release gives the same bytes
_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def runner_module_path(module: str) -> Path:
    """The file of package module ``module`` (dotted, relative to ``boinc_executor``)."""
    base = _PACKAGE_DIR.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _package_imports(source: str, module: str) -> set[str]:
    """Modules of this package that ``module``'s ``source`` imports, as dotted names.

    Relative imports are resolved against the module's own package; ``from pkg import
    name`` counts ``pkg.name`` when that is a module, else ``pkg`` itself.
    """
    path = runner_module_path(module)
    here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()

    def add(parts: list[str], names: list[str]) -> None:
        for name in names:
            candidate = [*parts, name]
            if runner_module_path(".".join(candidate)).exists():
                found.add(".".join(candidate))
            elif parts:
                found.add(".".join(parts))

    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[: len(here) - (node.level - 1)]
            if node.module:
                found.add(".".join([*base, *node.module.split(".")]))
            else:
                add(base, [alias.name for alias in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("boinc_executor."):
            found.add(str(node.module).split(".", 1)[1])
        elif isinstance(node, ast.Import):
            found.update(
                a.name.split(".", 1)[1] for a in node.names if a.name.startswith("boinc_executor.")
            )
    return found


def _cloudpickle_files() -> list[tuple[str, bytes]]:
    spec = importlib.util.find_spec("cloudpickle")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "cloudpickle is not installed for this interpreter; install boinc-executor's "
            "dependencies (pip install boinc-executor) before running setup-project"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    files = [
        (f"cloudpickle/{p.relative_to(root).as_posix()}", p.read_bytes())
        for p in sorted(root.rglob("*.py"))
        if "__pycache__" not in p.parts
    ]
    # cloudpickle is BSD-licensed: ship its licence with it.
    try:
        dist_files = importlib.metadata.distribution("cloudpickle").files or []
    except importlib.metadata.PackageNotFoundError:
        dist_files = []
    for entry in dist_files:
        if PurePosixPath(str(entry)).name.upper().startswith(("LICENSE", "LICENCE", "COPYING")):
            located = Path(str(entry.locate()))
            if located.is_file():
                files.append((f"cloudpickle-{located.name}", located.read_bytes()))
    return files


def build_runner_zip(release: str) -> bytes:
    """``pyboinc.zip``: the runner, its protocol modules, cloudpickle and ``__main__.py``.

    Deterministic (sorted entries, fixed timestamps), so the same installation always
    builds the same bytes and a re-run of setup-project registers nothing new.

    Raises:
        ConfigError: cloudpickle is missing, or a runner module imports a package module
            outside :data:`RUNNER_MODULES` (it would fail on every volunteer).
    """
    entries: list[tuple[str, bytes]] = []
    for module in RUNNER_MODULES:
        path = runner_module_path(module)
        source = path.read_bytes()
        extra = _package_imports(source.decode(), module) - set(RUNNER_MODULES)
        if extra:
            raise ConfigError(
                f"boinc_executor.{module} imports {', '.join(sorted(extra))}, which the "
                "volunteer-side zip does not ship; the runner must import only "
                f"{', '.join(RUNNER_MODULES)}"
            )
        entries.append((f"boinc_executor/{path.relative_to(_PACKAGE_DIR).as_posix()}", source))
    init = (
        '"""boinc-executor, volunteer side: the runner and the protocol modules it needs."""\n'
        f"__version__ = {release!r}\n"
    )
    entries.append(("boinc_executor/__init__.py", init.encode()))
    main = (
        '"""Entry point of pyboinc.zip: run the job laid out in the current directory."""\n'
        "import sys\n\n"
        "from boinc_executor.volunteer.runner import main\n\n"
        "sys.exit(main())\n"
    )
    entries.append(("__main__.py", main.encode()))
    entries += _cloudpickle_files()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buffer.getvalue()
