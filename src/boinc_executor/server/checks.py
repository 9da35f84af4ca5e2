"""The checks ``boinc-executor doctor`` runs (registered with :func:`.doctor.check`).

Each looks at one thing that fails silently on a real project (boinc-facts §5, §8, §9)
and says how to fix it. Order matters only for reading: entries first, then whether the
daemons run, then what they need.
"""

from __future__ import annotations

import grp
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from .. import __version__
from ..protocol.names import APP_NAME
from .access import User
from .appversion import ALL_PLATFORMS, version_num
from .daemonconf import DAEMON_SCRIPTS, daemon_files
from .doctor import Context, Finding, check
from .entries import DaemonEntry, collisions, is_locked

BATCHES_DIR = "pyboinc_batches"  # BoincBackend's default parent of batch directories
_OLD_MODULE = "boinc_executor.daemonconf"  # what launchers of releases before "layout:" ran
_SHOWN = 3  # paths named in one problem; the rest are counted


def ours(ctx: Context, role: str) -> list[DaemonEntry]:
    """config.xml's entries of our ``role`` ("assimilator"/"validator"), enabled or not."""
    return [e for e in ctx.entries if e.app == APP_NAME and e.program.endswith(role)]


def _restart_fix(ctx: Context, entry: DaemonEntry) -> str:
    return (
        f"cd {ctx.root} && bin/start, then `bin/status -v` must show it locked; if it "
        f"exits again, read {ctx.log_dir / entry.log_name}"
    )


def _listed(paths: list[str]) -> str:
    more = f" and {len(paths) - _SHOWN} more" if len(paths) > _SHOWN else ""
    return ", ".join(paths[:_SHOWN]) + more


@check("daemon entries")
def _entries(ctx: Context) -> Iterator[Finding]:
    setup = f"boinc-executor setup-project {ctx.root}"
    for role in ("assimilator", "validator"):
        found = ours(ctx, role)
        output, pid_file = daemon_files(role)
        if not found:
            yield Finding.failed(f"config.xml has no {role} daemon for app {APP_NAME}", setup)
        elif all(e.disabled for e in found):
            yield Finding.failed(
                f"the {role} daemon `{found[0].describe()}` is disabled in config.xml",
                f"remove its <disabled> element (or run {setup}), then bin/start",
            )
        elif (found[0].output, found[0].pid_file) != (output, pid_file):
            yield Finding.failed(
                f"the {role} daemon `{found[0].describe()}` has no <output>{output}</output> "
                f"and <pid_file>{pid_file}</pid_file> (an entry of an earlier release): "
                f"bin/start names its lock after the program, which another app's daemon "
                f"may hold",
                f"{setup} (it upgrades the entry), then restart the daemons",
            )
    for kind, name, first, second in collisions(ctx.entries, ctx.project_host):
        lost = "never runs" if kind == "lock" else "overwrites the other's"
        yield Finding.failed(
            f"`{second.describe()}` shares the {kind} file {name} with "
            f"`{first.describe()}`: the second {lost}",
            f"give `{second.describe()}` its own <output>, <pid_file> (and <lock_file>) in "
            "config.xml, then restart the daemons",
        )


def _running(ctx: Context, what: str, found: list[DaemonEntry], missing_fix: str) -> Finding:
    here = [e for e in found if e in ctx.here()]
    if not here:
        return Finding.failed(f"no enabled {what} daemon runs on this host", missing_fix)
    entry = here[0]
    lock = ctx.pid_dir / entry.lock_name
    for kind, name, first, second in collisions(ctx.entries, ctx.project_host):
        if kind == "lock" and entry in (first, second):
            other = first if second == entry else second
            return Finding.failed(
                f"the {what} `{entry.describe()}` shares its lock {name} with "
                f"`{other.describe()}`: only the one started first runs, the other exits at "
                "once (bin/status -v shows both running and locked, with one pid)",
                f"boinc-executor setup-project {ctx.root} (it gives our daemons their own "
                "<output> and <pid_file>), then restart the daemons",
            )
    if is_locked(lock):
        return Finding.passed()
    return Finding.failed(
        f"the {what} `{entry.describe()}` is not running: its lock {lock} is not locked "
        '(bin/status -v\'s "running" column may still say running: it trusts stale pid files)',
        _restart_fix(ctx, entry),
    )


@check("transitioner running")
def _transitioner(ctx: Context) -> Finding:
    found = [e for e in ctx.entries if e.program == "transitioner"]
    return _running(ctx, "transitioner", found, "add `transitioner -d 3` to config.xml's <daemons>")


@check("feeder running")
def _feeder(ctx: Context) -> Finding:
    found = [e for e in ctx.entries if e.program == "feeder"]
    return _running(ctx, "feeder", found, "add `feeder -d 3` to config.xml's <daemons>")


@check("validator running")
def _validator(ctx: Context) -> Finding:
    return _running(
        ctx, "validator", ours(ctx, "validator"), f"boinc-executor setup-project {ctx.root}"
    )


@check("assimilator running")
def _assimilator(ctx: Context) -> Finding:
    return _running(
        ctx, "assimilator", ours(ctx, "assimilator"), f"boinc-executor setup-project {ctx.root}"
    )


@check("app versions")
def _app_versions(ctx: Context) -> Iterator[Finding]:
    db = ctx.db()
    setup = f"boinc-executor setup-project {ctx.root}"
    app = db.query(
        "SELECT id, deprecated FROM app WHERE name=%s", (APP_NAME,), doing="looking up the app"
    )
    if not app:
        yield Finding.failed(f"the project has no app {APP_NAME}", setup)
        return
    app_id, deprecated = int(app[0][0]), int(app[0][1])
    if deprecated:
        yield Finding.failed(
            f"the app {APP_NAME} is deprecated: the scheduler sends none of its jobs",
            f"UPDATE app SET deprecated=0 WHERE id={app_id}; then touch {ctx.root}/reread_db",  # noqa: S608 - shown, not run
        )
    rows = db.query(
        "SELECT p.name, v.id, v.version_num, v.deprecated FROM app_version v "
        "JOIN platform p ON p.id=v.platformid WHERE v.appid=%s AND v.plan_class=''",
        (app_id,),
        doing="looking up app versions",
    )
    wanted = version_num(__version__)
    for platform in ALL_PLATFORMS:
        mine = [r for r in rows if r[0] == platform]
        live = [int(r[2]) for r in mine if not int(r[3])]
        if not mine:
            yield Finding.failed(
                f"no app version of {APP_NAME} is registered for {platform}", setup
            )
        elif not live:
            yield Finding.failed(
                f"every app version of {APP_NAME} for {platform} is deprecated: hosts of "
                "that platform get no jobs",
                f"{setup}, or UPDATE app_version SET deprecated=0 for the newest one; "  # noqa: S608
                f"then touch {ctx.root}/reread_db",
            )
        elif max(live) < wanted:
            newer = [r for r in mine if int(r[2]) >= wanted]
            state = "deprecated" if newer else "not registered"
            yield Finding.failed(
                f"{platform} hosts get app version {max(live)} (an older release's runner): "
                f"this release's version {wanted} is {state}",
                (
                    f"UPDATE app_version SET deprecated=0 WHERE id={newer[0][1]}; then touch "  # noqa: S608
                    f"{ctx.root}/reread_db"
                    if newer
                    else setup
                ),
            )


@check("host name")
def _host(ctx: Context) -> Iterator[Finding]:
    if ctx.project_host != ctx.host:
        yield Finding.failed(
            f"config.xml's <host> is {ctx.project_host!r} but `hostname -s` is {ctx.host!r}: "
            "bin/start runs only daemons whose host matches",
            f"set <host>{ctx.host}</host> in {ctx.root}/config.xml (and rename log_/pid_/tmp_ "
            "dirs to match), then bin/start",
        )
    for e in ctx.entries:
        if e.app == APP_NAME and e.host and e.host != ctx.host and not e.disabled:
            yield Finding.failed(
                f"the daemon `{e.describe()}` has <host>{e.host}</host>, not {ctx.host!r}",
                f"boinc-executor setup-project {ctx.root} on this host",
            )


def _denied(user: User, paths: list[Path], modes: str) -> list[str]:
    return [str(p) for p in paths if not user.may(p, modes)]


@check("submitting user")
def _submitter(ctx: Context) -> Iterator[Finding]:
    user = ctx.submit_user
    download = ctx.config.download_dir
    dirs = [download, *sorted(p for p in download.iterdir() if p.is_dir())]
    denied = _denied(user, dirs, "rwx")
    if denied:
        yield Finding.failed(
            f"{user.name} cannot create files in {_listed(denied)}: the executor stages "
            "every job's inputs there",
            f"make download/ and its fan-out dirs group-writable for a group {user.name} is "
            f"in: chgrp -R GROUP {download} && chmod -R g+rwX {download} && "
            f"find {download} -type d -exec chmod g+s {{}} +",
        )
    create_work = ctx.root / "bin" / "create_work"
    needed = [(create_work, "rx"), (ctx.root / "config.xml", "r")]
    needed += [(ctx.root / "templates" / f"{APP_NAME}_{k}", "r") for k in ("in", "out")]
    cannot = [f"{p} ({m})" for p, m in needed if not user.may(p, m)]
    if cannot:
        yield Finding.failed(
            f"{user.name} cannot run create_work: no access to {_listed(cannot)}",
            f"add {user.name} to the project's group (usermod -a -G GROUP {user.name}), or "
            "submit as the project's user",
        )


@check("batch directories")
def _batch_dirs(ctx: Context) -> Iterator[Finding]:
    from ..backends.db import BATCH_TABLE

    user = ctx.daemon_user
    default = ctx.root / BATCHES_DIR
    if default.exists() and not user.may(default, "rwx"):
        yield Finding.failed(
            f"the daemon user {user.name} cannot write {default}, where batch "
            "directories go by default",
            f"chown {user.name} {default} (or chmod g+rwx it for {user.name}'s group)",
        )
    db = ctx.db()
    if not db.has_table(BATCH_TABLE):
        yield Finding.failed(
            f"the table {BATCH_TABLE} is missing", f"boinc-executor setup-project {ctx.root}"
        )
        return
    rows = db.query(
        f"SELECT batch_dir FROM {BATCH_TABLE} ORDER BY batch_id DESC LIMIT 200",  # noqa: S608
        doing="listing batch directories",
    )
    new_dirs = [Path(_text(r[0])) / "new" for r in rows]
    denied = _denied(user, [d for d in new_dirs if d.is_dir()], "rwx")
    if denied:
        yield Finding.failed(
            f"the daemon user {user.name} cannot write {_listed(denied)}: the assimilator "
            "cannot deliver those batches' results, and stops",
            f"give {user.name} write access (chmod g+rwxs with a shared group, or put batch "
            f"directories under {default})",
        )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@check("web server group")
def _web_group(ctx: Context) -> Iterator[Finding]:
    if not ctx.remote:
        return
    if ctx.web_user is None:
        yield Finding.failed(
            "the project takes remote submissions but no web server user was found",
            "run doctor with --web-user USER (the user Apache runs as)",
        )
        return
    gid = (ctx.root / "upload").stat().st_gid
    if not ctx.web_user.in_group(gid):
        try:
            group = grp.getgrgid(gid).gr_name
        except KeyError:
            group = str(gid)
        yield Finding.failed(
            f"the web server user {ctx.web_user.name} is not in the project's group {group}: "
            "file_upload_handler and create_work run from remote submission fail",
            f"usermod -a -G {group} {ctx.web_user.name}, then restart the web server",
        )


def _crontab(user: User) -> tuple[str | None, str]:
    """The user's crontab text (None when it cannot be read), and why not."""
    tool = shutil.which("crontab")
    if tool is None:
        return None, "there is no crontab command on this host"
    me = User.current()
    if me.uid == user.uid:
        cmd = [tool, "-l"]
    elif me.uid == 0:
        cmd = [tool, "-l", "-u", user.name]
    else:
        return None, f"only {user.name} or root can read {user.name}'s crontab"
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=30, check=False, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{' '.join(cmd)} failed: {exc}"
    return (done.stdout if done.returncode == 0 else ""), ""


@check("cron restarts daemons")
def _cron(ctx: Context) -> Iterator[Finding]:
    user = ctx.daemon_user
    line = f"*/5 * * * * cd {ctx.root} && bin/start --cron"
    text, why = _crontab(user)
    if text is None:
        yield Finding.failed(
            f"cannot check for a `bin/start --cron` line: {why}",
            f"run doctor as {user.name} or root; the line is: {line}",
        )
        return
    for raw in text.splitlines():
        entry = raw.strip()
        if entry.startswith("#") or "bin/start" not in entry or "--cron" not in entry:
            continue
        if str(ctx.root) in entry:
            return
    yield Finding.failed(
        f"{user.name}'s crontab has no `bin/start --cron` line for {ctx.root}: nothing "
        "restarts a daemon that exits (the assimilator exits on any handler error)",
        f"crontab -e as {user.name} and add: {line}",
    )


def _launcher_python(script: Path) -> str | None:
    """The interpreter a bin/ launcher execs (``exec PYTHON -c ...``), or None."""
    for line in script.read_text(errors="replace").splitlines():
        if line.startswith("exec "):
            try:
                argv = shlex.split(line)
            except ValueError:
                return None
            return argv[1] if len(argv) > 1 else None
    return None


@check("daemon scripts")
def _scripts(ctx: Context) -> Iterator[Finding]:
    user = ctx.daemon_user
    setup = f"boinc-executor setup-project {ctx.root}"
    for name in DAEMON_SCRIPTS:
        script = ctx.root / "bin" / name
        if not script.is_file():
            yield Finding.failed(f"bin/{name} is missing", setup)
            continue
        if not user.may(script, "rx"):
            yield Finding.failed(
                f"the daemon user {user.name} cannot run bin/{name}", f"chmod a+rx {script}"
            )
        text = script.read_text(errors="replace")
        if f"from {_OLD_MODULE} import" in text:
            yield Finding.failed(
                f"bin/{name} is from an earlier release: it imports {_OLD_MODULE}, which this "
                "release moved to boinc_executor.server.daemonconf, so every call fails",
                setup,
            )
        python = _launcher_python(script)
        if python is None:
            yield Finding.failed(f"bin/{name} names no interpreter (no `exec` line)", setup)
        elif not os.path.exists(python):
            yield Finding.failed(
                f"bin/{name} runs {python}, which does not exist (a removed or moved venv?)",
                f"{setup} with the Python that has boinc-executor installed",
            )
        elif not user.may(Path(python), "rx"):
            yield Finding.failed(
                f"the daemon user {user.name} cannot run {python}, the interpreter bin/{name} "
                "names (a venv in a private home directory?)",
                f"install boinc-executor where {user.name} can read it (e.g. a venv owned by "
                f"{user.name}) and run setup-project with it",
            )
