"""The server-side daemons of a pyboinc project: their config.xml entries and bin/ scripts.

BOINC runs an app's assimilator and validator as ``<daemon>`` entries of config.xml;
script_assimilator and script_validator call scripts that must live in the project's
``bin/`` and run with cwd ``<project>/tmp_<host>`` (boinc-facts §5). setup-project
installs ``bin/pyboinc_assimilator`` and ``bin/pyboinc_compare`` as tiny shell scripts
that run the daemon modules shipped with boinc-executor (``daemons/`` in a checkout,
``boinc_executor/_daemons`` in a wheel) with the interpreter that has boinc_executor
installed. Those scripts import this module (for :func:`run_daemon_script`) on every
call BOINC makes, so it imports neither the database layer nor the executor: only the
app name (:mod:`.appversion`) and the entry parser (:mod:`.entries`).
"""

from __future__ import annotations

import html
import re
import runpy
import shlex
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from .. import __version__
from ..errors import ConfigError
from ..protocol.names import APP_NAME
from .entries import DaemonEntry, entries_of

__all__ = [
    "ASSIMILATOR_SCRIPT",
    "COMPARE_SCRIPT",
    "DAEMON_SCRIPTS",
    "daemon_commands",
    "daemon_files",
    "daemon_script",
    "daemon_source",
    "edit_daemons",
    "run_daemon_script",
]

ASSIMILATOR_SCRIPT = "pyboinc_assimilator"
COMPARE_SCRIPT = "pyboinc_compare"
DAEMON_SCRIPTS = (ASSIMILATOR_SCRIPT, COMPARE_SCRIPT)
_DAEMON_RE = re.compile(r"[ \t]*<daemon>.*?</daemon>[ \t]*\n?", re.S)
_CMD_RE = re.compile(r"<cmd>(.*?)</cmd>", re.S)
# </daemons> (group 2) and the indentation of its line when it starts the line (group 1).
_CLOSE_RE = re.compile(r"(?:^([ \t]*))?(</daemons>)", re.M)
_EMPTY_RE = re.compile(r"(?:^([ \t]*))?(<daemons\s*/>)", re.M)


def daemon_commands(*, float_validator: bool = False) -> dict[str, str]:
    """The ``<cmd>`` of our assimilator and validator daemons, by role.

    The script names are bare: script_assimilator and script_validator of BOINC 1.6.x
    drop every keyword token (boinc-facts §5), while a bare name gets the defaults
    (``<wu_id> <files>``; ``<files>`` for the init script, ``<files> <files2>`` for the
    compare script).
    """
    if float_validator:
        validator = (
            f"script_validator -d 3 --app {APP_NAME} --sleep_interval 1 "
            f"--init_script {COMPARE_SCRIPT} --compare_script {COMPARE_SCRIPT}"
        )
    else:
        validator = f"sample_bitwise_validator -d 3 --app {APP_NAME} --sleep_interval 1"
    return {
        "assimilator": (
            f"script_assimilator -d 3 --app {APP_NAME} --sleep_interval 1 "
            f"--script {ASSIMILATOR_SCRIPT}"
        ),
        "validator": validator,
    }


def daemon_script(name: str) -> bytes:
    """bin/<name>: runs daemons/<name>.py with the interpreter that has boinc_executor."""
    code = (
        "import sys; from boinc_executor.server.daemonconf import run_daemon_script; "
        f'sys.exit(run_daemon_script("{name}", sys.argv[1:]))'
    )
    return (
        "#!/bin/sh\n"
        f"# Installed by boinc-executor setup-project {__version__}: BOINC runs this from\n"
        "# <project>/tmp_<host> as ../bin/" + name + "; it runs boinc-executor's daemon\n"
        "# module with the Python that has boinc_executor installed.\n"
        f'exec {shlex.quote(sys.executable)} -c {shlex.quote(code)} "$@"\n'
    ).encode()


def daemon_source(name: str) -> Path | None:
    """daemons/<name>.py: in a wheel it is boinc_executor/_daemons, in a checkout ../../daemons."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (
        package / "_daemons" / f"{name}.py",
        package.parents[1] / "daemons" / f"{name}.py",
    ):
        if candidate.is_file():
            return candidate
    return None


def run_daemon_script(name: str, args: list[str]) -> int:
    """Run the daemon module ``name`` as a script with ``args`` (what bin/<name> calls).

    Returns its exit status. A missing module is an error (non-zero), which stops
    script_assimilator until ``bin/start``: better than marking work units done unread.
    """
    path = daemon_source(name)
    if path is None:
        print(
            f"boinc-executor: the daemon module {name}.py is not installed with "
            f"boinc_executor ({Path(__file__).resolve().parents[1]}); reinstall boinc-executor",
            file=sys.stderr,
        )
        return 2
    sys.argv = [str(path), *args]
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    return 0


def daemon_files(role: str) -> tuple[str, str]:
    """``(<output>, <pid_file>)`` of our daemon ``role``, both named after pyboinc.

    Without them bin/start would name the lock, pid and log files after the program
    (``sample_bitwise_validator.lock``...), shared with any other app's daemon of the
    same program: ours would find the lock held and never run (boinc-facts §9.1).
    """
    stem = f"{APP_NAME}_{role}"
    return f"{stem}.log", f"{stem}.pid"


def _role(block: str) -> str | None:
    """``assimilator``/``validator`` for a ``<daemon>`` block serving our app, else None."""
    match = _CMD_RE.search(block)
    if not match:
        return None
    try:
        argv = shlex.split(html.unescape(match.group(1)))
    except ValueError:
        return None
    if not argv or not any(
        a == APP_NAME and argv[i - 1] in ("--app", "-app") for i, a in enumerate(argv) if i
    ):
        return None
    program = Path(argv[0]).name
    if "assimilator" in program:
        return "assimilator"
    if "validator" in program:
        return "validator"
    return None


def _tag(block: str, tag: str) -> str | None:
    match = re.search(rf"<{tag}>(.*?)</{tag}>", block, re.S)
    return html.unescape(match.group(1)).strip() if match else None


def _check_collisions(text: str, commands: dict[str, str], host: str) -> None:
    """Refuse when another entry would take the lock, pid or log file of one of ours.

    We cannot rename the operator's files for them: their entry may be what other
    tools or crontabs know. Our own older entries are replaced, so they do not count.
    """
    try:
        ET.fromstring(text)  # noqa: S314 - the operator's own project file
    except ET.ParseError as exc:
        raise ConfigError(f"config.xml is not valid XML ({exc}); fix it first") from exc
    blocks = [m.group(0) for m in _DAEMON_RE.finditer(text) if _role(m.group(0)) is None]
    theirs = [
        e
        for e in map(_entry_of_block, blocks)
        # An entry without <host> may run here (<host> mismatches are doctor's to report).
        if e is not None and not e.disabled and e.host in ("", host)
    ]
    for role, cmd in commands.items():
        output, pid_file = daemon_files(role)
        ours = DaemonEntry(cmd=cmd, host=host, output=output, pid_file=pid_file)
        for other in theirs:
            for kind, mine, its in (
                ("lock", ours.lock_name, other.lock_name),
                ("pid", ours.pid_name, other.pid_name),
                ("log", ours.log_name, other.log_name),
            ):
                if mine == its:
                    raise ConfigError(
                        f"config.xml's daemon `{other.describe()}` uses the {kind} file "
                        f"{its}, which the pyboinc {role} needs: bin/start would run only one "
                        f"of them. Give that entry its own <output>, <pid_file> and "
                        f"<lock_file> (e.g. named after its app), then run setup-project again"
                    )


def edit_daemons(text: str, commands: dict[str, str], host: str) -> tuple[str, list[str]]:
    """config.xml text with our daemons present exactly once; and what changed.

    Each of our entries carries its own ``<output>`` and ``<pid_file>`` (see
    :func:`daemon_files`); entries of older releases that lack them are upgraded, and
    the change says which shared file kept the old entry from running. Only
    ``<daemon>`` blocks of our app are touched, so the rest of the file keeps its bytes.
    A validator of another kind for our app is replaced (two validators would both
    judge the same results).

    Raises:
        ConfigError: another daemon entry uses a lock, pid or log file ours need.
    """
    _check_collisions(text, commands, host)
    found = _CLOSE_RE.search(text) or _EMPTY_RE.search(text)
    lead = found.group(1) if found else None
    unit = lead or "    "  # the file's own indentation step, as </daemons> shows it
    indent = ("    " if lead is None else lead) + unit

    def block(what: str, cmd: str) -> str:
        output, pid_file = daemon_files(what)
        inner = [("cmd", cmd), ("host", host), ("output", output), ("pid_file", pid_file)]
        body = "".join(
            f"{indent}{unit}<{tag}>{html.escape(value, quote=False)}</{tag}>\n"
            for tag, value in inner
        )
        return f"{indent}<daemon>\n{body}{indent}</daemon>\n"

    def current(block_text: str, what: str, cmd: str) -> bool:
        cmd_text = _tag(block_text, "cmd")
        return (
            cmd_text is not None
            and cmd_text.split() == cmd.split()
            and _tag(block_text, "host") == host
            and (_tag(block_text, "output"), _tag(block_text, "pid_file")) == daemon_files(what)
            and _tag(block_text, "lock_file") is None
            and _tag(block_text, "disabled") in (None, "0")
        )

    others = [m.group(0) for m in _DAEMON_RE.finditer(text) if _role(m.group(0)) is None]
    changes: list[str] = []
    for what, cmd in commands.items():
        ours = [m for m in _DAEMON_RE.finditer(text) if _role(m.group(0)) == what]
        if len(ours) == 1 and current(ours[0].group(0), what, cmd):
            continue
        if ours:
            first = ours[0]
            pieces, last = [], 0
            for m in ours:
                pieces.append(text[last : m.start()])
                if m is first:
                    pieces.append(block(what, cmd))
                last = m.end()
            text = "".join(pieces) + text[last:]
            output, pid_file = daemon_files(what)
            changes.append(
                f"replaced the {what} daemon in config.xml: {cmd} (host {host}, "
                f"output {output}, pid_file {pid_file}{_upgrade_note(first.group(0), others)})"
            )
            continue
        close = _CLOSE_RE.search(text)
        empty = _EMPTY_RE.search(text)
        if close:
            # Before the line holding </daemons>, or right before the tag if it shares a line.
            text = text[: close.start()] + block(what, cmd) + text[close.start() :]
        elif empty:  # <daemons/>
            text = (
                text[: empty.start(2)]
                + f"<daemons>\n{block(what, cmd)}{empty.group(1) or ''}</daemons>"
                + text[empty.end(2) :]
            )
        else:
            end = text.rfind("</boinc>")
            if end < 0:
                raise ConfigError("config.xml has no </boinc>; is it a BOINC project's config.xml?")
            text = text[:end] + f"    <daemons>\n{block(what, cmd)}    </daemons>\n" + text[end:]
        output, pid_file = daemon_files(what)
        changes.append(
            f"added the {what} daemon to config.xml: {cmd} (host {host}, "
            f"output {output}, pid_file {pid_file})"
        )
    return text, changes


def _upgrade_note(old_block: str, others: list[str]) -> str:
    """What the replaced entry lacked, and whose lock it shared, for the change line."""
    old = _entry_of_block(old_block)
    if old is None or (old.output and old.pid_file):
        return ""
    rivals = [
        o.describe()
        for o in (_entry_of_block(b) for b in others)
        if o is not None and not o.disabled and o.lock_name == old.lock_name
    ]
    note = f"; an earlier release's entry, upgraded: it had used the lock {old.lock_name}"
    if rivals:
        note += f", the lock of `{rivals[0]}`, so it could never run"
    return note


def _entry_of_block(block: str) -> DaemonEntry | None:
    try:
        doc = ET.fromstring(f"<boinc><daemons>{block}</daemons></boinc>")  # noqa: S314
    except ET.ParseError:
        return None
    found = entries_of(doc)
    return found[0] if found else None
