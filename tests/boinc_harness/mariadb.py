"""TEST STAND-IN for BOINC: the MariaDB server a BOINC project database lives on.

Not product code. Tests need a real MariaDB (strict mode, real UNIQUE keys, real
multi-row INSERT semantics) because those are what bite a BOINC client of the
database. ``ensure_server()`` uses the developer's/CI's server on 127.0.0.1:3306 when
``root`` can log in there without a password; otherwise it starts a private,
throw-away ``mariadbd`` on a free port in a temporary data directory, the way
pytest-mysql does, and stops it when the Python process exits.

Set ``BOINC_HARNESS_PRIVATE_MARIADB=1`` to force the private server.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock
import MySQLdb

PRIVATE_ENV = "BOINC_HARNESS_PRIVATE_MARIADB"
SCHEMA_FILE = Path(__file__).with_name("schema.sql")
START_TIMEOUT = 30.0


@dataclass(frozen=True)
class DbServer:
    """How to reach a MariaDB server (TCP on ``host``:``port``; socket when known)."""

    host: str
    port: int
    user: str
    password: str
    unix_socket: str | None = None

    def connect(self, db: str | None = None, **kwargs: Any) -> Any:
        """A new autocommit connection (BOINC's daemons and tools all run in autocommit)."""
        args: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "passwd": self.password,
            "charset": "utf8mb4",
            "autocommit": True,
            **kwargs,
        }
        if db is not None:
            args["db"] = db
        return MySQLdb.connect(**args)


class MariaDbUnavailable(RuntimeError):
    """No usable server and no way to start one (says what to install)."""


@dataclass
class PrivateServer:
    """A ``mariadbd`` this process started; ``stop()`` kills it and removes its data."""

    server: DbServer
    process: subprocess.Popen[bytes]
    datadir: Path

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s) and delete the data dir."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.datadir, ignore_errors=True)


_private: dict[str, PrivateServer] = {}  # the one private server of this process, if any


def _shared_server() -> DbServer | None:
    """The server on 127.0.0.1:3306 if root gets in without a password, else None."""
    candidate = DbServer(host="127.0.0.1", port=3306, user="root", password="")
    try:
        conn = candidate.connect(connect_timeout=2)
    except MySQLdb.Error:
        return None
    conn.close()
    return candidate


def ensure_server() -> DbServer:
    """A reachable MariaDB for BOINC databases: the shared one, or a private one."""
    if os.environ.get(PRIVATE_ENV) != "1":
        shared = _shared_server()
        if shared is not None:
            return shared
    handle = _private.get("server")
    if handle is None or handle.process.poll() is not None:
        handle = _private["server"] = start_private_server()
        atexit.register(stop_private_server)
    return handle.server


def stop_private_server() -> None:
    """Stop the private server ``ensure_server()`` started, if any."""
    handle = _private.pop("server", None)
    if handle is not None:
        handle.stop()


def _find_mariadbd() -> str | None:
    return shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin:/usr/local/sbin")


def _install_mariadb() -> str:
    """Install mariadb-server with apt (root only), the way a CI image would be prepared."""
    if os.geteuid() != 0:
        raise MariaDbUnavailable(
            "No MariaDB on 127.0.0.1:3306 for root without a password, and mariadbd is not "
            "installed. Install it (Debian/Ubuntu: sudo apt-get install -y mariadb-server) "
            "or start a server that root can reach without a password."
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # pytest-xdist workers may all get here: one installs, the others wait and find it.
    with filelock.FileLock(os.path.join(tempfile.gettempdir(), "boinc-harness-apt.lock")):
        if _find_mariadbd() is None:
            subprocess.run(["apt-get", "update"], check=True, env=env)
            subprocess.run(["apt-get", "install", "-y", "mariadb-server"], check=True, env=env)
    found = _find_mariadbd()
    if found is None:
        raise MariaDbUnavailable("apt-get installed mariadb-server but mariadbd is not found")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_private_server() -> PrivateServer:
    """Initialise a data dir and start ``mariadbd`` on 127.0.0.1:<free port>."""
    mariadbd = _find_mariadbd() or _install_mariadb()
    sbin = Path(mariadbd).parent
    install_db = shutil.which("mariadb-install-db") or str(sbin.parent / "bin/mariadb-install-db")
    as_root = ["--user=root"] if os.geteuid() == 0 else []
    datadir = Path(tempfile.mkdtemp(prefix="bh-mariadb-"))
    init = subprocess.run(
        [install_db, "--no-defaults", f"--datadir={datadir}",
         "--auth-root-authentication-method=normal", "--skip-test-db", *as_root],
        capture_output=True, text=True, check=False,
    )
    if init.returncode != 0:
        shutil.rmtree(datadir, ignore_errors=True)
        raise MariaDbUnavailable(f"mariadb-install-db failed:\n{init.stdout}\n{init.stderr}")
    sock = str(datadir / "sock")
    port = _free_port()
    log = (datadir / "mariadbd.log").open("wb")
    with log:
        process = subprocess.Popen(
            [mariadbd, "--no-defaults", f"--datadir={datadir}", f"--socket={sock}",
             f"--port={port}", "--bind-address=127.0.0.1", "--skip-networking=0",
             f"--pid-file={datadir / 'mariadbd.pid'}", f"--log-error={datadir / 'error.log'}",
             *as_root],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    server = DbServer(host="127.0.0.1", port=port, user="root", password="", unix_socket=sock)
    handle = PrivateServer(server=server, process=process, datadir=datadir)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            errors = (datadir / "error.log").read_text(errors="replace")
            handle.stop()
            raise MariaDbUnavailable(f"mariadbd exited with {process.returncode}:\n{errors}")
        try:
            server.connect(connect_timeout=1).close()
            return handle
        except MySQLdb.Error:
            if time.monotonic() > deadline:
                handle.stop()
                raise MariaDbUnavailable(
                    f"mariadbd did not accept connections within {START_TIMEOUT:.0f} s"
                ) from None
            time.sleep(0.1)


def _schema_statements() -> list[str]:
    """schema.sql split into statements (each ends with ';' at the end of a line)."""
    statements: list[str] = []
    current: list[str] = []
    for line in SCHEMA_FILE.read_text().splitlines():
        if line.lstrip().startswith("--") or not line.strip():
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            statements.append("\n".join(current).rstrip().rstrip(";"))
            current = []
    return statements


def create_boinc_database(server: DbServer, name: str) -> None:
    """Create database ``name`` with BOINC's tables and the admin user (fails if it exists)."""
    conn = server.connect()
    try:
        cur = conn.cursor()
        cur.execute(
            f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        )
        cur.execute(f"USE `{name}`")
        for statement in _schema_statements():
            cur.execute(statement)
    finally:
        conn.close()


def drop_database(server: DbServer, name: str) -> None:
    """Drop database ``name`` if it exists."""
    conn = server.connect()
    with contextlib.closing(conn):
        conn.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
