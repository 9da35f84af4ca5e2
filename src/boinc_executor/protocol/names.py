"""Names: the batch directory's and the slot's file names, job names, record names.

Every name that crosses a process boundary is made and parsed here, so the
master, the backends, the runner and the daemons agree on them (``docs/protocol.md``).
Standard library only: the runner ships it to volunteers.
"""

from __future__ import annotations

import hashlib
import re

__all__ = [
    "APP_NAME",
    "CANCEL_TAG",
    "CHECKPOINT",
    "FINISH_FILE",
    "HANDLED_PACK",
    "JOURNAL",
    "LOCK",
    "NEW",
    "OLD",
    "OPEN_DATA",
    "OPEN_PROGRAM",
    "OPEN_RESULT",
    "QUARANTINE",
    "RECORD_SUFFIX",
    "check_prefix",
    "data_file_name",
    "is_stale_temp",
    "job_name",
    "parse_job_name",
    "parse_record_name",
    "program_file_name",
    "quarantine_name",
    "record_file_name",
]

#: the BOINC app every part of the product submits to, configures and checks
APP_NAME = "pyboinc"

# Batch directory layout.
CHECKPOINT = "pyboinc_checkpoint"
JOURNAL = "journal.jsonl"
LOCK = ".lock"
NEW = "new"
OLD = "old"  # handled records as files: releases before the pack; adopted on open
QUARANTINE = "quarantine"
HANDLED_PACK = "handled.pack"  # every handled record, append-only (protocol/pack.py)

# Slot layout: the open names a job's files have in its slot directory.
OPEN_PROGRAM = "program.pkl"
OPEN_DATA = "data.pkl"
OPEN_RESULT = "result.pkl"
FINISH_FILE = "boinc_finish_called"

RECORD_SUFFIX = ".result"
#: tag of the records ``boinc-executor cancel`` delivers for jobs that never started
CANCEL_TAG = "cancelled"

_PREFIX_RE = re.compile(r"[a-z][a-z0-9]{0,15}")
_JOB_RE = re.compile(r"([a-z][a-z0-9]{0,15})_(\d+)_(\d+)")
_TAG_RE = re.compile(r"[A-Za-z0-9_-]{1,100}")


def check_prefix(prefix: str) -> str:
    """Validate a job-name prefix; returns it unchanged.

    Raises:
        ValueError: the prefix would make names BOINC or the protocol cannot use.
    """
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(
            f"job prefix {prefix!r} must be 1-16 lower-case letters or digits, "
            "starting with a letter"
        )
    return prefix


def job_name(prefix: str, batch_id: int, index: int) -> str:
    """The deterministic name of job ``index`` of a batch (also its BOINC work-unit name)."""
    return f"{prefix}_{batch_id}_{index}"


def parse_job_name(name: str) -> tuple[str, int, int] | None:
    """Split a job name into (prefix, batch ID, index), or None if it is not one."""
    match = _JOB_RE.fullmatch(name)
    if match is None:
        return None
    return match.group(1), int(match.group(2)), int(match.group(3))


def program_file_name(prefix: str, program: bytes) -> str:
    """Content-addressed physical name of a program file: equal programs share one file."""
    return f"{prefix}_fn_{hashlib.sha256(program).hexdigest()[:32]}.pkl"


def data_file_name(job: str) -> str:
    """Physical name of a job's data file; unique because job names are."""
    return f"{job}.pkl"


def record_file_name(job: str, tag: str) -> str:
    """File name of a record in ``new/``: ``<job>.<tag>.result``."""
    if parse_job_name(job) is None:
        raise ValueError(f"{job!r} is not a job name")
    if not _TAG_RE.fullmatch(tag):
        raise ValueError(f"record tag {tag!r} must match {_TAG_RE.pattern}")
    return f"{job}.{tag}{RECORD_SUFFIX}"


def parse_record_name(filename: str) -> tuple[str, str] | None:
    """Split a record file name into (job, tag), or None if it is not a record name."""
    if not filename.endswith(RECORD_SUFFIX):
        return None
    job, sep, tag = filename[: -len(RECORD_SUFFIX)].partition(".")
    if not sep or parse_job_name(job) is None or not _TAG_RE.fullmatch(tag):
        return None
    return job, tag


_QUARANTINE_KEEP = 160  # characters of a refused name kept in its quarantine name


def quarantine_name(name: str, stamp: int) -> str:
    """The name a refused file gets in ``quarantine/``: ``<stamp>-<name>``, always short.

    A volunteer or a stray process can put a name of up to NAME_MAX (255 bytes) into
    ``new/``; prefixing it would overflow. A long or non-ASCII name is therefore cut
    and completed by a digest of the whole, leaving room for the ``.why`` note and
    the temp file it is written through (the full name is in the note).
    """
    safe = name if name.isascii() and name.isprintable() else name.encode(errors="replace").hex()
    if len(safe) > _QUARANTINE_KEEP:
        digest = hashlib.sha256(name.encode(errors="surrogateescape")).hexdigest()[:16]
        safe = f"{safe[: _QUARANTINE_KEEP - 17]}~{digest}"
    return f"{stamp}-{safe}"


def is_stale_temp(name: str) -> bool:
    """Whether a dot-named file in ``new/`` is a writer's temp file (``.<name>.<hex>.tmp``).

    Writers create records as such temp files and rename them into place
    (:func:`atomic_write`); one that stays is the leftover of a killed writer.
    """
    return name.startswith(".") and name.endswith(".tmp")
