"""Replaying a journaled batch, and retrying its failed calls.

Design note. A replay matches each call to its journal line by index and by the
fingerprint of :mod:`boinc_executor.fingerprint`; a mismatch is refused with a
message that says which call changed, and how (:func:`mismatch_message`).

Retrying a failed job sends it again under a new job name,
``<prefix>r<k>_<batch>_<index>``, journaled at the *same index*: the journal's
last line for an index wins, so every later replay follows the retry, and the
failed job's record stays in ``old/`` untouched. The input comes from one of two
places:

* ``resume(batch_id, retry_failed=True)`` re-frames the staged data file under
  the new name (byte for byte, never unpickled). That works while the input is
  staged: always on the embedded backend; on BOINC only until the file_deleter
  removes the inputs of finished work units;
* a re-run with ``BoincExecutor(..., retry_failed=True)`` pickles the calls the
  script submits again, so it works on both backends at any time.

A job of a ``map`` chunk is retried whole; its other calls' new results equal
the old ones for deterministic functions.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import protocol
from .backends.base import Backend
from .batch import BatchDir, Checkpoint, JournalEntry
from .collector import Collector
from .errors import BatchError
from .fingerprint import split_digest
from .job import Job
from .protocol.decoding import TypePolicy
from .protocol.pack import KIND_RECORD

__all__ = [
    "finished_jobs",
    "mismatch_message",
    "record_failed",
    "resume_jobs",
    "retry_entry",
    "retry_name",
]

logger = logging.getLogger("boinc_executor")
_RETRY_RE = re.compile(r".*r(\d+)")


def resume_jobs(
    collector: Collector, backend: Backend, checkpoint: Checkpoint, retry_failed: bool
) -> list[Future[Any]]:
    """Give every journaled call a future again; with ``retry_failed``, retry failed jobs.

    Returns:
        The calls' futures in submission order (a retried job's are the retry's).
    """
    journal = collector.journal
    done = finished_jobs(collector.batch) if retry_failed else set()
    jobs: list[tuple[JournalEntry, list[Future[Any]]]] = []
    for index in sorted(journal):
        entry = journal[index]
        futures: list[Future[Any]] = [Future() for _ in range(entry.n)]
        collector.register(Job(collector, entry.job, futures), entry)
        jobs.append((entry, futures))
    with collector.lock:
        collector.next_job = max(journal, default=-1) + 1
        collector.next_call = max((e.call + e.n for e in journal.values()), default=0)
    if done:  # results in hand resolve from their records; see which failed
        concurrent.futures.wait([f for e, fs in jobs if e.job in done for f in fs])
    resumed: list[Future[Any]] = []
    for entry, futures in jobs:
        if entry.job in done and _failed(futures):
            with collector.lock:  # superseded: only the retry's outcome counts
                collector.failed_calls -= sum(f.exception() is not None for f in futures)
            futures = _retry(collector, backend, checkpoint, entry)  # noqa: PLW2901
        resumed.extend(futures)
    return resumed


def _retry(
    collector: Collector, backend: Backend, checkpoint: Checkpoint, entry: JournalEntry
) -> list[Future[Any]]:
    """Submit a failed job again under a new name, journaled at the same index."""
    new, program, data = retry_entry(backend, checkpoint, entry)
    futures: list[Future[Any]] = [Future() for _ in range(entry.n)]
    with collector.lock:
        collector.journal[entry.i] = new
    collector.add(Job(collector, new.job, futures), new, program, data)
    logger.info("retrying job %s as %s", entry.job, new.job)
    return futures


def _failed(futures: list[Future[Any]]) -> bool:
    """Whether a resolved job failed (any of its calls raised or the job itself failed)."""
    return any(f.done() and not f.cancelled() and f.exception() is not None for f in futures)


def finished_jobs(batch: BatchDir) -> set[str]:
    """Names of the jobs that have a record (in the handled-records pack or waiting in ``new/``)."""
    names = set(batch.pack.index)
    with os.scandir(batch.new_dir) as entries:
        for entry in entries:
            parsed = protocol.parse_record_name(entry.name)
            if parsed is not None:
                names.add(parsed[0])
    return names


def retry_entry(
    backend: Backend, checkpoint: Checkpoint, entry: JournalEntry
) -> tuple[JournalEntry, bytes, bytes]:
    """A failed job's retry: its journal entry, program bytes and re-named data file.

    The data is re-framed, not re-pickled: the calls' payload goes out byte for byte.

    Raises:
        BatchError: the job's staged input is gone, so it cannot be sent again.
    """
    name = retry_name(checkpoint, entry.job, entry.i)
    try:
        program = backend.read_input(entry.program)
        header, payload = protocol.decode_frame(
            backend.read_input(entry.data, entry.data_offset, entry.data_size), protocol.KIND_DATA
        )
    except (OSError, protocol.ProtocolError) as exc:
        raise BatchError(
            f"cannot retry job {entry.job} of batch {checkpoint.batch_id}: its staged input is "
            f"gone ({exc}; BOINC's file_deleter removes the inputs of finished work units). "
            "Run the script again with BoincExecutor(..., retry_failed=True): it sends the "
            "failed calls again from the script"
        ) from exc
    data = protocol.encode_frame(protocol.KIND_DATA, dict(header, job=name), payload)
    retry = replace(
        entry, job=name, data=protocol.data_file_name(name), data_offset=-1, data_size=0
    )
    return retry, program, data


def retry_name(checkpoint: Checkpoint, old_job: str, index: int) -> str:
    """The job name of the next retry of ``old_job``: ``<prefix>r<k>_<batch>_<index>``."""
    parsed = protocol.parse_job_name(old_job)
    old_prefix = parsed[0] if parsed else checkpoint.prefix
    match = _RETRY_RE.fullmatch(old_prefix) if old_prefix != checkpoint.prefix else None
    suffix = f"r{int(match.group(1)) + 1 if match else 1}"
    prefix = checkpoint.prefix[: 16 - len(suffix)] + suffix
    return protocol.job_name(prefix, checkpoint.batch_id, index)


def record_failed(batch: BatchDir, job: str, calls: int, policy: TypePolicy, limit: int) -> bool:
    """Whether ``job`` has a record, and it is an error or holds a call that raised.

    The handled-records pack is asked first (its first record is the one that
    counts), then ``new/``. A record that cannot be read or decoded, or that the
    collector refused, counts as failed: running the job again is the way to get
    a usable one.
    """
    for data in _records(batch, job, limit):
        if data is None:
            return True
        try:
            record = protocol.decode_result(data, policy, expect_job=job, expect_calls=calls)
        except protocol.ProtocolError:
            return True
        return not record.ok or not all(ok for ok, _ in record.outcomes)
    return False


def _records(batch: BatchDir, job: str, limit: int) -> Iterator[bytes | None]:
    """The bytes of ``job``'s records, packed first; None for one that cannot be used."""
    pack = batch.pack
    if job in pack.index:
        try:
            entry, body = pack.read(job)
        except protocol.ProtocolError:
            yield None
            return
        yield body if entry.kind == KIND_RECORD else None
        return
    prefix = job + "."
    with os.scandir(batch.new_dir) as entries:
        paths = [
            e.path
            for e in entries
            if e.name.startswith(prefix) and protocol.parse_record_name(e.name) is not None
        ]
    for path in paths:
        try:
            yield protocol.read_bounded(path, limit)
        except FileNotFoundError:
            continue  # packed meanwhile
        except (OSError, protocol.ProtocolError):
            yield None


def mismatch_message(
    fn: Callable[..., Any],
    journaled: JournalEntry,
    new: JournalEntry,
    checkpoint: Checkpoint,
    batch_dir: Path,
) -> str:
    """What changed between a journaled call and its replay, and what to do about it."""
    old_fn, _ = split_digest(journaled.digest)
    new_fn, _ = split_digest(new.digest)
    if journaled.n != new.n:
        what = f"the job now carries {new.n} calls instead of {journaled.n} (chunksize)"
    elif not old_fn:
        what = "the journal was written by an older boinc-executor, which fingerprinted less"
    elif old_fn != new_fn:
        what = (
            f"the function {getattr(fn, '__qualname__', fn)!r} changed (its code, or a "
            "global, closure value, default or bound object it uses)"
        )
    else:
        what = "its arguments changed"
    calls = f"call {new.call}" if new.n == 1 else f"calls {new.call}-{new.call + new.n - 1}"
    batch_id = checkpoint.batch_id
    # A remote checkpoint keeps the server's URL where a project directory would be.
    option = "server" if checkpoint.backend == "remote" else "project_dir"
    where = f", {option}={checkpoint.project_dir!r}" if checkpoint.project_dir else ""
    return (
        f"{calls} (job {journaled.job}) of batch {batch_id} in {batch_dir} differs from what "
        f"was journaled: {what}. Replaying would return results of the old inputs. To run "
        "the new inputs, pass a new name= to BoincExecutor (or a new batch_dir); to drop the "
        f"old batch, BoincExecutor.discard({batch_id}{where}); to get its results, restore "
        "the old inputs"
    )
