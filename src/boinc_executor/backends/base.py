"""The seam between the executor front end and the engines that run jobs.

A backend stages input files where its volunteers fetch them, hands journaled
jobs over (idempotently: a replay hands the same job over again and the backend
creates only what it does not already have), and makes every job's outcome
appear as a record in ``BATCH_DIR/new/``. Results never travel through the
backend object itself: the executor only ever learns of them from records, so
the local and the BOINC engines are observed the same way.

Backends are imported lazily (as ``concurrent.futures`` does for its
executors), so ``import boinc_executor`` never imports ``MySQLdb``.

Design note. ``close(interrupted=True)`` is the interrupt path: a backend stops
promptly and never cancels a job it was handed (cancelling is only ever asked
for by :meth:`Backend.cancel`, for futures the user cancelled).
:attr:`Backend.batch_root` is where script-owned batches and their claims live;
:meth:`Backend.read_input` lets a failed job be sent again under a new name.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..batch import BatchDir, Checkpoint, JournalEntry
from ..config import JobParams
from ..errors import ConfigError

__all__ = ["Backend", "BackendEvents", "JobState", "load_backend"]


class JobState(str, enum.Enum):
    """Where a job is, as the executor tracks it."""

    PENDING = "pending"  # created by submit/map, not yet journaled
    SUBMITTED = "submitted"  # journaled and handed to the backend
    RUNNING = "running"  # the backend reports it started (local) or was sent (BOINC)
    DONE = "done"  # a record resolved its futures
    CANCELLED = "cancelled"  # every future was cancelled before it ran

    def can_become(self, other: JobState) -> bool:
        """Whether the transition ``self → other`` is allowed."""
        return other in _TRANSITIONS[self]


_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.SUBMITTED, JobState.DONE, JobState.CANCELLED}),
    JobState.SUBMITTED: frozenset({JobState.RUNNING, JobState.DONE, JobState.CANCELLED}),
    JobState.RUNNING: frozenset({JobState.DONE}),
    JobState.DONE: frozenset(),
    JobState.CANCELLED: frozenset({JobState.DONE}),  # a late record is still read, then dropped
}


@dataclass(frozen=True)
class BackendEvents:
    """Callbacks a backend uses to tell the executor something happened.

    Every callback is safe to call from any thread of the backend.

    Attributes:
        started: a job began running (its futures become running and can no
            longer be cancelled).
        wake: a record has probably arrived in ``new/``; scan now rather than
            at the next poll.
        record_delivered: the record with this file name (``<job>.<tag>.result``)
            is now in ``new/``: the collector claims and decodes it without
            listing ``new/``. A backend that knows each record it delivers (the
            embedded one) calls this instead of ``wake``; the periodic scan
            still finds any record whose announcement was missed.
        failed: a job's outcome could not be delivered as a record at all (a
            full disk); its futures fail with ``error``. The job keeps its
            journal line without a record, so a re-run or ``resume`` runs it
            again. None: the backend logs the failure and leaves it to a re-run.
    """

    started: Callable[[str], None]
    wake: Callable[[], None]
    record_delivered: Callable[[str], None]
    failed: Callable[[str, BaseException], None] | None = None


class Backend(abc.ABC):
    """What the executor needs from an engine that runs jobs."""

    kind: ClassVar[str]
    #: seconds between scans of ``new/`` when nothing wakes the collector
    poll_interval: float = 1.0
    #: how many calls ``map`` packs into one job when the caller does not say
    default_chunksize: int = 1
    #: seconds a submitted job may wait so that it is handed over in bulk with others
    submit_delay: float = 0.0
    #: jobs staged, journaled and handed over together at most (later ones wait a pass)
    handover_size: int = 1024
    #: seconds a cancel of a handed-over job waits before it reaches the backend, unless
    #: the executor shuts down normally first; an interrupt or exit in that time drops it
    #: (``sys.exit()`` in a ``for`` loop over ``map`` closes the iterator, which cancels,
    #: before anything sees the ``SystemExit``). Engines whose jobs cost volunteers' work
    #: set it; the embedded one cancels at once, as ``ProcessPoolExecutor`` does.
    cancel_delay: float = 0.0
    #: whether the backend names every record it delivers (``BackendEvents.record_delivered``);
    #: for the others, which only drop files into ``new/``, the collector watches it (``watch.py``)
    announces_records: bool = False

    @abc.abstractmethod
    def create_batch(self, name: str, batch_dir: Path | None) -> tuple[int, Path]:
        """Create and persist a new batch; returns its ID and its directory.

        With ``batch_dir`` None the backend chooses the directory from the ID.
        """

    def reuse_records(self, names: list[str]) -> list[str]:
        """Offer the files of handled records, packed and synced, to the workers for reuse.

        The embedded backend's workers rewrite such a file in place as their next
        output instead of creating one per job. Returns the names not taken: the
        decoder deletes those from ``new/``. The default takes none, which is
        right wherever records come from elsewhere (BOINC's assimilator).
        """
        return names

    def lends(self, name: str) -> bool:
        """Whether the handled record ``name`` in ``new/`` waits there for a worker's reuse.

        A scan leaves such a file alone instead of deleting it as a late duplicate.
        """
        return False

    def wants_jobs_now(self) -> bool:
        """Whether a job submitted now would start at once, so it is best handed over inline.

        The collector then hands a lone job over on the submitting thread instead
        of waking its own thread: one thread hop less between ``submit`` and the
        job running. False (the default) keeps every job for the collector's
        bulk hand-over, as ``create_work`` and remote submission want. It is a
        hint, read without a lock.
        """
        return False

    @property
    @abc.abstractmethod
    def batch_root(self) -> Path:
        """Where the batch directories the backend chooses live (and the script claims)."""

    @abc.abstractmethod
    def locate_batch(self, batch_id: int) -> Path:
        """The directory of an existing batch.

        Raises:
            BatchNotFoundError: no such batch, or its directory is gone.
        """

    @abc.abstractmethod
    def attach(self, batch: BatchDir, checkpoint: Checkpoint, events: BackendEvents) -> None:
        """Bind to an open batch directory before any job is staged or submitted."""

    @abc.abstractmethod
    def stage(self, name: str, data: bytes, *, shared: bool) -> None:
        """Put an input file where the backend's volunteers fetch it from.

        Physical names are immutable: staging a name that already exists with the
        same content is a no-op. ``shared`` files (programs) serve many jobs.
        """

    @abc.abstractmethod
    def read_input(self, name: str, offset: int = -1, size: int = 0) -> bytes:
        """The bytes of an input staged earlier (to re-submit it under a new job name).

        ``offset`` and ``size`` locate a data file inside a pack, as the journal
        records them for a backend whose :meth:`stage_input` packs inputs; -1 means
        the input is the whole file ``name``.

        Raises:
            OSError: the file is not where it was staged.
        """

    def stage_input(self, entry: JournalEntry, data: bytes) -> JournalEntry:
        """Stage a job's data file; returns the journal entry that says where it went.

        By default the data file is staged as the file ``entry.data`` and the
        entry is returned unchanged; a backend that packs its inputs returns the
        entry with the pack's name, offset and size, and the collector journals that.
        """
        self.stage(entry.data, data, shared=False)
        return entry

    def wait_staged(self) -> None:  # noqa: B027 - optional hook for asynchronous staging
        """Return once every file staged so far is durable where volunteers fetch it.

        The collector calls it before journaling, so a journaled job always has
        its input files, even when the master is killed right after.
        """

    @abc.abstractmethod
    def submit(self, jobs: Sequence[JournalEntry], params: JobParams) -> None:
        """Hand journaled jobs over.

        The collector hands a job over at most once per run; a job the backend
        holds from an earlier run (a work unit that BOINC already has) is skipped.
        """

    def poll(self) -> None:  # noqa: B027 - optional hook, most backends need none
        """Periodic check, from the collector thread, for outcomes that leave no file.

        A backend that learns of a failure this way delivers an error record into
        ``new/`` itself, so every outcome reaches the executor the same way.
        """

    @abc.abstractmethod
    def cancel(self, jobs: Collection[str]) -> None:
        """Stop jobs that have not started; running ones are best effort."""

    @abc.abstractmethod
    def close(self, *, complete: bool, interrupted: bool = False) -> None:
        """Release resources; ``complete`` means every job of the batch is done.

        ``interrupted`` means the master is being stopped (^C, SIGTERM): stop
        promptly, and never cancel a job that was handed over; it stays
        journaled, and the next run or ``resume`` collects it.
        """


def load_backend(
    project_dir: Path | None,
    *,
    max_workers: int | None = None,
    server: str | None = None,
    authenticator: str | None = None,
) -> Backend:
    """The backend for a configuration: remote with a server URL, BOINC with a
    project, else local.

    ``server`` (else ``$BOINC_EXECUTOR_SERVER`` when no project is configured)
    selects the remote backend; ``authenticator`` is resolved by
    :func:`~boinc_executor.backends.remote.resolve_authenticator`.

    Raises:
        ConfigError: the BOINC backend is wanted but ``mysqlclient`` is missing,
            ``max_workers`` is not a positive integer, both a project and a server
            are given, or the remote backend has no authenticator.
    """
    if max_workers is not None and (not isinstance(max_workers, int) or max_workers <= 0):
        raise ConfigError(f"max_workers must be a positive integer, got {max_workers!r}")
    if server is not None and project_dir is not None:
        raise ConfigError(
            "give either project_dir (on the BOINC server) or server= (remote submission), not both"
        )
    if server is None and project_dir is None:
        import os

        server = os.environ.get("BOINC_EXECUTOR_SERVER") or None
    if server is not None:
        from .remote import RemoteBackend, resolve_authenticator

        return RemoteBackend(server, resolve_authenticator(authenticator))
    if project_dir is None:
        from .local import LocalBackend

        return LocalBackend(max_workers=max_workers)
    try:
        from .boinc import BoincBackend
    except ImportError as exc:
        raise ConfigError(
            f"the BOINC backend needs mysqlclient ({exc}); "
            "install it with: pip install mysqlclient (the package's [boinc] extra)"
        ) from exc
    backend: Backend = BoincBackend(project_dir)
    return backend
