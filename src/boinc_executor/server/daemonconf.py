"""The server-side daemons of a pyboinc project: their config.xml entries and bin/ scripts.

BOINC runs an app's assimilator and validator as ``<daemon>`` entries of config.xml;
script_assimilator and script_validator call scripts that must live in the project's
``bin/`` and run with cwd ``<project>/tmp_<host>`` (boinc-facts §5). setup-project
installs ``bin/pyboinc_assimilator`` and ``bin/pyboinc_compare`` as tiny shell scripts
that run the daemon modules shipped with boinc-executor (``daemons/`` in a checkout,
``boinc_executor/_daemons`` in a wheel) with the interpreter that has boinc_executor
installed. This module is what those scripts import, so it stays small and imports
nothing server-side itself.
"""

from __future__ import annotations

import html
import re
import runpy
import shlex
import sys
from pathlib import Path

from .. import __version__
from ..errors import ConfigError
from .appversion import APP_NAME

__all__ = [
    "ASSIMILATOR_SCRIPT",
    "COMPARE_SCRIPT",
    "DAEMON_SCRIPTS",
    "daemon_commands",
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
_HOST_RE = re.compile(r"<host>(.*?)</host>", re.S)
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


def edit_daemons(text: str, commands: dict[str, str], host: str) -> tuple[str, list[str]]:
    """config.xml text with our daemons present exactly once; and what changed.

    Only ``<daemon>`` blocks of our app are touched, so the rest of the file keeps its
    bytes. A validator of another kind for our app is replaced (two validators would
    both judge the same results).
    """

    def role(block: str) -> str | None:
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

    found = _CLOSE_RE.search(text) or _EMPTY_RE.search(text)
    lead = found.group(1) if found else None
    unit = lead or "    "  # the file's own indentation step, as </daemons> shows it
    indent = ("    " if lead is None else lead) + unit

    def block(cmd: str) -> str:
        return (
            f"{indent}<daemon>\n{indent}{unit}<cmd>{html.escape(cmd, quote=False)}</cmd>\n"
            f"{indent}{unit}<host>{html.escape(host, quote=False)}</host>\n{indent}</daemon>\n"
        )

    changes: list[str] = []
    for what, cmd in commands.items():
        ours = [m for m in _DAEMON_RE.finditer(text) if role(m.group(0)) == what]
        if len(ours) == 1:
            cmd_m, host_m = _CMD_RE.search(ours[0].group(0)), _HOST_RE.search(ours[0].group(0))
            same_cmd = cmd_m is not None and html.unescape(cmd_m.group(1)).split() == cmd.split()
            if same_cmd and host_m is not None and host_m.group(1).strip() == host:
                continue
        if ours:
            first = ours[0]
            pieces, last = [], 0
            for m in ours:
                pieces.append(text[last : m.start()])
                if m is first:
                    pieces.append(block(cmd))
                last = m.end()
            text = "".join(pieces) + text[last:]
            changes.append(f"replaced the {what} daemon in config.xml: {cmd} (host {host})")
            continue
        close = _CLOSE_RE.search(text)
        empty = _EMPTY_RE.search(text)
        if close:
            # Before the line holding </daemons>, or right before the tag if it shares a line.
            text = text[: close.start()] + block(cmd) + text[close.start() :]
        elif empty:  # <daemons/>
            text = (
                text[: empty.start(2)]
                + f"<daemons>\n{block(cmd)}{empty.group(1) or ''}</daemons>"
                + text[empty.end(2) :]
            )
        else:
            end = text.rfind("</boinc>")
            if end < 0:
                raise ConfigError("config.xml has no </boinc>; is it a BOINC project's config.xml?")
            text = text[:end] + f"    <daemons>\n{block(cmd)}    </daemons>\n" + text[end:]
        changes.append(f"added the {what} daemon to config.xml: {cmd} (host {host})")
    return text, changes
