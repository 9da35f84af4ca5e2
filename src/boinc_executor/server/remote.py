"""Server side of remote submission: ``setup-project --remote``, ``grant-submit``, checks.

What a project needs before a laptop can submit over the web RPCs (boinc-facts §10,
docs/remote.md):

1. **Writable download hierarchy** (§10.0, §10.6.3): the web server's user (in the
   project's group) must create files in ``download/<fanout>/``. We make
   ``download/`` and *every* fan-out directory ``2775`` (setgid, group-writable)
   up front, so PHP never creates one itself (it would make it 2755, owned by the
   web server, and file_deleter, running as the project's user, could then not
   delete there).
2. **Templates** ``pyboinc_remote_in`` (``pyboinc_in`` plus the retry limits that
   submit_batch cannot carry; template values beat create_work's defaults, §3)
   and ``pyboinc_remote_out`` (``pyboinc_out`` with ``<no_delete/>`` on the
   output): file_deleter then leaves remote outputs in ``upload/``, where the
   authenticated ``get_output.php`` reads them (§10.4.2), instead of deleting
   them seconds after assimilation. :func:`purge_retired_outputs` deletes them
   once their batch is retired.
3. **PHP upload limits** at least PHP's defaults (upload_max_filesize 2M,
   post_max_size 8M, max_file_uploads 20), which the client keeps to (§10.1.10).
4. **Submit rights** per user: :func:`grant_submit` adds ``user_submit`` (with
   ``submit_all=0``) and ``user_submit_app`` for the pyboinc app (§10.6.4).

:func:`remote_checks` reports all of this for ``doctor``.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import ProjectConfig
from ..errors import ConfigError
from ..protocol.fileio import atomic_write
from ..protocol.names import APP_NAME
from .templates import input_template, output_template

if TYPE_CHECKING:
    from ..backends.db import Database

__all__ = [
    "RemoteCheck",
    "RemoteSetupReport",
    "grant_submit",
    "purge_retired_outputs",
    "remote_checks",
    "remote_input_template",
    "remote_output_template",
    "setup_remote",
]

REMOTE_IN = "pyboinc_remote_in"
REMOTE_OUT = "pyboinc_remote_out"
DIR_MODE = 0o2775
PURGED = 1  # batch.project_state once the kept outputs of a retired batch are deleted
# The limits the remote client keeps to (backends/remote.py); the project's may be larger.
PHP_LIMITS = {"upload_max_filesize": 2 << 20, "post_max_size": 8 << 20, "max_file_uploads": 20}
# Retry limits for remote jobs: JobParams' defaults, which submit_batch cannot send.
RETRY_LIMITS = {
    "min_quorum": 1,
    "target_nresults": 1,
    "max_error_results": 3,
    "max_total_results": 4,
    "max_success_results": 2,
}


def remote_input_template() -> str:
    """``pyboinc_in`` plus ``<workunit>`` retry limits (template values win, §3)."""
    limits = "".join(f"        <{k}>{v}</{k}>\n" for k, v in RETRY_LIMITS.items())
    return input_template().replace("    </workunit>", limits + "    </workunit>")


def remote_output_template() -> str:
    """``pyboinc_out`` whose output file_deleter keeps (``<no_delete/>``) until purged."""
    return output_template().replace(
        "<generated_locally/>", "<generated_locally/>\n        <no_delete/>"
    )


@dataclass
class RemoteSetupReport:
    """What :func:`setup_remote` changed and what is left to the operator."""

    changes: list[str] = field(default_factory=list)
    todo: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RemoteCheck:
    """One finding of :func:`remote_checks`: ``ok`` False means remote submission breaks."""

    name: str
    ok: bool
    message: str


# --------------------------------------------------------------------------- setup


def _fanout_dirs(config: ProjectConfig) -> list[Path]:
    return [config.download_dir / format(i, "x") for i in range(config.fanout)]


def _group_writable(path: Path) -> bool:
    mode = path.stat().st_mode
    return bool(mode & stat.S_IWGRP) and bool(mode & stat.S_ISGID)


def setup_remote(
    project_dir: str | os.PathLike[str], *, log: Callable[[str], None] | None = None
) -> RemoteSetupReport:
    """Prepare a project (already set up by ``setup-project``) for remote submission.

    Idempotent. Run as the project's owner.

    Raises:
        ConfigError: not a project, or a directory cannot be changed.
    """
    say = log or (lambda _line: None)
    config = ProjectConfig.load(Path(project_dir).expanduser().resolve())
    report = RemoteSetupReport()
    say("download hierarchy")
    made = changed = 0
    try:
        for directory in [config.download_dir, *_fanout_dirs(config)]:
            if not directory.is_dir():
                directory.mkdir(mode=0o775)
                made += 1
            if not _group_writable(directory):
                directory.chmod(directory.stat().st_mode | DIR_MODE)
                changed += 1
    except OSError as exc:
        raise ConfigError(
            f"cannot make {config.download_dir} and its fan-out directories group-writable: "
            f"{exc}; run setup-project --remote as the project's owner"
        ) from exc
    if made or changed:
        report.changes.append(
            f"download/: created {made} and opened {changed} fan-out directories to the "
            "project group (mode 2775), so the web server can store uploaded inputs"
        )
    say("templates")
    for name, body in (
        (REMOTE_IN, remote_input_template()),
        (REMOTE_OUT, remote_output_template()),
    ):
        path = config.root / "templates" / name
        if not path.is_file() or path.read_text() != body:
            atomic_write(path, body.encode(), mode=0o644, durable=True)
            report.changes.append(f"wrote templates/{name}")
    say("PHP limits")
    for check in _php_checks():
        if not check.ok:
            report.todo.append(check.message)
    report.todo.append(
        "give each remote submitter rights: boinc-executor grant-submit "
        f"{config.root} USER_ID_OR_EMAIL"
    )
    report.todo.append(
        f"delete outputs of retired remote batches now and then (cron): boinc-executor "
        f"purge-remote-outputs {config.root}"
    )
    return report


def _php_ini_values() -> dict[str, str] | None:
    """The web PHP's limits as ``php -r`` reports them (None without a php binary).

    The CLI may read another php.ini than Apache's mod_php; the check says so.
    """
    php = shutil.which("php")
    if php is None:
        return None
    code = ";".join(f'echo "{k}=".ini_get("{k}")."\\n"' for k in PHP_LIMITS) + ";"
    try:
        out = subprocess.run(
            [php, "-r", code], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def _bytes(value: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)\s*", value, re.IGNORECASE)
    if not match:
        return 0
    return int(match.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[match.group(2).upper()]


def _php_checks() -> list[RemoteCheck]:
    values = _php_ini_values()
    if values is None:
        return [
            RemoteCheck(
                "php limits",
                True,
                "no php binary here to check upload_max_filesize >= 2M, post_max_size >= 8M and "
                "max_file_uploads >= 20 in the web server's php.ini; check them by hand",
            )
        ]
    checks = []
    for key, minimum in PHP_LIMITS.items():
        raw = values.get(key, "")
        have = int(raw) if key == "max_file_uploads" and raw.isdigit() else _bytes(raw)
        ok = have >= minimum
        checks.append(
            RemoteCheck(
                f"php {key}",
                ok,
                f"PHP {key} is {raw or 'unset'}"
                + ("" if ok else f"; remote uploads need at least {minimum}: raise it in php.ini")
                + " (the php CLI's php.ini; Apache's may differ)",
            )
        )
    return checks


# --------------------------------------------------------------------------- rights


def _user_id(db: Database, user: str) -> int:
    column, value = ("id", int(user)) if user.isdigit() else ("email_addr", user)
    rows = db.query(f"SELECT id FROM user WHERE {column}=%s", (value,), doing="finding the user")  # noqa: S608 - fixed column
    if not rows:
        raise ConfigError(f"the project has no user with {column} {user!r}")
    return int(rows[0][0])


def grant_submit(project_dir: str | os.PathLike[str], user: str) -> str:
    """Let a BOINC user submit pyboinc jobs remotely: user_submit + user_submit_app rows.

    Args:
        project_dir: the project root.
        user: the user's ID or e-mail address.

    Returns:
        What was done, for the command line.

    Raises:
        ConfigError: no such user, or the pyboinc app is missing (run setup-project).
        DatabaseError: the database failed.
    """
    from ..backends.db import Database

    config = ProjectConfig.load(Path(project_dir).expanduser().resolve())
    with Database(config) as db:
        app_id = db.app_id(APP_NAME)
        if app_id is None:
            raise ConfigError(f"the project has no app {APP_NAME}; run setup-project first")
        user_id = _user_id(db, user)
        done = []
        if not db.query("SELECT user_id FROM user_submit WHERE user_id=%s", (user_id,)):
            db.execute(
                "INSERT INTO user_submit (user_id, quota, logical_start_time, submit_all, "
                "manage_all, max_jobs_in_progress) VALUES (%s, 0, 0, 0, 0, 0)",
                (user_id,),
            )
            done.append("user_submit row (submit_all=0)")
        if not db.query(
            "SELECT user_id FROM user_submit_app WHERE user_id=%s AND app_id=%s", (user_id, app_id)
        ):
            db.execute(
                "INSERT INTO user_submit_app (user_id, app_id, manage) VALUES (%s, %s, 0)",
                (user_id, app_id),
            )
            done.append(f"user_submit_app row for {APP_NAME}")
    if not done:
        return f"user {user_id} may already submit {APP_NAME} jobs; nothing changed"
    return f"user {user_id} may now submit {APP_NAME} jobs remotely: added {', '.join(done)}"


# --------------------------------------------------------------------------- outputs


def purge_retired_outputs(project_dir: str | os.PathLike[str]) -> int:
    """Delete the kept outputs of retired remote batches; returns how many files went.

    A batch is purged once (``batch.project_state`` is then 1), and only its work
    units that use ``pyboinc_remote_out`` are touched.
    """
    from ..backends.db import Database

    config = ProjectConfig.load(Path(project_dir).expanduser().resolve())
    removed = 0
    with Database(config) as db:
        batches = db.query(
            "SELECT id FROM batch WHERE state=4 AND project_state=0",
            doing="finding retired batches",
        )
        for (batch_id,) in batches:
            rows = db.query(
                "SELECT r.xml_doc_in FROM result r JOIN workunit w ON w.id=r.workunitid "
                "WHERE w.batch=%s AND w.result_template_file=%s",
                (batch_id, f"templates/{REMOTE_OUT}"),
                doing="listing outputs",
            )
            for (doc,) in rows:
                text = doc.decode(errors="replace") if isinstance(doc, bytes) else str(doc or "")
                for name in re.findall(r"<file_info>\s*<name>([^<]+)</name>", text):
                    path = config.upload_dir / config.fanout_dir(name) / name
                    try:
                        path.unlink()
                        removed += 1
                    except FileNotFoundError:
                        pass
            db.execute("UPDATE batch SET project_state=%s WHERE id=%s", (PURGED, batch_id))
    return removed


# --------------------------------------------------------------------------- doctor


def remote_checks(project_dir: str | os.PathLike[str]) -> list[RemoteCheck]:
    """What ``doctor`` reports about remote submission (no database needed)."""
    config = ProjectConfig.load(Path(project_dir).expanduser().resolve())
    checks = []
    closed = [
        d.name
        for d in [config.download_dir, *_fanout_dirs(config)]
        if not d.is_dir() or not _group_writable(d)
    ]
    checks.append(
        RemoteCheck(
            "download dirs group-writable",
            not closed,
            "download/ and every fan-out directory are 2775"
            if not closed
            else f"{len(closed)} download directories are missing or not group-writable "
            f"(e.g. {closed[0]}): uploads fail; run boinc-executor setup-project --remote",
        )
    )
    for name in (REMOTE_IN, REMOTE_OUT):
        path = config.root / "templates" / name
        checks.append(
            RemoteCheck(
                f"templates/{name}",
                path.is_file(),
                "present"
                if path.is_file()
                else "missing: run boinc-executor setup-project --remote",
            )
        )
    checks += _php_checks()
    return checks
