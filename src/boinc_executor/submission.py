"""Turning ``submit`` and ``map`` calls into journaled jobs with plain ``Future``s.

Each call (or ``map`` chunk) becomes one job: its function is pickled once into a
content-addressed program file, its arguments into the job's data, and both are
fingerprinted (:mod:`boinc_executor.fingerprint`). A job the batch's journal
already holds is replayed if the fingerprints match, retried under a new name if
its record failed and retries were asked for, and refused with a
:class:`BatchMismatchError` otherwise; a new job goes to the collector, which
journals it and hands it over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

from . import fingerprint, protocol
from .batch import BatchDir, Checkpoint, JournalEntry
from .collector import Collector
from .errors import BatchMismatchError
from .job import Job
from .protocol.decoding import TypePolicy
from .replay import mismatch_message, record_failed, retry_name

__all__ = ["Submitter"]

logger = logging.getLogger("boinc_executor")
_PROGRAMS_KEPT = 64  # functions whose program file is kept pickled


class Submitter:
    """Makes the jobs of one executor's batch (see the module docstring)."""

    def __init__(
        self,
        collector: Collector,
        batch: BatchDir,
        checkpoint: Checkpoint,
        policy: TypePolicy,
        *,
        max_result_bytes: int,
        retry_failed: bool,
    ) -> None:
        self._collector = collector
        self._batch = batch
        self._checkpoint = checkpoint
        self._policy = policy
        self._max_result_bytes = max_result_bytes
        self._retry_failed = retry_failed
        self._programs: dict[int, tuple[Callable[..., Any], str, str, bytes]] = {}

    def _program(self, fn: Callable[..., Any]) -> tuple[str, str, bytes]:
        """The program file for ``fn``: (physical name, fingerprint, bytes), made once.

        The fingerprint (:mod:`boinc_executor.fingerprint`) covers the function
        and everything it captures, as they were when it was first pickled.
        """
        cached = self._programs.get(id(fn))
        if cached is not None and cached[0] is fn:
            return cached[1], cached[2], cached[3]
        data = protocol.encode_program(fn, self._policy)
        name = protocol.program_file_name(self._checkpoint.prefix, data)
        digest = fingerprint.function_digest(fn)
        if len(self._programs) >= _PROGRAMS_KEPT:
            self._programs.pop(next(iter(self._programs)))
        self._programs[id(fn)] = (fn, name, digest, data)  # holds fn: its id stays unique
        return name, digest, data

    def submit_chunk(
        self, fn: Callable[..., Any], chunk: list[tuple[Any, ...]]
    ) -> Future[list[tuple[bool, Any]]]:
        """One ``map`` job: its single future resolves to the calls' outcomes."""
        return self.submit_calls(fn, [(args, {}) for args in chunk], chunk=True)[0]

    def submit_calls(
        self,
        fn: Callable[..., Any],
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
        *,
        chunk: bool = False,
    ) -> list[Future[Any]]:
        collector = self._collector
        index, call = collector.allocate(len(calls))
        name = protocol.job_name(self._checkpoint.prefix, self._checkpoint.batch_id, index)
        futures: list[Future[Any]] = [Future() for _ in range(1 if chunk else len(calls))]
        try:
            program_name, fn_digest, program = self._program(fn)
            digest, plain = fingerprint.call_digest(fn_digest, calls)
            data = protocol.encode_data(name, calls, plain=plain)
        except Exception as exc:
            error = TypeError(
                f"cannot send {getattr(fn, '__qualname__', fn)!r} or its arguments to a volunteer: "
                f"they cannot be pickled ({type(exc).__name__}: {exc}); use module-level "
                "functions and plain data, or make the objects picklable"
            )
            for fut in futures:
                fut.set_running_or_notify_cancel()
                fut.set_exception(error)
            return futures
        entry = JournalEntry(
            job=name,
            i=index,
            call=call,
            n=len(calls),
            digest=digest,
            program=program_name,
            data=protocol.data_file_name(name),
        )
        journaled = collector.journal.get(index)
        if journaled is not None and (journaled.digest, journaled.n) != (entry.digest, entry.n):
            raise BatchMismatchError(
                mismatch_message(fn, journaled, entry, self._checkpoint, self._batch.path)
            )
        if (
            journaled is not None
            and self._retry_failed
            and record_failed(
                self._batch, journaled.job, journaled.n, self._policy, self._max_result_bytes
            )
        ):
            name = retry_name(self._checkpoint, journaled.job, index)
            entry = replace(
                entry, job=name, data=protocol.data_file_name(name), program=program_name
            )
            data = protocol.encode_data(name, calls, plain=plain)
            with collector.lock:
                collector.journal[index] = entry
            logger.info("retrying job %s as %s", journaled.job, name)
            journaled = None
        elif journaled is not None:
            name = journaled.job  # a retried job carries its new name
        job = Job(collector, name, futures, n=len(calls) if chunk else None)
        if journaled is not None:
            collector.register(job, journaled)
        else:
            collector.add(job, entry, program, data)
        return futures
