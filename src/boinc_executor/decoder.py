"""Reading result records on a thread of their own, and packing them once handled.

Records come from untrusted volunteers and may be up to the size cap, and
decoding one (bounded read, framing, the restricted unpickler) can take a
while. The collector therefore only finds records and hands them here: a slow
or pathological record never holds up submission, cancellation or polling.

Per batch of queued records (up to :data:`_BATCH`), in this order:

1. read each record once (bounded, never following links) and decode it;
2. append every record's bytes to the handled-records pack in one write
   (:mod:`boinc_executor.protocol.pack`): from here a re-run replays them;
3. resolve the batch's futures (one call into the collector, one lock);
4. at most :data:`_SYNC_SECONDS` later, or after :data:`_SYNC_RECORDS` records,
   ``fdatasync`` the pack once and only then unlink the records' files from
   ``new/`` (or lend them to the workers, see :meth:`Backend.reuse_records`), so a power
   loss finds every record either in the pack or in ``new/``.

A record a worker announces while the decoder is idle is handled on the
announcing thread (:meth:`RecordDecoder.handle_or_submit`): the hop to the
decoder thread was an eighth of a lone job's latency. Whichever thread handles
records holds one lock for it, so the steps above keep their order.

It also keeps each ``submit`` future's captured output (:meth:`RecordDecoder.output`),
read from the record's header, for as long as the future itself is alive.

One plain daemon thread, fed by a queue. Not a ``ThreadPoolExecutor``: those
refuse work once the interpreter starts exiting, exactly when an exit-time
``shutdown(wait=True)`` still needs records read.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Generic, Protocol, TypeVar

from . import protocol
from .batch import BatchDir
from .errors import (
    ProtocolError,
    ResultDecodeError,
    UnsafeResultError,
    rebuild_exception,
)
from .protocol.decoding import TypePolicy
from .protocol.pack import KIND_REFUSAL

__all__ = ["Outcome", "RecordDecoder"]

logger = logging.getLogger("boinc_executor")

_BATCH = 256  # records decoded, packed and resolved together
# A packed record's file leaves new/ at most this long after it was packed. Short,
# because on the embedded backend that file is the next job's output file: a
# fdatasync costs ~0.5 ms, a worker that finds no spare creates a file (up to 0.6 ms).
_SYNC_SECONDS = 0.05
_SYNC_RECORDS = 4096  # ... or once this many wait
_WAKE: Any = ("wake", None)  # queued to make the thread look at the time of its next sync


class _Owner(Protocol):
    """What the decoder needs to know of the job a record belongs to."""

    name: str
    n: int  # calls the record must carry
    chunk: bool  # one future for all n calls

    @property
    def futures(self) -> tuple[Future[Any], ...]: ...


J = TypeVar("J", bound=_Owner)
#: (job, outcomes, None) or (job, None, error)
Outcome = tuple[J, "list[tuple[bool, Any]] | None", "BaseException | None"]


class RecordDecoder(Generic[J]):
    """Decodes records, packs them, and hands the outcomes to ``resolve``.

    Args:
        batch: the batch directory (records come from ``new/``, go to its pack).
        policy: which types payloads may contain.
        max_result_bytes: records larger than this are refused unread.
        resolve: called with a batch of outcomes, in the order the records were queued.
        released: called with a job whose queued record vanished before it was read,
            so that another record of it can be claimed.
        removed: called with names of records that have left ``new/`` (or were found gone).
        on_idle: called when the last queued record is done.
        name: the thread's name.
        reuse: offered the names of handled, durable records; returns those not
            taken for reuse, which are deleted (``Backend.reuse_records``).
    """

    def __init__(
        self,
        batch: BatchDir,
        policy: TypePolicy,
        max_result_bytes: int,
        *,
        resolve: Callable[[list[Outcome[J]]], None],
        released: Callable[[J], None],
        removed: Callable[[list[str]], None],
        on_idle: Callable[[], None],
        name: str,
        reuse: Callable[[list[str]], list[str]],
    ) -> None:
        self._batch = batch
        self._pack = batch.pack
        self._new = batch.new_path + os.sep
        self._policy = policy
        self._max_result_bytes = max_result_bytes
        self._resolve = resolve
        self._released = released
        self._removed = removed
        self._on_idle = on_idle
        self._reuse = reuse
        self._lock = threading.Lock()
        # Held by whichever thread handles records or syncs the pack (the decoder
        # thread, or an announcing thread in handle_or_submit).
        self._work = threading.Lock()
        self._inline: threading.Thread | None = None  # an announcing thread handling one
        self._pending = 0  # records queued or being decoded
        self._unsynced: list[str] = []  # packed, their files still in new/
        self._sync_due = 0.0
        self._queue: queue.SimpleQueue[tuple[J | None, str | None] | None] = queue.SimpleQueue()
        self._closed = False  # no record is handled inline once close() began
        self._outputs: weakref.WeakKeyDictionary[Future[Any], protocol.TaskOutput] = (
            weakref.WeakKeyDictionary()
        )
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def close(self) -> None:
        """Finish the queued records, sync the pack, then stop the thread."""
        with self._lock:
            self._closed = True
        self._queue.put(None)
        self._thread.join()

    def on_thread(self) -> bool:
        """Whether the caller handles records now (a future's done-callback runs there)."""
        current = threading.current_thread()
        return current is self._thread or current is self._inline

    @property
    def busy(self) -> bool:
        """Whether any record is queued or being decoded."""
        with self._lock:
            return self._pending > 0

    def output(self, future: Future[Any]) -> protocol.TaskOutput | None:
        """What the call behind ``future`` printed, once its record was read (else None)."""
        with self._lock:
            return self._outputs.get(future)

    def _keep_outputs(self, job: J, data: bytes) -> None:
        """Note the per-call output of a record that did not decode (its header may)."""
        if job.chunk:
            return  # see _store_outputs
        try:
            header, _ = protocol.decode_frame(data, protocol.KIND_RESULT)
            outputs = protocol.read_outputs(header, job.n)
        except Exception:  # a volunteer's header: its output never stops the record's handling
            return
        self._store_outputs(job, outputs)

    def _store_outputs(self, job: J, outputs: list[protocol.TaskOutput]) -> None:
        """Keep a record's per-call output for the job's futures (before they resolve).

        Not for a ``map`` chunk: its one future never reaches the user, who reads
        a mapped call's output with ``task_output(batch_dir, call_index)``, and a
        weak-keyed entry per chunk cost 5% of the master's time in a ``map``.
        """
        if job.chunk:
            return
        with self._lock:
            for fut, out in zip(job.futures, outputs, strict=False):
                self._outputs[fut] = out

    def submit(self, job: J | None, name: str | None) -> None:
        """Queue a record.

        Args:
            job: whose futures it resolves; None to pack it only (a late record of a
                job no future waits on, kept so that a re-run replays it).
            name: its file name in ``new/``; None to replay the job's packed record.
        """
        with self._lock:
            self._pending += 1
        self._queue.put((job, name))

    def handle_or_submit(self, job: J, name: str) -> None:
        """Handle a record now, on the calling thread, if nothing else is queued; else queue it.

        For records a worker announces: with the decoder idle, handling it here
        saves a thread hop. Never waits: if another thread is handling records,
        the record is queued, so order and the pack's single writer are kept.
        """
        with self._lock:
            idle = not self._pending and not self._closed
            self._pending += 1
        if not idle or not self._work.acquire(blocking=False):
            self._queue.put((job, name))
            return
        self._inline = threading.current_thread()
        try:
            timed = bool(self._unsynced)  # else the thread may wait with no sync to time
            self._handle_batch([(job, name)])
            wake = not timed and bool(self._unsynced)
        finally:
            self._inline = None
            self._work.release()
        if wake:
            self._queue.put(_WAKE)

    def submit_many(self, items: list[tuple[J | None, str | None]]) -> None:
        """Queue several records at once (see :meth:`submit`)."""
        if not items:
            return
        with self._lock:
            self._pending += len(items)
        put = self._queue.put
        for item in items:
            put(item)

    # ------------------------------------------------------------------ the thread

    def _loop(self) -> None:
        get = self._queue.get
        stop = False
        while not stop:
            timeout = max(0.0, self._sync_due - time.monotonic()) if self._unsynced else None
            try:
                item = get(timeout=timeout)
            except queue.Empty:
                with self._work:
                    self._sync()
                continue
            if item is None:
                break
            items = [] if item is _WAKE else [item]
            while len(items) < _BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                if more is not _WAKE:
                    items.append(more)
            if items:
                with self._work:
                    self._handle_batch(items)
        with self._work:
            self._sync()

    def _handle_batch(self, items: list[tuple[J | None, str | None]]) -> None:
        """Handle queued records, then sync the pack if it is due (the caller holds _work)."""
        try:
            self._handle(items)
        except Exception:  # never lose the decoder; each record was already answered
            logger.exception("handling %d records failed", len(items))
        with self._lock:
            self._pending -= len(items)
            idle = not self._pending
        if len(self._unsynced) >= _SYNC_RECORDS or time.monotonic() >= self._sync_due:
            self._sync()
        if idle:
            self._on_idle()

    def _handle(self, items: list[tuple[J | None, str | None]]) -> None:
        outcomes: list[Outcome[J]] = []
        frames: list[tuple[str, bytes, int]] = []
        refused: list[tuple[str, str]] = []
        gone: list[str] = []
        for job, name in items:
            if name is None:
                assert job is not None
                outcomes.append(self._replay(job))
                continue
            try:
                data = protocol.read_bounded(self._new + name, self._max_result_bytes)
            except FileNotFoundError:
                gone.append(name)
                if job is not None:
                    self._released(job)
                continue
            except (ProtocolError, OSError) as exc:  # not a regular file, too large, unreadable
                why = f"the result record {name} was refused unread: {exc}"
                frames.append((name, why.encode(), KIND_REFUSAL))
                refused.append((name, why))
                if job is not None:
                    outcomes.append((job, None, ResultDecodeError(f"{why}. No code from it ran")))
                continue
            frames.append((name, data, 0))
            if job is not None:
                outcomes.append(self._decode(job, data, name))
        packed = self._pack_frames(frames)
        if outcomes:
            self._resolve(outcomes)
        for name, why in refused:
            try:
                self._batch.quarantine(name, why)
            except OSError as exc:
                logger.warning("cannot move the refused record %s to quarantine: %s", name, exc)
        if gone or refused:
            self._removed(gone + [name for name, _ in refused])
        if packed:
            if not self._unsynced:
                self._sync_due = time.monotonic() + _SYNC_SECONDS
            self._unsynced += [name for name, _, kind in frames if kind != KIND_REFUSAL]

    def _pack_frames(self, frames: list[tuple[str, bytes, int]]) -> bool:
        """Append the batch's records to the pack; False if the disk refused them.

        The futures are resolved either way (their values are in hand); records
        that could not be packed stay in ``new/``, and the collector packs them
        on a later scan, so a re-run still replays them.
        """
        if not frames:
            return False
        try:
            self._pack.append(frames)
        except OSError as exc:
            logger.error(
                "cannot append %d records to %s: %s; they stay in %s and are packed when the "
                "disk allows it",
                len(frames),
                self._pack.path,
                exc,
                self._batch.new_dir,
            )
            self._removed([name for name, _, _ in frames])
            return False
        return True

    def _decode(self, job: J, data: bytes, name: str) -> Outcome[J]:
        """Decode one record's bytes into its job's outcome (never raises)."""
        try:
            record = protocol.decode_result(
                data, self._policy, expect_job=job.name, expect_calls=job.n
            )
            self._store_outputs(job, record.outputs)
            if record.ok:
                return job, record.outcomes, None
            assert record.error is not None
            return job, None, rebuild_exception(record.error)
        except Exception as exc:  # anything a hostile record provokes fails its job, no more
            self._keep_outputs(job, data)  # what the call printed may say why
            # A refused type stays an UnsafeResultError, as documented.
            kind = UnsafeResultError if isinstance(exc, UnsafeResultError) else ResultDecodeError
            return (
                job,
                None,
                kind(
                    f"the result record {name} for job {job.name} was refused: "
                    f"{type(exc).__name__}: {exc}. It is kept in {self._pack.path}; "
                    "no code from it ran"
                ),
            )

    def _replay(self, job: J) -> Outcome[J]:
        """The outcome of a job from its packed record, exactly as the first run decoded it."""
        try:
            entry, body = self._pack.read(job.name)
        except (KeyError, ProtocolError, OSError) as exc:
            return (
                job,
                None,
                ResultDecodeError(
                    f"the handled record of job {job.name} cannot be read from {self._pack.path}: "
                    f"{exc}. Run the batch with a new batch_dir to compute it again"
                ),
            )
        if entry.kind == KIND_REFUSAL:
            return (
                job,
                None,
                ResultDecodeError(f"{body.decode(errors='replace')}. No code from it ran"),
            )
        return self._decode(job, body, entry.name)

    def _sync(self) -> None:
        """Make packed records durable, then remove their files from ``new/``."""
        if not self._unsynced:
            return
        try:
            self._pack.sync()
        except OSError as exc:
            logger.error("cannot sync %s: %s; retrying", self._pack.path, exc)
            self._sync_due = time.monotonic() + 1.0
            return
        names, self._unsynced = self._unsynced, []
        prefix = self._new
        for name in self._reuse(names):
            try:
                os.unlink(prefix + name)
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning("cannot remove the handled record %s%s: %s", prefix, name, exc)
        self._removed(names)
