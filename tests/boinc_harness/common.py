"""TEST STAND-IN for BOINC: pieces every stand-in tool and daemon shares.

Not product code. BOINC's enum codes, the project's config.xml as the daemons read it,
the download/upload fan-out hash, BOINC's own command-line and ``split()`` tokenisers
(including the 1.6.x delimiter bug the script daemons suffer from), and small XML and
log helpers. Kept in one place so every stand-in agrees on them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import MySQLdb
import MySQLdb.cursors

INT_MAX = 2147483647

# result.server_state
UNSENT, IN_PROGRESS, OVER = 2, 4, 5
# result.outcome
SUCCESS, COULDNT_SEND, CLIENT_ERROR, NO_REPLY, DIDNT_NEED, VALIDATE_ERROR = 1, 2, 3, 4, 5, 6
# result.client_state
CS_FILES_DOWNLOADING, CS_COMPUTE_ERROR, CS_FILES_UPLOADED, CS_ABORTED = 1, 3, 5, 6
# result.validate_state
V_INIT, V_VALID, V_INVALID, V_NO_CHECK, V_INCONCLUSIVE, V_TOO_LATE = 0, 1, 2, 3, 4, 5
# file_delete_state / assimilate_state
FD_INIT, FD_READY, FD_DONE, FD_ERROR = 0, 1, 2, 3
AS_INIT, AS_READY, AS_DONE = 0, 1, 2
# workunit.error_mask bits
WU_COULDNT_SEND, WU_TOO_MANY_ERRORS, WU_TOO_MANY_SUCCESS = 1, 2, 4
WU_TOO_MANY_TOTAL, WU_CANCELLED, WU_NO_CANONICAL = 8, 16, 32
# workunit.transitioner_flags
TRANSITION_NO_NEW_RESULTS = 2
# assignment.target_type
ASSIGN_HOST, ASSIGN_USER = 1, 2

CLIENT_PLATFORM = "x86_64-pc-linux-gnu"
CLIENT_VERSION = "7.20.5"


@dataclass(frozen=True)
class Daemon:
    """One ``<daemon>`` of config.xml and the files sched/start gives it (facts §5, §9.1).

    The log is ``<output>`` or ``<program>.log``; the pid file ``<pid_file>`` or
    ``<program>.pid``; the lock ``<lock_file>``, else ``<output>.lock``, else
    ``<program>.lock``, where ``<program>`` is the basename of the command. Entries that
    end up with one lock file cannot both run.
    """

    cmd: str
    disabled: bool
    host: str = ""
    output: str = ""
    pid_file: str = ""
    lock_file: str = ""

    @property
    def program(self) -> str:
        words = self.cmd.split()
        return os.path.basename(words[0]) if words else ""

    @property
    def log_name(self) -> str:
        return self.output or self.program + ".log"

    @property
    def pid_name(self) -> str:
        return self.pid_file or self.program + ".pid"

    @property
    def lock_name(self) -> str:
        if self.lock_file:
            return self.lock_file
        return (self.output or self.program) + ".lock"


@dataclass(frozen=True)
class Config:
    """The parts of a project's config.xml the stand-ins use."""

    root: Path
    db_name: str
    db_host: str
    db_port: int
    db_user: str
    db_passwd: str
    download_dir: Path
    download_url: str
    upload_dir: Path
    upload_url: str
    fanout: int
    cache_md5_info: bool
    host: str
    master_url: str
    daemons: list[Daemon] = field(default_factory=list)

    @property
    def tmp_dir(self) -> Path:
        """Where daemons run (cwd ``<project>/tmp_<host>``)."""
        return self.root / f"tmp_{self.host}"

    @property
    def log_dir(self) -> Path:
        return self.root / f"log_{self.host}"

    @property
    def pid_dir(self) -> Path:
        """Where sched/start keeps the pid and lock files (``pid_<host>``)."""
        return self.root / f"pid_{self.host}"

    def download_path(self, name: str, *, create: bool = False) -> Path:
        """``<download_dir>/<fanout(name)>/<name>`` (dir_hier_path)."""
        return _hier_path(self.download_dir, name, self.fanout, create, 0o777)

    def upload_path(self, name: str, *, create: bool = False) -> Path:
        """``<upload_dir>/<fanout(name)>/<name>``."""
        return _hier_path(self.upload_dir, name, self.fanout, create, 0o771)

    def connect(self) -> Any:
        """An autocommit DictCursor connection to the project database."""
        host = self.db_host or "localhost"
        return MySQLdb.connect(
            host=host, port=self.db_port, user=self.db_user, passwd=self.db_passwd,
            db=self.db_name, charset="utf8mb4", autocommit=True,
            cursorclass=MySQLdb.cursors.DictCursor,
        )


class ConfigError(Exception):
    """config.xml is missing or unreadable (BOINC: "Can't parse config file")."""


def read_config(root: Path) -> Config:
    """Parse ``<root>/config.xml``. ``<db_host>host:port</db_host>`` and ``<db_port>`` both work."""
    path = root / "config.xml"
    try:
        doc = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise ConfigError(str(exc)) from exc
    conf = doc.find("config")
    if conf is None:
        raise ConfigError(f"{path}: no <config>")

    def text(tag: str, default: str = "") -> str:
        el = conf.find(tag)
        return (el.text or "").strip() if el is not None else default

    host, _, port = text("db_host").partition(":")
    daemons = [
        Daemon(cmd=(d.findtext("cmd") or "").strip(),
               disabled=(d.findtext("disabled") or "0").strip() not in ("", "0"),
               host=(d.findtext("host") or "").strip(),
               output=(d.findtext("output") or "").strip(),
               pid_file=(d.findtext("pid_file") or "").strip(),
               lock_file=(d.findtext("lock_file") or "").strip())
        for d in doc.iterfind("daemons/daemon")
    ]
    return Config(
        root=root, db_name=text("db_name"), db_host=host,
        db_port=int(text("db_port") or port or "3306"), db_user=text("db_user"),
        db_passwd=text("db_passwd"), download_dir=Path(text("download_dir")),
        download_url=text("download_url"), upload_dir=Path(text("upload_dir")),
        upload_url=text("upload_url"), fanout=int(text("uldl_dir_fanout", "1024")),
        cache_md5_info=text("cache_md5_info", "0") not in ("", "0"), host=text("host"),
        master_url=text("master_url"), daemons=daemons,
    )


def fanout_dir(name: str, fanout: int) -> str:
    """BOINC's dir_hier fan-out: md5 of the NAME, hex chars 1..7, mod fanout, lowercase hex."""
    digest = hashlib.md5(name.encode()).hexdigest()  # BOINC's hash, not for security
    return format(int(digest[1:8], 16) % fanout, "x")


_MADE_DIRS: set[str] = set()  # fan-out dirs this process made or found (they are never removed)


def _hier_path(top: Path, name: str, fanout: int, create: bool, mode: int) -> Path:
    """Fan-out dirs: 0777&umask like dir_hier_path; uploads 0771 like file_upload_handler.

    BOINC's C code tries the mkdir on every call; a bulk create_work here asks for
    two paths per job, so each directory is made once per process (pathlib's
    mkdir was a fifth of the stand-in's time per job).
    """
    directory = f"{top}/{fanout_dir(name, fanout)}"
    if create and directory not in _MADE_DIRS:
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, mode)
        _MADE_DIRS.add(directory)
    return Path(f"{directory}/{name}")


def parse_command_line(line: str) -> list[str]:
    """BOINC's parse_command_line(): whitespace-separated, a token may be '…' or "…" quoted.

    A quote only opens a token at its start and has no escapes; that is what create_work
    applies to --stdin lines and what the client applies to a WU's command line.
    """
    if "'" not in line and '"' not in line:
        return line.split()  # the same tokens (same isspace()) in one call: create_work's hot path
    tokens: list[str] = []
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c.isspace():
            i += 1
            continue
        if c in "'\"":
            end = line.find(c, i + 1)
            end = n if end < 0 else end
            tokens.append(line[i + 1:end])
            i = end + 1
            continue
        start = i
        while i < n and not line[i].isspace():
            i += 1
        tokens.append(line[start:i])
    return tokens


def boinc_split(text: str, delim: str = " ") -> list[str]:
    """lib/str_util.cpp split() as of 1.6.x: getline() tokens WITH the delimiter appended.

    Commit 55e16adf3a made every token end in the delimiter, so "myscript wu_id files"
    becomes ["myscript ", "wu_id ", "files "] and no token ever matches a keyword.
    """
    parts = text.split(delim)
    if parts and parts[-1] == "":
        parts.pop()  # getline() yields no empty token after a trailing delimiter
    return [p + delim for p in parts]


def xml_text(el: ET.Element) -> str:
    """One element as BOINC writes it back (``<tag/>`` for empty ones, no tail)."""
    el = _without_tail(el)
    return ET.tostring(el, encoding="unicode", short_empty_elements=True).replace(" />", "/>")


def _without_tail(el: ET.Element) -> ET.Element:
    copy = ET.Element(el.tag, el.attrib)
    copy.text = el.text
    copy.extend(list(el))
    return copy


def parse_fragment(text: str) -> ET.Element:
    """Parse BOINC XML that may have several top-level elements (e.g. a WU xml_doc)."""
    body = text.strip()
    if body.startswith("<?xml"):
        body = body[body.index("?>") + 2:]
    return ET.fromstring(f"<fragment>{body}</fragment>")


def daemon_log(config: Config, daemon: str, message: str) -> None:
    """Append a line to ``log_<host>/<daemon>.log`` in BOINC's log-line format."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    stamp += f".{int(now * 1e4) % 10000:04d}"
    config.log_dir.mkdir(exist_ok=True)
    with (config.log_dir / f"{daemon}.log").open("a") as log:
        log.write(f"{stamp} [pid {os.getpid()}] {message}\n")
