"""BOINC assimilator handler: deliver a work unit's result into its batch directory.

BOINC 1.6.x's ``script_assimilator --script pyboinc_assimilator`` runs this (its launcher
``<project>/bin/pyboinc_assimilator`` runs the script ``daemons/pyboinc_assimilator.py``,
which calls :func:`main`) with cwd ``<project>/tmp_<host>``, once per finished work unit,
in one of two forms (boinc-facts §5; named tokens are broken in 1.6.x,
so only the bare-name form is usable)::

    ../bin/pyboinc_assimilator  <wu_id> <output path> [<more paths>...]
    ../bin/pyboinc_assimilator --error <error_mask> <wu_name> <wu_id> <batch_id>

The launcher may put ``--project DIR`` first; otherwise the project root is the parent of
cwd (or cwd itself). Everything else comes from the database
by work-unit ID: the WU's name and batch, the canonical result's name, the last result's
exit status and stderr, and BATCH_DIR from ``pyboinc_batch``. The record lands in
``BATCH_DIR/new/<wu_name>.<tag>.result`` (docs/protocol.md), written atomically.

Exit 0 tells BOINC the work unit is assimilated, and file_deleter then deletes its output
within seconds. So 0 is only returned when the record was delivered, or when nothing can
ever want it: a volunteer's bad, oversized or symlinked output (delivered as an error
record instead), a name that is not a job of its batch, an unknown batch, a BATCH_DIR that
was removed. Every fault that would lose a result someone still waits for exits nonzero
and stops the daemon, so the work unit is retried after ``bin/start`` (1: database or
config.xml unusable, disk full, uploads unreadable by the daemon user, a BATCH_DIR whose
``new/`` is missing, not a plain directory or not writable; 2: unusable arguments).
The output is copied byte for byte; its payload is never decoded here.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .. import errors, protocol
from ..errors import ProtocolError

if TYPE_CHECKING:
    from ..backends.db import Database

__all__ = ["assimilate", "main", "parse_args"]

NAME = "pyboinc_assimilator"
CLIENT_ERROR = 3  # result.outcome
# I/O failures that are the server's, not a volunteer's or one batch's: stop, so the WU is
# retried after bin/start instead of being marked done with its result lost.
_SERVER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}
_STDERR_TXT = re.compile(r"<stderr_txt>\n?(.*?)\n?</stderr_txt>", re.DOTALL)


class Undeliverable(Exception):
    """A record that someone waits for cannot be placed in its BATCH_DIR/new/."""


def log(message: str) -> None:
    """One line on stderr, which script_assimilator sends to its log."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{stamp} [{NAME}] {message}", file=sys.stderr, flush=True)


def project_root(option: str | None) -> Path:
    """``--project``, else the project around cwd (``tmp_<host>``, or the root itself)."""
    if option:
        return Path(option).resolve()
    for candidate in (Path.cwd().parent, Path.cwd()):
        if (candidate / "config.xml").is_file():
            return candidate
    return Path.cwd().parent


def failure(
    wu_name: str, message: str, mask: int = 0, status: int | None = None, tail: str = ""
) -> bytes:
    """An error record that the executor turns into a ``WorkunitError``."""
    info = protocol.failure_info(
        "WorkunitError", message, error_mask=mask, exit_status=status, stderr_tail=tail
    )
    return protocol.encode_error_record(wu_name, info, stderr=tail, source="assimilator")


def error_record(db: Database, wu_id: int, wu_name: str, mask: int) -> bytes:
    """The failure of a WU BOINC gave up on, with the last failed result's details."""
    rows = db.query(
        "SELECT exit_status, stderr_out FROM result WHERE workunitid=%s "
        "ORDER BY outcome=%s DESC, id DESC LIMIT 1",
        (wu_id, CLIENT_ERROR),
        doing="reading the results of the work unit",
    )
    status = int(rows[0][0]) if rows else None
    text = rows[0][1] if rows else b""
    text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text or "")
    found = _STDERR_TXT.search(text)  # the app's own stderr inside the client's XML
    tail = protocol.tail(found.group(1) if found else text)
    message = f"BOINC gave up on work unit {wu_name} (error_mask {mask}: "
    message += f"{errors.describe_error_mask(mask)})"
    if status:
        message += f"; the last result exited with status {status}"
    return failure(wu_name, message, mask, status, tail)


def output_record(wu_name: str, paths: list[str], upload_dir: Path) -> tuple[bytes, str | None]:
    """The canonical output's bytes, or a refusal record and the reason."""
    path = Path(paths[0]) if paths else None
    try:
        if path is None:
            raise ProtocolError("the canonical result has no output file")
        if not os.path.realpath(path.parent).startswith(os.path.realpath(upload_dir) + os.sep):
            raise ProtocolError(f"{path} is outside the upload directory {upload_dir}")
        data = protocol.read_bounded(path, protocol.DEFAULT_MAX_RESULT_BYTES)
        header, _ = protocol.decode_frame(data, "result")
        if header.get("job") != wu_name:
            raise ProtocolError(f"the record names job {header.get('job')!r}")
    except ProtocolError as exc:
        why = str(exc)
    except OSError as exc:
        if exc.errno in _SERVER_ERRNOS or exc.errno == errno.EACCES:  # the upload dir's fault
            raise
        why = f"cannot read {path}: {exc}"
    except Exception as exc:  # volunteer bytes (say, a deeply nested header) never stop us
        why = f"unreadable record header ({type(exc).__name__})"
    else:
        return data, None
    message = f"the output of work unit {wu_name} was refused by the assimilator: {why}"
    return failure(wu_name, message), why


def assimilate(db: Database, args: list[str], upload_dir: Path) -> int:
    """Handle one work unit; returns the exit status for script_assimilator."""
    failed = args[0] == "--error"
    wu_id = int(args[-2] if failed else args[0])
    rows = db.query(
        "SELECT name, batch, canonical_resultid, error_mask FROM workunit WHERE id=%s",
        (wu_id,),
        doing="reading the work unit",
    )
    if not rows:
        log(f"[WU#{wu_id}] no such work unit in the database: nothing to deliver")
        return 0
    wu_name, batch_id, canonical, mask = str(rows[0][0]), int(rows[0][1]), rows[0][2], rows[0][3]
    where = f"[WU#{wu_id} {wu_name}]"
    parsed = protocol.parse_job_name(wu_name)
    discarded = "not delivered, and BOINC deletes its output"
    if parsed is None or parsed[1] != batch_id:
        log(f"{where} not a boinc-executor job of batch {batch_id}: {discarded}")
        return 0
    try:
        batch_dir = db.batch_record(batch_id).batch_dir
    except errors.BatchNotFoundError:
        log(f"{where} batch {batch_id} has no boinc-executor batch record: {discarded}")
        return 0
    new = batch_dir / protocol.NEW
    if not batch_dir.is_absolute():
        raise Undeliverable(
            f"the batch record of batch {batch_id} names {batch_dir}, not an "
            "absolute path; correct its row in pyboinc_batch"
        )
    if not batch_dir.exists() and not batch_dir.is_symlink():
        log(f"{where} its batch directory {batch_dir} was removed: {discarded}")
        return 0
    if new.is_symlink() or not new.is_dir():
        raise Undeliverable(
            f"{new} is missing, a symlink or not a directory; make it a plain "
            "directory the daemon user may write to"
        )
    tag, why = "error", None
    if failed or not canonical:
        # The row is authoritative; the command line's mask is the fallback.
        data = error_record(db, wu_id, wu_name, int(mask) or (int(args[1]) if failed else 0))
    else:
        found = db.query("SELECT name FROM result WHERE id=%s", (canonical,), doing="reading")
        name = str(found[0][0]) if found else ""
        tag = name if re.fullmatch(r"[A-Za-z0-9_-]{1,100}", name) else f"result{canonical}"
        data, why = output_record(wu_name, args[1:], upload_dir)
        tag = "error" if why else tag
    try:
        target = protocol.deliver_record(batch_dir, wu_name, tag, data)
    except OSError as exc:
        if exc.errno in _SERVER_ERRNOS:
            raise
        raise Undeliverable(
            f"cannot write into {new} ({exc.strerror}); let the daemon user write there"
        ) from exc
    log(f"{where} {'refused output: ' + why + '; ' if why else ''}delivered {target.name}")
    return 0


def parse_args(argv: list[str]) -> tuple[str | None, list[str]] | None:
    """``(--project value, the handler's own arguments)``, or None if they are unusable."""
    args = [a for a in argv if a != ""]  # system()'s double space is harmless; be sure
    project: str | None = None
    if args and args[0] == "--project" and len(args) > 1:
        project, args = args[1], args[2:]
    elif args and args[0].startswith("--project="):
        project, args = args[0].partition("=")[2], args[1:]
    if not args or (args[0] == "--error" and len(args) < 5):
        return None
    numbers = (args[1], args[-2], args[-1]) if args[0] == "--error" else args[:1]
    if not all(re.fullmatch(r"-?[0-9]+", n) for n in numbers):
        return None
    return project, args


def main(argv: list[str]) -> int:
    """Run as script_assimilator does; ``argv`` excludes the program name."""
    parsed = parse_args(argv)
    if parsed is None:
        log(
            f"unusable arguments {argv!r}: configure the bare name "
            "'script_assimilator --script pyboinc_assimilator' (1.6.x drops named tokens)"
        )
        return 2
    project, args = parsed
    try:
        from ..backends.db import Database
        from ..config import ProjectConfig

        config = ProjectConfig.load(project_root(project))
        with Database(config) as db:
            return assimilate(db, args, config.upload_dir)
    except Undeliverable as exc:
        log(f"CANNOT DELIVER, stopping (the work unit is retried after bin/start): {exc}")
        return 1
    except (errors.ConfigError, errors.DatabaseError, ImportError, OSError) as exc:
        log(f"SERVER FAULT, stopping (the work unit is retried after bin/start): {exc}")
        return 1
