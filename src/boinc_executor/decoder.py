"""Reading result records on a thread of their own.

Records come from untrusted volunteers and may be up to the size cap, and
decoding one (bounded read, framing, the restricted unpickler) can take a
while. The collector therefore only finds records and hands them here: a slow
or pathological record never holds up submission, cancellation or polling.

It also keeps each future's captured output (:meth:`RecordDecoder.output`), read
from the record's header, for as long as the future itself is alive.

One plain daemon thread, fed by a queue. Not a ``ThreadPoolExecutor``: those
refuse work once the interpreter starts exiting, exactly when an exit-time
``shutdown(wait=True)`` still needs records read.
"""

from __future__ import annotations

import logging
import queue
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from . import protocol
from .batch import BatchDir
from .errors import BoincExecutorError, ResultDecodeError, UnsafeResultError, rebuild_exception
from .protocol.decoding import TypePolicy

__all__ = ["RecordDecoder"]

logger = logging.getLogger("boinc_executor")


class _Owner(Protocol):
    """What the decoder needs to know of the job a record belongs to."""

    name: str
    n: int  # calls the record must carry
    futures: list[Future[Any]]
    chunk: bool  # one future for all n calls


J = TypeVar("J", bound=_Owner)
Resolve = Callable[[J, "list[tuple[bool, Any]] | None", "BaseException | None"], None]


class RecordDecoder(Generic[J]):
    """Decodes records and hands each outcome to ``resolve``.

    Args:
        batch: the batch directory (records in ``new/`` are moved to ``old/``).
        policy: which types payloads may contain.
        max_result_bytes: records larger than this are refused unread.
        resolve: called with (job, outcomes, None) or (job, None, error).
        on_idle: called when the last queued record is done.
        name: the thread's name.
    """

    def __init__(
        self,
        batch: BatchDir,
        policy: TypePolicy,
        max_result_bytes: int,
        *,
        resolve: Resolve[J],
        on_idle: Callable[[], None],
        name: str,
    ) -> None:
        self._batch = batch
        self._policy = policy
        self._max_result_bytes = max_result_bytes
        self._resolve = resolve
        self._on_idle = on_idle
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()  # paths queued or being decoded
        self._queue: queue.SimpleQueue[tuple[J, Path, str | None] | None] = queue.SimpleQueue()
        self._outputs: weakref.WeakKeyDictionary[Future[Any], protocol.TaskOutput] = (
            weakref.WeakKeyDictionary()
        )
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def close(self) -> None:
        """Finish the queued records, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    def holds(self, path: str) -> bool:
        """Whether the record at ``path`` is queued or being decoded."""
        with self._lock:
            return path in self._in_flight

    @property
    def busy(self) -> bool:
        """Whether any record is queued or being decoded."""
        with self._lock:
            return bool(self._in_flight)

    def output(self, future: Future[Any]) -> protocol.TaskOutput | None:
        """What the call behind ``future`` printed, once its record was read (else None)."""
        with self._lock:
            return self._outputs.get(future)

    def _keep_outputs(self, job: J, data: bytes) -> None:
        """Note the record's per-call output for the job's futures (before they resolve)."""
        try:
            header, _ = protocol.decode_frame(data, protocol.KIND_RESULT)
        except BoincExecutorError:
            return
        outputs = protocol.read_outputs(header, job.n)
        if job.chunk:
            joined = protocol.TaskOutput(
                "".join(o.stdout for o in outputs),
                "".join(o.stderr for o in outputs),
                any(o.stdout_truncated for o in outputs),
                any(o.stderr_truncated for o in outputs),
            )
            outputs = [joined]
        with self._lock:
            for fut, out in zip(job.futures, outputs, strict=False):
                self._outputs[fut] = out

    def submit(self, job: J, path: Path, new_name: str | None) -> None:
        """Queue a record; ``new_name`` is set when it sits in ``new/`` (then moved to ``old/``)."""
        key = str(path)
        with self._lock:
            if key in self._in_flight:
                return
            self._in_flight.add(key)
        self._queue.put((job, path, new_name))

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            job, path, new_name = item
            try:
                self._decode(job, path, new_name)
            except Exception:  # never lose the decoder to one file
                logger.exception("handling record %s failed", path)
            finally:
                with self._lock:
                    self._in_flight.discard(str(path))
                    idle = not self._in_flight
                if idle:
                    self._on_idle()

    def _decode(self, job: J, path: Path, new_name: str | None) -> None:
        """Decode one record and resolve its job.

        The record is moved to ``old/`` before the job is resolved, so a caller
        that sees a result also finds its record handled; a crash in between is
        harmless, as records in ``old/`` are replayed on a re-run.
        """
        outcomes: list[tuple[bool, Any]] | None = None
        error: BaseException | None = None
        data = b""
        try:
            data = protocol.read_bounded(path, self._max_result_bytes)
            record = protocol.decode_result(
                data, self._policy, expect_job=job.name, expect_calls=job.n
            )
        except FileNotFoundError:
            return
        except (BoincExecutorError, OSError) as exc:
            self._keep_outputs(job, data)
            # A refused type stays an UnsafeResultError, as documented.
            kind = UnsafeResultError if isinstance(exc, UnsafeResultError) else ResultDecodeError
            error = kind(
                f"the result record {path.name} for job {job.name} was refused: {exc}. "
                f"It is kept in {self._batch.old_dir}; no code from it was run"
            )
        else:
            self._keep_outputs(job, data)
            if record.ok:
                outcomes = record.outcomes
            else:
                assert record.error is not None
                error = rebuild_exception(record.error)
        if new_name is not None:
            self._batch.mark_handled(new_name)
        self._resolve(job, outcomes, error)
