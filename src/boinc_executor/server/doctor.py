"""``boinc-executor doctor PROJECT_DIR``: prove that the project really runs pyboinc jobs.

What goes wrong on a real project goes wrong silently (boinc-facts §5, §8, §9): a
validator that lost its lock to another app's never runs while ``bin/status -v`` calls
it "running", an assimilator that exited stays down, a venv the daemon user cannot read
fails every work unit. Each check here looks at one such thing and, when it fails, says
what is wrong and the command or edit that fixes it. setup-project ends with the same
summary.

The data model is small on purpose:

* :class:`Finding`: one result (check name, ok, problem, fix);
* :class:`Context`: what every check may look at (project root and config, daemon
  entries, the users involved, a lazily opened database connection);
* :func:`check`: the decorator that registers a check; :data:`CHECK_MODULES`: the
  modules whose checks :func:`run_checks` runs, in order.

Adding a check (e.g. the remote-submission checks)::

    # src/boinc_executor/server/remote_checks.py
    from .doctor import Context, Finding, check

    @check("submit_rpc_handler reachable")
    def _rpc(ctx: Context) -> Finding:
        ...
        return Finding.failed("...", "what the operator runs or edits") if bad else None

then append ``"boinc_executor.server.remote_checks"`` to :data:`CHECK_MODULES`. A
check returns a :class:`Finding`, an iterable of them, or None for "passed" (reported
as ok under the check's name); an exception it raises (our errors, ``OSError``) becomes
a failed finding with its message, so one broken check never hides the others.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ProjectConfig
from ..errors import BoincExecutorError
from .access import User
from .entries import DaemonEntry, read_entries, short_hostname

if TYPE_CHECKING:
    from ..backends.db import Database

__all__ = [
    "CHECK_MODULES",
    "Context",
    "DoctorReport",
    "Finding",
    "add_arguments",
    "check",
    "main",
    "run_checks",
]

#: Modules whose ``@check`` functions :func:`run_checks` runs (imported on first use).
CHECK_MODULES: list[str] = ["boinc_executor.server.checks"]

#: Users that web servers commonly run as, tried in order when none is given.
WEB_USERS = ("www-data", "apache", "http", "nginx")


@dataclass(frozen=True)
class Finding:
    """The outcome of one check.

    Attributes:
        check: the check's name (set by :func:`run_checks` when left empty).
        ok: whether it passed.
        problem: what is wrong ("" when ok).
        fix: what to run or edit to fix it ("" when ok).
    """

    check: str = ""
    ok: bool = True
    problem: str = ""
    fix: str = ""

    @classmethod
    def failed(cls, problem: str, fix: str, *, check: str = "") -> Finding:
        """A failed finding (``check`` defaults to the registering check's name)."""
        return cls(check=check, ok=False, problem=problem, fix=fix)

    @classmethod
    def passed(cls, check: str = "") -> Finding:
        """A passed finding, for checks that report several things by name."""
        return cls(check=check, ok=True)


CheckResult = Finding | Iterable[Finding] | None
CheckFn = Callable[["Context"], CheckResult]
_REGISTRY: list[tuple[str, CheckFn]] = []


def check(name: str) -> Callable[[CheckFn], CheckFn]:
    """Register ``fn`` as the check called ``name`` (run in registration order)."""

    def register(fn: CheckFn) -> CheckFn:
        _REGISTRY.append((name, fn))
        return fn

    return register


@dataclass
class Context:
    """What a check may look at.

    Attributes:
        root: the project root.
        config: its config.xml settings.
        project_host: config.xml's ``<host>``.
        host: this machine's ``hostname -s``.
        entries: config.xml's ``<daemon>`` entries.
        submit_user: who submits batches (creates files in download/, runs create_work).
        daemon_user: who runs bin/start and therefore the daemons.
        web_user: the web server's user when remote submission matters, else None.
        remote: whether the project takes remote submissions (``--web-user`` given, or
            ``html/user/submit_rpc_handler.php`` exists).
    """

    root: Path
    config: ProjectConfig
    project_host: str
    host: str
    entries: list[DaemonEntry]
    submit_user: User
    daemon_user: User
    web_user: User | None
    remote: bool
    _db: Database | None = field(default=None, repr=False)

    @property
    def pid_dir(self) -> Path:
        """Where bin/start keeps this machine's lock and pid files."""
        return self.root / f"pid_{self.host}"

    @property
    def log_dir(self) -> Path:
        """Where bin/start sends this machine's daemon logs."""
        return self.root / f"log_{self.host}"

    def here(self) -> list[DaemonEntry]:
        """Enabled entries bin/start runs on this machine."""
        return [
            e
            for e in self.entries
            if not e.disabled and e.program and e.runs_on(self.project_host) == self.host
        ]

    def db(self) -> Database:
        """The project database, connected on first use (raises DatabaseError/ConfigError)."""
        if self._db is None:
            from ..backends.db import Database

            self._db = Database(self.config)
        return self._db

    def close(self) -> None:
        """Close the database connection if one was opened."""
        if self._db is not None:
            self._db.close()
            self._db = None


@dataclass
class DoctorReport:
    """Every finding of one doctor run.

    Attributes:
        root: the project root.
        findings: in the order the checks ran.
    """

    root: Path
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return all(f.ok for f in self.findings)

    @property
    def problems(self) -> list[Finding]:
        """The failed findings."""
        return [f for f in self.findings if not f.ok]

    def render(self) -> str:
        """Human-readable summary: one line per check, each problem with its fix."""
        lines = [f"boinc-executor doctor {self.root}"]
        for f in self.findings:
            if f.ok:
                lines.append(f"  ok    {f.check}")
            else:
                lines.append(f"  FAIL  {f.check}: {f.problem}")
                lines.append(f"        fix: {f.fix}")
        n = len(self.problems)
        lines.append("All checks passed." if not n else f"{n} problem{'s' if n > 1 else ''} found.")
        return "\n".join(lines)

    def to_json(self) -> str:
        """The findings as JSON: ``{"project", "ok", "checks": [...]}``."""
        data: dict[str, Any] = {
            "project": str(self.root),
            "ok": self.ok,
            "checks": [asdict(f) for f in self.findings],
        }
        return json.dumps(data, indent=2)


def _load_checks() -> list[tuple[str, CheckFn]]:
    for module in CHECK_MODULES:
        importlib.import_module(module)
    return list(_REGISTRY)


def _results(name: str, fn: CheckFn, ctx: Context) -> Iterator[Finding]:
    try:
        out = fn(ctx)
        found = [] if out is None else [out] if isinstance(out, Finding) else list(out)
    except (BoincExecutorError, OSError) as exc:
        found = [Finding.failed(str(exc), "fix the cause above, then run doctor again")]
    if not found:
        found = [Finding.passed()]
    for f in found:
        yield f if f.check else replace(f, check=name)


def _user(name: str | None, default: User) -> User:
    if name is None:
        return default
    try:
        return User.named(name)
    except KeyError:
        raise BoincExecutorError(f"there is no user {name!r} on this machine") from None


def _web_user(name: str | None, root: Path) -> tuple[User | None, bool]:
    if name is not None:
        return _user(name, User.current()), True
    remote = (root / "html" / "user" / "submit_rpc_handler.php").is_file()
    if not remote:
        return None, False
    for candidate in WEB_USERS:
        try:
            return User.named(candidate), True
        except KeyError:
            continue
    return None, True


def run_checks(
    project_dir: str | Path,
    *,
    submit_user: str | None = None,
    daemon_user: str | None = None,
    web_user: str | None = None,
) -> DoctorReport:
    """Run every registered check on the project at ``project_dir``.

    Args:
        project_dir: the project root.
        submit_user: who submits batches (default: the user running doctor).
        daemon_user: who runs the daemons (default: the owner of config.xml, which
            setup-project and make_project leave to the project's user).
        web_user: the web server's user; given, remote submission is checked too.

    Raises:
        ConfigError: ``project_dir`` is not a BOINC project.
        BoincExecutorError: a named user does not exist.
    """
    root = Path(project_dir).expanduser().resolve()
    config = ProjectConfig.load(root)
    project_host, entries = read_entries(root)
    web, remote = _web_user(web_user, root)
    ctx = Context(
        root=root,
        config=config,
        project_host=project_host,
        host=short_hostname(),
        entries=entries,
        submit_user=_user(submit_user, User.current()),
        daemon_user=_user(daemon_user, User.from_uid((root / "config.xml").stat().st_uid)),
        web_user=web,
        remote=remote,
    )
    try:
        findings = [f for name, fn in _load_checks() for f in _results(name, fn, ctx)]
    finally:
        ctx.close()
    return DoctorReport(root=root, findings=findings)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``doctor`` subcommand's arguments (the CLI's subparser calls this)."""
    parser.add_argument("project_dir", metavar="PROJECT_DIR", help="the BOINC project root")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.add_argument("--submit-user", metavar="USER", help="who submits batches (default: you)")
    parser.add_argument(
        "--daemon-user",
        metavar="USER",
        help="who runs the daemons (default: the owner of config.xml)",
    )
    parser.add_argument(
        "--web-user",
        metavar="USER",
        help="the web server's user; check remote submission (default: www-data or the "
        "like, when html/user/submit_rpc_handler.php exists)",
    )


def main(args: argparse.Namespace) -> int:
    """Run ``doctor`` for parsed CLI ``args``; 0 when every check passed, else 1."""
    try:
        report = run_checks(
            args.project_dir,
            submit_user=args.submit_user,
            daemon_user=args.daemon_user,
            web_user=args.web_user,
        )
    except BoincExecutorError as exc:
        print(f"boinc-executor doctor: {exc}", file=sys.stderr)
        return 1
    print(report.to_json() if args.json else report.render())
    return 0 if report.ok else 1
