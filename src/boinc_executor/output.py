"""Reading a call's captured output straight from a batch directory, without an executor.

Every result record carries, in its JSON header, what each of its calls printed
(``docs/protocol.md``). :func:`task_output` finds a call's job in the journal and
reads that header, so output can be inspected while the batch runs, after the
script exited, or from another process (the ``ops`` command line's ``output``),
and nothing is unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import protocol
from .errors import BatchNotFoundError

__all__ = ["task_output"]


def _journaled_job(batch_dir: Path, call: int) -> tuple[str, int, int] | None:
    """(job name, its first call, its number of calls) of the job holding ``call``."""
    try:
        lines = (batch_dir / protocol.JOURNAL).read_bytes().splitlines(keepends=True)
    except FileNotFoundError:
        return None
    for line in lines:
        if not line.endswith(b"\n"):
            break  # a torn last line: that job was never handed over
        try:
            entry = json.loads(line)
            job, first, n = str(entry["job"]), int(entry["call"]), int(entry["n"])
        except (ValueError, TypeError, KeyError):
            continue
        if first <= call < first + n:
            return job, first, n
    return None


def _record_header(path: Path) -> dict[str, object] | None:
    """A record's JSON header, read without touching its payload (None if unreadable)."""
    try:
        with path.open("rb") as fh:
            magic = fh.readline(256)
            line = fh.readline(protocol.DEFAULT_MAX_RESULT_BYTES)
        header, _ = protocol.decode_frame(magic + line, protocol.KIND_RESULT)
    except (OSError, protocol.ProtocolError):
        return None
    return header


def task_output(batch_dir: str | os.PathLike[str], call: int) -> protocol.TaskOutput | None:
    """What call number ``call`` of a batch printed, read from its result record.

    Calls are numbered from 0 in submission order across the whole batch (a ``map``
    of 10 items after one ``submit`` has calls 1 to 10), the same numbering as the
    journal's ``call`` field.

    Args:
        batch_dir: the batch directory (``executor.batch_dir``).
        call: the call's index in the batch.

    Returns:
        The call's captured output, or None while its job has no record yet.

    Raises:
        BatchNotFoundError: ``batch_dir`` holds no batch.
        ValueError: the batch has no such call.
    """
    path = Path(batch_dir)
    if not (path / protocol.CHECKPOINT).is_file():
        raise BatchNotFoundError(f"{path} holds no batch (no {protocol.CHECKPOINT} file)")
    if isinstance(call, bool) or not isinstance(call, int) or call < 0:
        raise ValueError(f"call indexes are integers from 0, got {call!r}")
    found = _journaled_job(path, call)
    if found is None:
        raise ValueError(f"call {call} is not in the journal of the batch in {path}")
    job, first, n = found
    for folder in (path / protocol.OLD, path / protocol.NEW):
        try:
            names = sorted(os.listdir(folder))
        except FileNotFoundError:
            continue
        for name in names:
            parsed = protocol.parse_record_name(name)
            if parsed is None or parsed[0] != job:
                continue
            header = _record_header(folder / name)
            if header is not None and header.get("job") == job:
                return protocol.read_outputs(header, n)[call - first]
    return None
