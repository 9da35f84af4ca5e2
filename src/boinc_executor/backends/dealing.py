"""The embedded backend's queue of jobs waiting for a worker.

With a slow function and a long ``map``, most of a batch waits here: 10⁵ jobs
or more behind a few busy workers. So a waiting job is no object of its own.
It is a slot in the columns of the hand-over it came in with: its name (the
collector's own string), its program's and pack's names (shared strings), and
its pack offset and size in two ``array`` columns. That is 40 bytes a job,
where an ordered dict entry and a tuple per job cost about 200, and it keeps
the master's memory per pending job below ``ProcessPoolExecutor``'s.

The few jobs that come back (from a worker that died, or one that gave a job
back) go ahead of the rest, with their attempt count, in a small ordered dict.

:class:`WorkerSlot` is the dispatcher's view of one worker: the jobs dealt to it
and not yet reported, and the handled records lent back to it. :func:`deal`
and :func:`job_to_withdraw` are the dispatcher's two decisions, on that view.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from array import array
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from ..batch import JournalEntry
from .local_slot import MIN_SPARES, lent_cap

__all__ = [
    "AHEAD",
    "LONG_JOB",
    "MAX_PREFETCH",
    "PREFETCH",
    "Dispatch",
    "PendingJobs",
    "WorkerSlot",
    "deal",
    "job_to_withdraw",
]

PREFETCH = 2  # jobs a worker holds at least, so it never waits on a round trip
#: ... and at most: short jobs are dealt this deep, so that a worker reads several
#: ``J`` lines per wake-up and the master writes them in one go (with two, master and
#: worker woke each other per job, and a trivial job cost about 15% more CPU)
MAX_PREFETCH = 8
#: how much work, in seconds at the worker's recent pace, a worker holds at most
#: beyond the job it runs: what an idle worker may wait for at the end of a map
AHEAD = 0.004
LONG_JOB = 0.05  # seconds after which a running job no longer gets a job queued behind it


class Dispatch(NamedTuple):
    """Where a job's inputs are, and how often it was tried: what a worker is told."""

    program: str
    pack: str  # the input pack, or the data file's name in download/ (offset -1)
    offset: int
    size: int
    attempt: int

    def line(self, job: str) -> str:
        """The ``J`` line that hands the job to a worker."""
        return (
            f"J\t{job}\t{self.program}\t{self.pack}\t{self.offset}\t{self.size}\t{self.attempt}\n"
        )


class _Run:
    """One hand-over's jobs, in columns, dealt from ``next`` on."""

    __slots__ = ("names", "next", "offsets", "packs", "programs", "sizes")

    def __init__(self, entries: Sequence[JournalEntry]) -> None:
        self.names = [e.job for e in entries]
        self.programs = [sys.intern(e.program) for e in entries]
        self.packs = [e.data for e in entries]
        self.offsets = array("q", [e.data_offset for e in entries])
        self.sizes = array("q", [e.data_size for e in entries])
        self.next = 0

    def take(self) -> tuple[str, Dispatch]:
        i = self.next
        self.next = i + 1
        return self.names[i], Dispatch(
            self.programs[i], self.packs[i], self.offsets[i], self.sizes[i], 0
        )


class PendingJobs:
    """Jobs no worker holds yet, in the order they are to be dealt."""

    def __init__(self) -> None:
        self._front: OrderedDict[str, Dispatch] = OrderedDict()  # given back: dealt first
        self._runs: deque[_Run] = deque()
        self._dropped: set[str] = set()  # cancelled while still in a run

    def extend(self, entries: Sequence[JournalEntry]) -> None:
        """Queue journaled jobs, first attempt, behind every job already queued."""
        if entries:
            self._runs.append(_Run(entries))

    def put_back(self, job: str, dispatch: Dispatch) -> None:
        """Queue a job ahead of all others (its worker died, or gave it back)."""
        self._front[job] = dispatch
        self._front.move_to_end(job, last=False)

    def drop(self, jobs: Iterable[str]) -> None:
        """Dequeue jobs (cancelled); names this queue does not hold are ignored."""
        for job in jobs:
            if self._front.pop(job, None) is None and self._runs:
                self._dropped.add(job)

    def clear(self) -> None:
        self._front.clear()
        self._runs.clear()
        self._dropped.clear()

    def _head(self) -> _Run | None:
        """The run holding the next job to deal, past every dropped one; None if none."""
        runs, dropped = self._runs, self._dropped
        while runs:
            run = runs[0]
            if run.next == len(run.names):
                runs.popleft()
                continue
            if dropped and run.names[run.next] in dropped:
                dropped.discard(run.names[run.next])
                run.next += 1
                continue
            return run
        dropped.clear()  # names of jobs that had left the queue already
        return None

    def __bool__(self) -> bool:
        return bool(self._front) or self._head() is not None

    def pop(self) -> tuple[str, Dispatch] | None:
        """The next job to deal, or None when the queue is empty."""
        if self._front:
            return self._front.popitem(last=False)
        run = self._head()
        return None if run is None else run.take()


class WorkerSlot:
    """One worker slot: its current process and the jobs dealt to it."""

    def __init__(self, slot: str) -> None:
        self.slot = slot
        self.proc: subprocess.Popen[bytes] | None = None
        # Dealt and not yet reported, in order: the first one runs, the rest wait.
        self.assigned: OrderedDict[str, Dispatch] = OrderedDict()
        self.running_since = 0.0  # when the first assigned job began (monotonic)
        self.pace = 0.0  # seconds per job lately (a moving average; 0 until a job ended)
        self.withdrawing: set[str] = set()  # asked back (X), not yet given back (W)
        self.thread: threading.Thread | None = None
        # Handled records lent back for reuse (R), the last lent_cap of them: they stay
        # in new/ until the worker reuses (or deletes) them, and a scan skips them.
        self.lent: OrderedDict[str, None] = OrderedDict()
        self._lent_cap = MIN_SPARES

    def lend(self, names: list[str]) -> None:
        """Note records lent back to this worker (it keeps as many, see ``lent_cap``)."""
        lent = self.lent
        self._lent_cap = lent_cap(self._lent_cap, len(names))
        lent.update(dict.fromkeys(names))
        while len(lent) > self._lent_cap:
            lent.popitem(last=False)

    def forget_lent(self) -> None:
        """The worker is gone: what it was lent is no longer kept (a scan deletes it)."""
        self.lent.clear()
        self._lent_cap = MIN_SPARES

    def busy_for(self, now: float) -> float:
        """Seconds the running job has run (0 when none runs)."""
        return now - self.running_since if self.assigned else 0.0

    def queued(self) -> list[str]:
        """The jobs dealt behind the running one that may still be asked back."""
        return [j for j in list(self.assigned)[1:] if j not in self.withdrawing]

    @property
    def depth(self) -> int:
        """How many jobs this worker may hold: :data:`AHEAD` worth, within the bounds."""
        if not self.pace:
            return PREFETCH
        return max(PREFETCH, min(MAX_PREFETCH, int(AHEAD / self.pace)))

    def done(self, job: str, now: float) -> Dispatch | None:
        """The worker reported ``job``: the next job dealt to it runs from now."""
        if self.assigned and job == next(iter(self.assigned)):
            took = now - self.running_since
            self.pace = took if not self.pace else self.pace + (took - self.pace) / 8
        dispatch = self.assigned.pop(job, None)
        self.running_since = now
        return dispatch


def deal(
    workers: Sequence[WorkerSlot], pending: PendingJobs, now: float, dealt: list[str]
) -> dict[WorkerSlot, list[str]]:
    """Deal pending jobs to the least busy live workers; returns each worker's ``J`` lines.

    A worker holds at most its :attr:`~WorkerSlot.depth` of jobs (the one it
    runs and those queued behind it), and none is queued behind a job that has
    run for :data:`LONG_JOB` or more: an idle worker takes it instead. A worker
    is topped up once it holds half its depth or less, so that deep dealing
    sends several lines at a time rather than one per finished job. The names
    of the jobs dealt are appended to ``dealt``.
    """
    lines: dict[WorkerSlot, list[str]] = {}
    ready: dict[WorkerSlot, int] = {}  # the workers to top up, and their depths
    for w in workers:
        depth = w.depth
        if (
            w.proc is not None
            and len(w.assigned) <= depth // 2
            and not (w.assigned and w.busy_for(now) >= LONG_JOB)
        ):
            ready[w] = depth
    while ready:
        taken = pending.pop()
        if taken is None:
            return lines
        job, dispatch = taken
        worker = min(ready, key=lambda w: len(w.assigned))
        if not worker.assigned:
            worker.running_since = now
        worker.assigned[job] = dispatch
        dealt.append(job)
        lines.setdefault(worker, []).append(dispatch.line(job))
        if len(worker.assigned) >= ready[worker]:
            del ready[worker]
    return lines


def job_to_withdraw(workers: Sequence[WorkerSlot], now: float) -> tuple[WorkerSlot, str] | None:
    """A job queued behind a long one to ask back for an idle worker: (its worker, job).

    The last queued job of the first worker busy for :data:`LONG_JOB` or more
    that is not already giving one back; None while no worker is idle or none
    has such a job. One request at a time: its answer deals the job.
    """
    if not any(w.proc is not None and not w.assigned for w in workers):
        return None
    for busy in workers:
        if busy.withdrawing or busy.busy_for(now) < LONG_JOB:
            continue
        queued = busy.queued()
        if queued:
            return busy, queued[-1]
    return None
