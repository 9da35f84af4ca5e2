"""The remote backend: submit to a BOINC project over its web RPCs, from anywhere.

Data flow (docs/remote.md)::

    executor ──stage──▶ query_files ─▶ upload_files (absent ones, ≤20 files/≤8 MB each)
             ──submit─▶ query_batch (which job names exist?) ─▶ query_files (inputs still
                        there?) ─▶ [create_batch] ─▶ submit_batch (the missing jobs only)
    BOINC:   create_work ▶ transitioner ▶ scheduler ▶ volunteer ▶ validator ▶ assimilator
    poll():  query_batch + job details ─▶ in_progress: events.started(job)
             done:  query_job (canonical instance name) ─▶ get_output.php result_file
                    ─▶ BATCH_DIR/new/<job>.<result>.result      (this laptop delivers)
             error: error record (error mask, exit status) into BATCH_DIR/new/

Choices, and the BOINC traps they avoid (boinc-facts §10):

* **Names.** Inputs are content-addressed ``jf_<md5>``. Job names are the
  executor's ``<prefix>_<batch_id>_<index>``; the batch ID is a server batch ID,
  so the names are unique on the server, and a replay produces the same ones.
* **Idempotent hand-over** (``remote_segments.py``). One duplicate name fails a
  whole ``submit_batch`` (§10.2.5) and jobs can only be added to an INIT batch
  (§10.2.6). So before
  every ``submit_batch`` the backend asks ``query_batch`` of every segment which
  names exist and submits only the others, into a segment still in INIT or a
  new one (recorded locally before use). After a ``submit_batch`` whose reply
  was lost it asks again before anything else: a job is never submitted twice.
* **Transient failures** (server down, timeouts) keep the journaled jobs queued;
  ``poll`` retries them with backoff. Refusals (bad key, no submit rights) fail
  the jobs with the server's message.
* **Deleted inputs.** file_deleter deletes a job's inputs when the job ends, even
  when other jobs use them (§10.1.9). The program file is protected by
  ``<no_delete/>`` in ``pyboinc_remote_in``; data files are per job. ``query_files``
  runs again right before each ``submit_batch``, so a file deleted meanwhile is
  found before it can fail a whole request (§10.2.7).
* **Outputs** are fetched with the authenticated ``get_output.php`` (never the
  anonymous get_output3.php); jobs are submitted with the output template
  ``pyboinc_remote_out``, whose ``<no_delete/>`` keeps outputs where it reads
  them until the batch is retired (``setup-project --remote``, docs/remote.md).
* When the batch completes, its segments are retired (every output is then in
  the local batch directory).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..batch import BatchDir, Checkpoint, JournalEntry
from ..config import JobParams
from ..errors import ConfigError, SubmissionError
from ..protocol.names import APP_NAME
from .base import Backend, BackendEvents
from .remote_delivery import Delivery
from .remote_rpc import (
    JobStatus,
    RemoteSubmitError,
    RemoteUnavailableError,
    RpcClient,
)
from .remote_segments import SegmentSubmission
from .remote_staging import MAX_FILE_BYTES, upload
from .remote_state import (
    ENV_AUTHENTICATOR,
    ENV_AUTHENTICATOR_FILE,
    ENV_SERVER,
    RemoteState,
    default_batch_dir,
    locate,
    register,
    resolve_authenticator,
)
from .rows import BatchCounts

__all__ = [
    "ENV_AUTHENTICATOR",
    "ENV_AUTHENTICATOR_FILE",
    "ENV_SERVER",
    "RemoteBackend",
    "resolve_authenticator",
]

logger = logging.getLogger("boinc_executor")

ENV_POLL_INTERVAL = "BOINC_EXECUTOR_POLL_INTERVAL"

_FETCH_THREADS = 8  # parallel output downloads
_RETRY_MAX = 60.0  # seconds between hand-over retries at most
# job_params submit_batch accepts (§10.8.1); quorum and retry limits come from the template.


class RemoteBackend(SegmentSubmission, Backend):
    """Runs jobs on the BOINC project at ``server`` through its web RPCs.

    Args:
        server: the project's master URL.
        authenticator: the submitting user's account key.
        poll_interval: seconds between status queries (default 2).
        client: an RPC client to use instead of a new one (tests, benchmarks).

    Raises:
        ConfigError: a bad URL or an empty key.
    """

    kind = "remote"
    poll_interval = 2.0
    default_chunksize = 10
    submit_delay = 0.5
    handover_size = 5000
    cancel_delay = 2.0
    #: seconds :meth:`wait_staged` waits for an unreachable server before failing the calls
    stage_patience = 600.0

    def __init__(
        self,
        server: str,
        authenticator: str,
        *,
        poll_interval: float | None = None,
        client: RpcClient | None = None,
    ) -> None:
        self.rpc = client or RpcClient(server, authenticator)
        self.server = self.rpc.server
        self.poll_interval = _poll_interval(poll_interval)
        self._lock = threading.Lock()
        self._batch: BatchDir | None = None
        self._state: RemoteState | None = None
        self._events: BackendEvents | None = None
        self._staged: list[tuple[str, str, bytes]] = []
        self._queue: dict[str, JournalEntry] = {}  # journaled, not yet on the server
        self._params = JobParams()
        self._jobs: dict[
            str, tuple[int, JobStatus]
        ] = {}  # on the server: name -> (segment, status)
        self._segment_state: dict[int, int] = {}
        self._segment_fill: dict[int, tuple[int, int]] = {}  # INIT segments: (njobs, jobs)
        self._settling: dict[int, tuple[tuple[int, int], float]] = {}
        self._dead: set[int] = set()  # left in INIT by a failed submit_batch: never reused
        self._uncertain: set[int] = set()  # segments a submit_batch may have filled
        self._refreshed = False
        self._delivery: Delivery | None = None
        self._started: set[str] = set()
        self._retry_at = 0.0
        self._retry_delay = 1.0
        self._last_warning = 0.0

    @property
    def _deliver(self) -> Delivery:
        assert self._delivery is not None, "attach() first"
        return self._delivery

    # ------------------------------------------------------------------ batches

    def create_batch(self, name: str, batch_dir: Path | None) -> tuple[int, Path]:
        """Create the first server batch (state INIT) and register its directory here."""
        batch_id = self.rpc.create_batch(APP_NAME, f"boinc-executor {name}"[:200])
        path = batch_dir if batch_dir is not None else default_batch_dir(self.server, batch_id)
        register(self.server, batch_id, path)
        return batch_id, path

    @property
    def batch_root(self) -> Path:
        """``<state home>/remote-batches/<server key>``: default batch dirs and script claims."""
        return default_batch_dir(self.server, 0).parent

    def locate_batch(self, batch_id: int) -> Path:
        """The directory this machine's registry holds for ``batch_id`` on this server."""
        return locate(self.server, batch_id)

    def attach(self, batch: BatchDir, checkpoint: Checkpoint, events: BackendEvents) -> None:
        """Load the batch's local state; check the key and ownership with one query."""
        self._batch = batch
        self._state = RemoteState(batch.path, checkpoint.batch_id)
        self._events = events
        register(self.server, checkpoint.batch_id, batch.path)
        self._delivery = Delivery(self.rpc, batch.path, batch.pack.index)
        self._note(self.rpc.query_batch(checkpoint.batch_id), checkpoint.batch_id)

    # ------------------------------------------------------------------ staging

    def stage(self, name: str, data: bytes, *, shared: bool) -> None:
        """Queue an input for upload as ``jf_<md5>``; :meth:`wait_staged` uploads.

        Raises:
            SubmissionError: the file is larger than the server accepts in one upload.
        """
        if len(data) > MAX_FILE_BYTES:
            raise SubmissionError(
                f"an input of {len(data)} bytes ({name}) is over the {MAX_FILE_BYTES}-byte "
                "limit BOINC's job_file.php accepts per file (PHP upload_max_filesize, "
                "boinc-facts §10.1.10); pass smaller arguments (read big data on the volunteer "
                "from a URL), or ask the operator to raise the PHP limits"
            )
        assert self._state is not None, "attach() first"
        import hashlib

        jf = "jf_" + hashlib.md5(data).hexdigest()  # noqa: S324 - BOINC's naming convention
        if self._state.files.get(name, ("",))[0] != jf:
            self._staged.append((name, jf, data))

    def read_input(self, name: str, offset: int = -1, size: int = 0) -> bytes:
        """Inputs live on the server only (as ``jf_<md5>``), so none can be read back.

        Raises:
            FileNotFoundError: always; a retry then asks for a re-run of the script
                with ``retry_failed=True``, which sends the calls again from it.
        """
        raise FileNotFoundError(
            f"{name} was uploaded to {self.server} and is not kept on this machine"
        )

    def wait_staged(self) -> None:
        """Upload what the server lacks, then record the names (before journaling).

        The calls are not journaled yet, so a server that is down is waited for
        (with backoff, up to :attr:`stage_patience` seconds) rather than failing them.

        Raises:
            RemoteSubmitError: the server refused, or stayed unreachable too long.
        """
        staged, self._staged = self._staged, []
        if not staged:
            return
        assert self._state is not None
        by_jf = {jf: data for _, jf, data in staged}
        give_up = time.monotonic() + self.stage_patience
        delay = 1.0
        while True:
            try:
                upload(self.rpc, by_jf)
                break
            except RemoteUnavailableError as exc:
                if time.monotonic() + delay > give_up:
                    raise
                self._warn(f"cannot upload inputs ({exc}); waiting for the server")
                time.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
        self._state.add_files([(n, jf, len(d)) for n, jf, d in staged])

    # ------------------------------------------------------------------ submission

    def submit(self, jobs: Sequence[JournalEntry], params: JobParams) -> None:
        """Hand journaled jobs over: only those the server does not have yet.

        Raises:
            SubmissionError: the server refused the jobs (its message is included).
            RemoteSubmitError: the server refused the credentials.
        """
        self._params = params
        _warn_ignored_params(params)
        with self._lock:
            for job in jobs:
                if job.job not in self._jobs:
                    self._queue[job.job] = job
            self._retry_at = 0.0
        self._hand_over(from_poll=False)

    def _hand_over(self, *, from_poll: bool) -> None:
        """Submit the queued jobs; on a transient failure keep them for :meth:`poll`.

        A refusal fails the queued jobs: raised to the collector from :meth:`submit`,
        as error records from :meth:`poll` (the collector already counts them as
        handed over).
        """
        try:
            self._submit_queued()
        except RemoteUnavailableError as exc:
            self._retry_at = time.monotonic() + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, _RETRY_MAX)
            self._warn(f"{len(self._queue)} jobs wait to be submitted ({exc}); retrying")
            return
        except (RemoteSubmitError, SubmissionError) as exc:
            with self._lock:
                failed, self._queue = list(self._queue), {}
            if not from_poll:
                raise
            for name in failed:
                self._deliver.error(name, "WorkunitError", f"the server refused job {name}: {exc}")
            if failed and self._events is not None:
                self._events.wake()
            return
        self._retry_delay = 1.0

    # ------------------------------------------------------------------ observing

    def poll(self) -> None:
        """Retry a pending hand-over; report started jobs; deliver finished ones."""
        if self._state is None or self._events is None:
            return
        try:
            if self._queue and time.monotonic() >= self._retry_at:
                self._hand_over(from_poll=True)
            with self._lock:
                open_segments = sorted(
                    {
                        seg
                        for name, (seg, _) in self._jobs.items()
                        if name not in self._deliver.delivered
                    }
                    | {s for s in self._state.segments if self._segment_state.get(s) is None}
                )
            self._refresh(open_segments)
        except RemoteUnavailableError as exc:
            self._warn(f"cannot reach the server ({exc}); results are fetched when it is back")
            return
        delivered = False
        with self._lock:
            jobs = [
                job for name, (_, job) in self._jobs.items() if name not in self._deliver.delivered
            ]
        done = []
        for job in jobs:
            if job.status == "in_progress" and job.name not in self._started:
                self._started.add(job.name)
                self._events.started(job.name)
            elif job.status == "done" and job.canonical_instance_id:
                done.append(job)
            elif job.status == "error":
                delivered |= self._deliver.fail(job)
        if done:  # downloads are latency-bound: a few in parallel
            with ThreadPoolExecutor(min(_FETCH_THREADS, len(done))) as pool:
                delivered |= any(list(pool.map(self._deliver.fetch, done)))
        if delivered:
            self._events.wake()

    def progress(self) -> BatchCounts:
        """Counts of the batch's jobs as the last status query saw them."""
        with self._lock:
            statuses = [job.status for _, job in self._jobs.values()]
        return BatchCounts(
            total=len(statuses) + len(self._queue),
            unsent=statuses.count("queued") + len(self._queue),
            in_progress=statuses.count("in_progress"),
            done=statuses.count("done"),
            failed=statuses.count("error"),
        )

    def _warn(self, message: str) -> None:
        if time.monotonic() - self._last_warning >= 30.0:
            self._last_warning = time.monotonic()
            logger.warning("%s", self.rpc.scrub(message))

    # ------------------------------------------------------------------ cancel / close

    def cancel(self, jobs: Collection[str]) -> None:
        """Cancel jobs with ``abort_jobs`` (names the server has; running ones run on)."""
        names = sorted(jobs)
        with self._lock:
            for name in names:
                self._queue.pop(name, None)
            known = [n for n in names if n in self._jobs]
        self._deliver.cancelled.update(names)
        if known:  # an unknown name would fail the whole request
            try:
                self.rpc.abort_jobs(known)
            except RemoteSubmitError as exc:
                self._warn(f"cancelling {len(known)} jobs on the server failed: {exc}")

    def retire(self) -> None:
        """Retire every segment of the attached batch (``retire_batch``, §10.5.4)."""
        assert self._state is not None, "attach() first"
        for segment in self._state.segments:
            self.rpc.retire_batch(segment)

    def abort(self) -> None:
        """Cancel every job of the attached batch (``abort_batch``, §10.5.3)."""
        assert self._state is not None, "attach() first"
        for segment in self._state.segments:
            self.rpc.abort_batch(segment)

    def close(self, *, complete: bool, interrupted: bool = False) -> None:
        """Retire the batch on the server once every result is here (best effort).

        An interrupted master leaves the server's jobs alone: a re-run or resume
        collects them.
        """
        if complete and not interrupted and self._state is not None:
            try:
                self.retire()
            except RemoteSubmitError as exc:
                logger.warning(
                    "retiring batch %d on the server failed: %s", self._state.segments[0], exc
                )


_WARNED: set[str] = set()


def _warn_ignored_params(params: JobParams) -> None:
    """submit_batch carries no quorum or retry limits: say so once if they were changed."""
    default = JobParams()
    fields = (
        "min_quorum",
        "target_nresults",
        "max_error_results",
        "max_total_results",
        "max_success_results",
        "priority",
    )
    changed = [f for f in fields if getattr(params, f) != getattr(default, f)]
    key = ",".join(changed)
    if changed and key not in _WARNED:
        _WARNED.add(key)
        logger.warning(
            "remote submission cannot set %s (submit_batch has no such options); the "
            "project's templates/pyboinc_remote_in decides them",
            ", ".join(changed),
        )


def _poll_interval(value: float | None) -> float:
    if value is None:
        raw = os.environ.get(ENV_POLL_INTERVAL)
        if not raw:
            return RemoteBackend.poll_interval
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{ENV_POLL_INTERVAL}={raw!r} is not a number of seconds") from None
    if not value > 0:
        raise ConfigError(f"poll_interval must be a positive number of seconds, got {value!r}")
    return float(value)
