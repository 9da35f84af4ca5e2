"""The remote backend's hand-over: jobs into server batch segments, never one twice.

One duplicate name fails a whole ``submit_batch`` (boinc-facts §10.2.5) and jobs
can only be added to a batch still in INIT (§10.2.6). So the executor's one
batch is a list of server batches, *segments*: before every ``submit_batch``
the backend knows (from ``query_batch``) which names each segment holds, and it
submits only the others, into a segment in INIT with no jobs, or a new one
recorded locally before use. A segment left in INIT with jobs announced is
waited for until its counts stand still, then given up, so no request ever
races another. Inputs the server lost are found (``query_files``) right before
each request and fail their jobs alone. This class is a mixin of
:class:`~boinc_executor.backends.remote.RemoteBackend`, which owns the state it
uses; it is its own module to keep each under ~500 lines.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..batch import BatchDir, JournalEntry
from ..config import JobParams
from ..errors import SubmissionError
from ..protocol.names import APP_NAME
from .remote_delivery import Delivery
from .remote_rpc import (
    BatchStatus,
    JobStatus,
    RemotePhpError,
    RemoteRpcError,
    RemoteUnavailableError,
    RpcClient,
)
from .remote_staging import absent
from .remote_state import RemoteState

__all__ = ["INPUT_TEMPLATE", "OUTPUT_TEMPLATE", "SegmentSubmission"]

logger = logging.getLogger("boinc_executor")

INPUT_TEMPLATE = "pyboinc_remote_in"
OUTPUT_TEMPLATE = "pyboinc_remote_out"

_SUBMIT_CHUNK = 2000  # jobs per submit_batch
_SETTLE = 10.0  # seconds an INIT segment's counts must stand still before it is given up
_PARAMS = ("rsc_fpops_est", "rsc_fpops_bound", "rsc_memory_bound", "rsc_disk_bound", "delay_bound")


class SegmentSubmission:
    """Submitting journaled jobs into segments (a mixin of the remote backend)."""

    # State owned by the remote backend (see RemoteBackend.__init__).
    rpc: RpcClient
    _lock: threading.Lock
    _batch: BatchDir | None
    _state: RemoteState | None
    _queue: dict[str, JournalEntry]
    _params: JobParams
    _jobs: dict[str, tuple[int, JobStatus]]
    _segment_state: dict[int, int]
    _segment_fill: dict[int, tuple[int, int]]
    _settling: dict[int, tuple[tuple[int, int], float]]
    _dead: set[int]
    _uncertain: set[int]
    _refreshed: bool

    if TYPE_CHECKING:  # the backend's own

        @property
        def _deliver(self) -> Delivery: ...

    def _submit_queued(self) -> None:
        assert self._state is not None and self._batch is not None
        if not self._queue:
            return
        half_filled = {
            s for s, (njobs, _) in self._segment_fill.items() if njobs and s not in self._dead
        }
        self._refresh(
            self._state.segments if not self._refreshed else sorted(self._uncertain | half_filled)
        )
        self._refreshed = True
        with self._lock:
            for name in [n for n in self._queue if n in self._jobs]:
                del self._queue[name]
            todo = list(self._queue.values())
        if not todo:
            return
        busy = self._unsettled()
        if busy:
            raise RemoteUnavailableError(
                f"an earlier submit_batch into server batch {busy[0]} may still be running "
                "(it is INIT with jobs announced); waiting for it to finish before submitting "
                "what it lacks",
                maybe_applied=True,
            )
        todo = self._drop_unstaged(todo)
        for start in range(0, len(todo), _SUBMIT_CHUNK):
            self._submit_chunk(todo[start : start + _SUBMIT_CHUNK])

    def _submit_chunk(self, jobs: list[JournalEntry]) -> None:
        assert self._state is not None
        segment = self._open_segment()
        self._uncertain.add(segment)
        names = [j.job for j in jobs]
        try:
            self.rpc.submit_batch(
                segment,
                APP_NAME,
                [(j.job, self._sources(j)) for j in jobs],
                input_template=INPUT_TEMPLATE,
                output_template=OUTPUT_TEMPLATE,
                job_params={p: float(getattr(self._params, p)) for p in _PARAMS},
            )
        except RemoteUnavailableError:
            raise  # the segment stays uncertain: the next try asks the server first
        except (RemoteRpcError, RemotePhpError) as exc:
            self._refresh(self._state.segments)  # a duplicate may sit in another segment
            missing = [n for n in names if n not in self._jobs]
            self._uncertain.discard(segment)
            if missing:
                with self._lock:
                    for name in missing:
                        self._queue.pop(name, None)
                raise SubmissionError(
                    f"the server refused {len(missing)} jobs of batch {self._state.segments[0]}: "
                    f"{exc}"
                ) from None
        self._refresh([segment])
        self._uncertain.discard(segment)
        with self._lock:
            for name in names:
                if name in self._jobs:
                    self._queue.pop(name, None)

    def _unsettled(self) -> list[int]:
        """INIT segments with jobs announced (njobs set) whose fill may still be running.

        submit_batch sets njobs before create_work runs and the state only after it
        succeeded (§10.2.5-6), so such a segment is either being filled by a
        request whose submitter died, or was left behind by a failed one. It is
        waited for until its counts have not changed for :data:`_SETTLE` seconds;
        after that it is given up (never reused), so no request ever races it.
        """
        busy = []
        now = time.monotonic()
        for segment, fill in self._segment_fill.items():
            if not fill[0] or segment in self._dead:
                continue
            seen = self._settling.get(segment)
            if seen is None or seen[0] != fill:
                self._settling[segment] = (fill, now)
                busy.append(segment)
            elif now - seen[1] < _SETTLE:
                busy.append(segment)
            else:
                self._dead.add(segment)
                logger.info("server batch %d was left in INIT by a failed submit_batch", segment)
        return busy

    def _open_segment(self) -> int:
        """A server batch of ours in INIT with no jobs, else a new one (recorded first)."""
        assert self._state is not None
        for segment in self._state.segments:
            if self._segment_fill.get(segment) == (0, 0) and segment not in self._dead:
                return segment
        anchor = self._state.segments[0]
        segment = self.rpc.create_batch(APP_NAME, f"boinc-executor {anchor} part")
        self._state.add_segment(segment)
        self._segment_state[segment] = 0
        self._segment_fill[segment] = (0, 0)
        return segment

    def _sources(self, job: JournalEntry) -> list[str]:
        assert self._state is not None
        return [self._state.files[job.program][0], self._state.files[job.data][0]]

    def _drop_unstaged(self, jobs: list[JournalEntry]) -> list[JournalEntry]:
        """Fail the jobs whose inputs the server lost (or that were never uploaded)."""
        assert self._state is not None
        files = self._state.files
        known = {j.job for j in jobs if j.program in files and j.data in files}
        inputs = [(files[j.program][0], files[j.data][0]) for j in jobs if j.job in known]
        wanted = sorted({name for pair in inputs for name in pair})
        gone = set(absent(self.rpc, wanted)) if wanted else set()
        kept = []
        for job in jobs:
            if job.job in known and not {files[job.program][0], files[job.data][0]} & gone:
                kept.append(job)
                continue
            with self._lock:
                self._queue.pop(job.job, None)
            self._deliver.error(
                job.job,
                "JobLostError",
                f"the input of job {job.job} is not on the server (never uploaded, or deleted "
                "by the project since). Submit the call again, in a new batch_dir",
            )
        return kept

    # ------------------------------------------------------------------ what each segment holds

    def _refresh(self, segments: Iterable[int]) -> None:
        for segment in segments:
            self._note(self.rpc.query_batch(segment), segment)

    def _note(self, status: BatchStatus, segment: int) -> None:
        self._segment_state[segment] = status.state
        if status.state == 0:
            self._segment_fill[segment] = (status.njobs, len(status.jobs))
        else:
            self._segment_fill.pop(segment, None)
        with self._lock:
            for job in status.jobs:
                self._jobs[job.name] = (segment, job)
