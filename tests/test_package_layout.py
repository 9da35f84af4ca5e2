"""The package's folders say where each part runs, and its imports keep to that.

docs/operator-guide.md ("Where each part runs") and docs/daemons.md promise: the
protocol is shared by every side and imports only ``errors``; the volunteer side imports
only the protocol; the BOINC server side (``server/``) is imported by the command line
and, for the daemon entries' sleep intervals and commands, by the BOINC backend's
stuck-batch diagnosis through ``server/entries.py``, which itself needs only ``errors``;
the daemon handlers (``server/assimilator.py``, ``server/compare.py``) need only the
protocol, ``errors``, ``config`` and the database layer.
Every import of the source is read (function-level ones too), so a new one that crosses
a boundary fails here rather than on a volunteer or a submitter's laptop. The BOINC
stand-ins under tests/boinc_harness import nothing of the product, so that they can
catch its mistakes instead of sharing them.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "boinc_executor"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports(path: Path) -> set[str]:
    """The boinc_executor modules ``path`` imports (``from .x import y`` counts ``.x``)."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            if node.module:
                found.add(".".join([*base, node.module]))
            else:  # from . import x: x is a module of the package
                found |= {".".join([*base, alias.name]) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {m for m in found if m.split(".")[0] == "boinc_executor"}


def imports_by_module() -> dict[str, set[str]]:
    return {module_name(p): package_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def under(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_resolver_sees_relative_and_function_level_imports() -> None:
    found = imports_by_module()
    assert "boinc_executor.server.entries" in found["boinc_executor.backends.stuck"]
    assert "boinc_executor.server.project" in found["boinc_executor.cli.admin"]  # in a function
    assert "boinc_executor.protocol.fileio" in found["boinc_executor.volunteer.slotio"]


def test_protocol_and_volunteer_side_import_nothing_else() -> None:
    for module, imported in imports_by_module().items():
        if under(module, "boinc_executor.protocol"):
            allowed: tuple[str, ...] = ("boinc_executor.protocol", "boinc_executor.errors")
        elif under(module, "boinc_executor.volunteer"):
            allowed = ("boinc_executor.volunteer", "boinc_executor.protocol",
                       "boinc_executor.errors")
        else:
            continue
        stray = {m for m in imported if not under(m, *allowed)}
        assert not stray, f"{module} imports {stray}"


def test_only_the_cli_and_the_stuck_diagnosis_import_the_server_side() -> None:
    for module, imported in imports_by_module().items():
        if under(module, "boinc_executor.server", "boinc_executor.cli"):
            continue
        server = {m for m in imported if under(m, "boinc_executor.server")}
        if module == "boinc_executor.backends.stuck":
            assert server == {"boinc_executor.server.entries"}, server
        else:
            assert not server, f"{module} imports {server}"
    entries = imports_by_module()["boinc_executor.server.entries"]
    assert entries == {"boinc_executor.errors"}, "the backend pulls in nothing else server-side"


def test_the_daemon_handlers_need_only_the_protocol_and_the_database() -> None:
    """What BOINC's daemons run once per work unit stays light (docs/daemons.md)."""
    found = imports_by_module()
    allowed = ("boinc_executor.protocol", "boinc_executor.errors", "boinc_executor.config",
               "boinc_executor.backends.db")
    for handler in ("boinc_executor.server.assimilator", "boinc_executor.server.compare"):
        stray = {m for m in found[handler] if not under(m, *allowed)}
        assert not stray, f"{handler} imports {stray}"


def test_the_boinc_harness_shares_no_code_with_the_product() -> None:
    harness = Path(__file__).resolve().parent / "boinc_harness"
    for path in sorted(harness.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            assert not any(n.split(".")[0] == "boinc_executor" for n in names), path
