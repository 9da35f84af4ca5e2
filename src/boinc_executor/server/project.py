"""Configure an existing BOINC project to run ``BoincExecutor`` jobs (``setup-project``).

``setup_project(root)`` does, with the project's own tools and in this order, what
docs/protocol.md's "On a BOINC project" contract needs (boinc-facts §5, §6, §8):

1. refuse at once, before touching anything, when ``root`` is not a BOINC project,
   the files it must change are not writable, another daemon entry would take the
   lock, pid or log file of ours, or the database is unreachable;
2. the app ``pyboinc``: an ``<app>`` in project.xml, then ``bin/xadd``;
3. the ``pyboinc_batch`` table (:meth:`Database.ensure_batch_table`);
4. ``templates/pyboinc_in`` and ``templates/pyboinc_out``;
5. an app version per platform (:mod:`boinc_executor.server.appversion`) in
   ``apps/pyboinc/<version>/<platform>/``, registered with ``bin/update_versions``;
6. ``bin/pyboinc_assimilator`` and ``bin/pyboinc_compare``, the daemon scripts;
7. the assimilator and validator ``<daemon>`` entries in config.xml, each with its own
   ``<output>`` and ``<pid_file>`` (so bin/start gives it its own lock, facts §9.1),
   edited as text so the rest of the file stays byte for byte what it was, written
   atomically. Entries of earlier releases are upgraded (and the change says which
   lock they shared); another entry using one of our lock, pid or log files is refused
   in step 1 with a ConfigError saying which, since it is the operator's to rename;
8. the same checks as ``boinc-executor doctor`` (:mod:`.doctor`), as the report's end.

Every step first checks whether its work is already done, so a second run changes
nothing; a newer release adds a new app version next to the old ones (registered
files are immutable). It never starts or stops the project: the report says what the
operator still has to do.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..config import ProjectConfig
from ..errors import ConfigError
from ..protocol.fileio import atomic_write
from ..protocol.names import APP_NAME
from .appversion import (
    ALL_PLATFORMS,
    AppFile,
    Interpreter,
    version_dir_name,
    version_files,
    version_num,
    version_xml,
)
from .daemonconf import DAEMON_SCRIPTS, daemon_commands, daemon_script, daemon_source, edit_daemons
from .doctor import DoctorReport, run_checks
from .entries import short_hostname
from .restart import restart_advice
from .runnerzip import build_runner_zip
from .templates import input_template, output_template
from .tools import run_tool

if TYPE_CHECKING:
    from ..backends.db import Database

__all__ = ["SetupReport", "setup_project"]


@dataclass
class SetupReport:
    """What :func:`setup_project` did and what the operator still has to do.

    Attributes:
        root: the project root.
        version_num: the BOINC app version number of this release.
        changes: one line per change made (empty when everything was already in place).
        todo: steps left to the operator (restarting daemons, warnings).
        doctor: what ``boinc-executor doctor`` found once setup was done (daemons that
            are not running yet show up here until they are restarted).
    """

    root: Path
    version_num: int
    changes: list[str] = field(default_factory=list)
    todo: list[str] = field(default_factory=list)
    doctor: DoctorReport | None = None

    def render(self) -> str:
        """Human-readable summary for the command line."""
        lines = [f"boinc-executor setup-project {self.root} (app {APP_NAME} {self.version_num})"]
        if self.changes:
            lines.append("Changed:")
            lines += [f"  - {c}" for c in self.changes]
        else:
            lines.append("Nothing to change: the project is already set up for this release.")
        if self.todo:
            lines.append("Still to do:")
            lines += [f"  - {t}" for t in self.todo]
        if self.doctor is not None:
            lines.append(self.doctor.render())
        return "\n".join(lines)


# --------------------------------------------------------------------------- checks


def _require_project(root: Path) -> ProjectConfig:
    """Refuse anything that does not look like a directory make_project created."""
    if not root.is_dir():
        raise ConfigError(f"{root} is not a directory; give the root of a BOINC project")
    needed = ["config.xml", "project.xml", "bin/xadd", "bin/update_versions", "templates", "apps"]
    missing = [n for n in needed if not (root / n).exists()]
    if missing:
        raise ConfigError(
            f"{root} is not a BOINC project (it lacks {', '.join(missing)}); give the "
            "project root that BOINC's make_project created"
        )
    return ProjectConfig.load(root)


def _require_writable(config: ProjectConfig) -> None:
    """Refuse before changing anything when we (or update_versions) could not finish."""
    root = config.root
    dirs = [root, root / "templates", root / "apps", root / "bin", config.download_dir]
    files = [root / "config.xml", root / "project.xml"]
    denied = [str(d) for d in dirs if not os.access(d, os.W_OK | os.X_OK)]
    denied += [str(f) for f in files if not os.access(f, os.R_OK | os.W_OK)]
    if denied:
        raise ConfigError(
            f"no permission to write {', '.join(denied)}; run setup-project as the user "
            "that owns the project (the one that runs its daemons, e.g. boincadm)"
        )


def _require_free_daemon_files(config: ProjectConfig, float_validator: bool) -> None:
    """Refuse before changing anything when another daemon entry uses our lock, pid or log.

    The same edit :func:`_ensure_daemons` makes later, done on a copy: renaming the
    operator's entry is theirs to do, and refusing only at step 7 would leave the app
    and its versions registered with daemons that cannot run.
    """
    text = (config.root / "config.xml").read_text()
    edit_daemons(text, daemon_commands(float_validator=float_validator), short_hostname())


# --------------------------------------------------------------------------- files


def _write(path: Path, data: bytes, mode: int | None = None) -> None:
    """Atomic replace that keeps the file's mode and group, or gives it ``mode``.

    The web server (a different user in the project's group) must keep reading
    config.xml and the templates, so an edit keeps what the operator set.
    """
    try:
        st = path.stat()
        keep_mode, gid = st.st_mode & 0o7777, st.st_gid
    except FileNotFoundError:
        keep_mode, gid = 0o644, None
    atomic_write(path, data, mode=keep_mode if mode is None else mode, gid=gid, durable=True)


def _ensure_file(
    path: Path, data: bytes, report: SetupReport, what: str, *, executable: bool = False
) -> None:
    """Give ``path`` this content, keeping the operator's mode (plus exec bits if needed)."""
    try:
        current: bytes | None = path.read_bytes()
        old_mode: int | None = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        current, old_mode = None, None
    mode = (0o755 if executable else 0o644) if old_mode is None else old_mode
    if executable:
        mode |= 0o111
    if current == data and mode == old_mode:
        return
    _write(path, data, mode)
    verb = "wrote" if current is None else ("updated" if current != data else "made executable")
    report.changes.append(f"{verb} {path.relative_to(report.root)} ({what})")


_TOOLS_HINT = (
    "(if it could not even start: BOINC's Python tools such as xadd need `python` "
    "to be a Python 3 with MySQLdb, and update_versions needs php-cli with mysqli)"
)


# --------------------------------------------------------------------------- steps


def _ensure_app(db: Database, root: Path, report: SetupReport) -> int:
    app_id = db.app_id(APP_NAME)
    if app_id is not None:
        return app_id
    project_xml = root / "project.xml"
    text = project_xml.read_text()
    if not re.search(rf"<app>\s*<name>\s*{APP_NAME}\s*</name>", text):
        entry = (
            f"    <app>\n        <name>{APP_NAME}</name>\n"
            f"        <user_friendly_name>Python functions (boinc-executor)</user_friendly_name>\n"
            "    </app>\n"
        )
        if "</boinc>" not in text:
            raise ConfigError(f"{project_xml} has no </boinc>; is it BOINC's project.xml?")
        head, _, tail = text.rpartition("</boinc>")
        _write(project_xml, (head + entry + "</boinc>" + tail).encode())
        report.changes.append(f"added the app {APP_NAME} to project.xml")
    output = run_tool(root, "xadd", hint=_TOOLS_HINT)
    app_id = db.app_id(APP_NAME)
    if app_id is None:
        raise ConfigError(f"bin/xadd did not create the app {APP_NAME}:\n{output}")
    report.changes.append(f"created the app {APP_NAME} (bin/xadd)")
    return app_id


def _ensure_batch_table(db: Database, report: SetupReport) -> None:
    from ..backends.db import BATCH_TABLE

    if db.query("SHOW TABLES LIKE %s", (BATCH_TABLE,), doing="looking for the batch table"):
        return
    db.ensure_batch_table()
    report.changes.append(f"created the database table {BATCH_TABLE}")


def _registered(db: Database, app_id: int, num: int) -> dict[str, str]:
    """Platforms with an app version ``num`` of our app, and that version's xml_doc."""
    rows = db.query(
        "SELECT p.name, v.xml_doc FROM app_version v JOIN platform p ON p.id=v.platformid "
        "WHERE v.appid=%s AND v.version_num=%s AND v.plan_class=''",
        (app_id, num),
        doing="looking up app versions",
    )
    return {
        str(name): xml.decode(errors="replace") if isinstance(xml, bytes) else str(xml or "")
        for name, xml in rows
    }


def _stage_version_dir(pdir: Path, files: list[AppFile]) -> None:
    """Write an app-version directory that update_versions has not registered yet."""
    pdir.mkdir(parents=True, exist_ok=True)
    wanted = {f.physical_name for f in files} | {"version.xml"}
    wanted |= {f"{name}.sig" for name in wanted}  # signatures made offline are kept
    for stale in pdir.iterdir():
        if stale.name not in wanted and stale.is_file():
            stale.unlink()  # left by an older, never-registered attempt
    for f in files:
        target = pdir / f.physical_name
        mode = 0o755 if f.main_program else 0o644  # update_versions: exec bit -> <executable/>
        if f.data is not None:
            if not target.is_file() or target.read_bytes() != f.data:
                _write(target, f.data, mode)
        elif f.source is not None and not target.is_file():
            tmp = pdir / f".{f.physical_name}.tmp"
            shutil.copyfile(f.source, tmp)  # an interpreter archive: streamed, not read whole
            tmp.chmod(mode)
            os.replace(tmp, target)
        target.chmod(mode)
    xml = version_xml(files)
    if not (pdir / "version.xml").is_file() or (pdir / "version.xml").read_bytes() != xml:
        _write(pdir / "version.xml", xml, 0o644)


def _ensure_app_versions(
    db: Database,
    *,
    config: ProjectConfig,
    app_id: int,
    release: str,
    interpreters: Mapping[str, Interpreter],
    report: SetupReport,
) -> bool:
    num = report.version_num
    runner_zip = build_runner_zip(release)
    wanted = {p: version_files(p, release, runner_zip, interpreters.get(p)) for p in ALL_PLATFORMS}
    registered = _registered(db, app_id, num)
    vdir = config.root / "apps" / APP_NAME / version_dir_name(num)
    pending = [p for p in ALL_PLATFORMS if p not in registered]
    for platform in ALL_PLATFORMS:
        if platform in registered:
            names = [f.physical_name for f in wanted[platform]]
            if not all(f"<name>{n}</name>" in registered[platform] for n in names):
                report.todo.append(
                    f"app version {num} for {platform} is already registered with other "
                    "files (a changed runner or interpreter under the same release); it stays "
                    "as it is, because registered BOINC files are immutable. Install a newer "
                    "boinc-executor release, or pass a higher --release, to ship the change"
                )
    if not pending:
        return False
    for platform in pending:
        _stage_version_dir(vdir / platform, wanted[platform])
    output = run_tool(config.root, "update_versions", "--noconfirm", hint=_TOOLS_HINT)
    now = _registered(db, app_id, num)
    missing = [p for p in pending if p not in now]
    if missing:
        raise ConfigError(
            f"bin/update_versions did not register app version {num} for "
            f"{', '.join(missing)}:\n{output}"
        )
    report.changes.append(
        f"registered app version {num} ({version_dir_name(num)}) for {', '.join(pending)} "
        "(bin/update_versions)"
    )
    return True


def _ensure_daemons(config: ProjectConfig, float_validator: bool, report: SetupReport) -> bool:
    path = config.root / "config.xml"
    original = path.read_text()
    host = short_hostname()
    text, changes = edit_daemons(original, daemon_commands(float_validator=float_validator), host)
    if config.host and config.host != host:
        report.todo.append(
            f"config.xml's <host> is {config.host!r} but this host is {host!r}: bin/start runs "
            "only daemons whose host matches (boinc-facts §5); fix <host> if the project's "
            "other daemons do not start"
        )
    if text == original:
        return False
    import xml.etree.ElementTree as ET

    try:
        ET.fromstring(text)  # noqa: S314 - our own edit of the operator's file
    except ET.ParseError as exc:
        raise ConfigError(
            f"editing {path} would break it ({exc}); add the daemons by hand"
        ) from exc
    _write(path, text.encode())
    report.changes += changes
    return True


# --------------------------------------------------------------------------- entry point


def setup_project(
    project_dir: str | os.PathLike[str],
    *,
    interpreters: Mapping[str, str | os.PathLike[str]] | None = None,
    float_validator: bool = False,
    release: str | None = None,
    log: Callable[[str], None] | None = None,
) -> SetupReport:
    """Make the BOINC project at ``project_dir`` run boinc-executor jobs.

    Idempotent: a second run with the same release changes nothing. Never starts or
    stops the project; the report lists what the operator still has to do, and ends
    with what ``boinc-executor doctor`` finds.

    Args:
        project_dir: the project root (holding config.xml, made by make_project).
        interpreters: per BOINC platform, an archive of a relocatable Python to ship
            with that platform's app version instead of using the host's ``python3``.
        float_validator: validate with ``script_validator`` and ``pyboinc_compare``
            (tolerant float comparison of replicated results) instead of
            ``sample_bitwise_validator``.
        release: the boinc-executor release the app version is numbered by (default:
            this one); a higher one registers a new app version.
        log: called with a line per step as it happens (the CLI prints them).

    Returns:
        What was changed and what is left to do.

    Raises:
        ConfigError: not a BOINC project, no permission, bad interpreter archive, or
            one of the project's tools failed; the message says what to do.
        DatabaseError: the project's database cannot be reached.
    """
    say = log or (lambda _line: None)
    root = Path(project_dir).expanduser().resolve()
    release = release or __version__
    try:
        config = _require_project(root)
        _require_writable(config)
        shipped = {
            platform: Interpreter.from_archive(platform, Path(archive))
            for platform, archive in (interpreters or {}).items()
        }
        report = SetupReport(root=root, version_num=version_num(release))
        build_runner_zip(release)  # fail on a broken runner closure before changing anything
        _require_free_daemon_files(config, float_validator)
        _setup(
            config,
            release=release,
            shipped=shipped,
            float_validator=float_validator,
            report=report,
            say=say,
        )
        say("doctor")
        report.doctor = run_checks(root)
    except OSError as exc:
        raise ConfigError(
            f"setup-project stopped: {exc}. Fix that and run it again: the steps already "
            "done are kept and will be skipped"
        ) from exc
    return report


def _setup(
    config: ProjectConfig,
    *,
    release: str,
    shipped: Mapping[str, Interpreter],
    float_validator: bool,
    report: SetupReport,
    say: Callable[[str], None],
) -> None:
    from ..backends.db import Database

    root = config.root
    db = Database(config)
    try:
        say("app")
        app_id = _ensure_app(db, root, report)
        say("batch table")
        _ensure_batch_table(db, report)
        say("templates")
        for name, body in (
            (f"{APP_NAME}_in", input_template()),
            (f"{APP_NAME}_out", output_template()),
        ):
            _ensure_file(root / "templates" / name, body.encode(), report, "template")
        say("app versions")
        registered = _ensure_app_versions(
            db, config=config, app_id=app_id, release=release, interpreters=shipped, report=report
        )
    finally:
        db.close()
    say("daemon scripts")
    for name in DAEMON_SCRIPTS:
        what = "daemon script"
        with contextlib.suppress(OSError):
            if b"from boinc_executor.daemonconf import" in (root / "bin" / name).read_bytes():
                what += (
                    ", upgraded from an earlier release: it ran boinc_executor.daemonconf, "
                    "now boinc_executor.server.daemonconf"
                )
        _ensure_file(root / "bin" / name, daemon_script(name), report, what, executable=True)
        if daemon_source(name) is None:
            report.todo.append(
                f"the daemon module {name}.py is not installed with boinc_executor; "
                f"bin/{name} will fail until it is (reinstall boinc-executor)"
            )
    say("daemons")
    if _ensure_daemons(config, float_validator, report):
        report.todo.append(restart_advice(root))
    elif registered:
        report.todo.append(
            "no daemon restart needed: update_versions touched reread_db, so the feeder "
            "re-reads the app versions"
        )
