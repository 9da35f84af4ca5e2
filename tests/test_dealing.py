"""The embedded backend's queue of waiting jobs: order, give-backs, cancellation."""

from __future__ import annotations

from typing import Any, cast

from boinc_executor.backends.dealing import (
    AHEAD,
    LONG_JOB,
    MAX_PREFETCH,
    PREFETCH,
    Dispatch,
    PendingJobs,
    WorkerSlot,
    deal,
    job_to_withdraw,
)
from boinc_executor.batch import JournalEntry


def _entries(names: str, offset: int = 0) -> list[JournalEntry]:
    return [
        JournalEntry(n, i, i, 1, "d", "prog", "inputs.pack", offset + 10 * i, 10)
        for i, n in enumerate(names.split())
    ]


def _drain(queue: PendingJobs) -> list[str]:
    names = []
    while (taken := queue.pop()) is not None:
        names.append(taken[0])
    return names


def test_jobs_are_dealt_in_hand_over_order_with_their_inputs() -> None:
    queue = PendingJobs()
    assert not queue and queue.pop() is None
    queue.extend(_entries("a b"))
    queue.extend([])
    queue.extend(_entries("c", offset=100))
    assert queue
    assert queue.pop() == ("a", Dispatch("prog", "inputs.pack", 0, 10, 0))
    assert queue.pop() == ("b", Dispatch("prog", "inputs.pack", 10, 10, 0))
    assert queue.pop() == ("c", Dispatch("prog", "inputs.pack", 100, 10, 0))
    assert not queue and queue.pop() is None


def test_a_job_put_back_goes_first_and_keeps_its_attempt() -> None:
    queue = PendingJobs()
    queue.extend(_entries("a b c"))
    assert queue.pop() is not None and queue.pop() is not None  # a and b dealt
    queue.put_back("b", Dispatch("prog", "inputs.pack", 10, 10, 1))
    queue.put_back("a", Dispatch("prog", "inputs.pack", 0, 10, 1))  # last back, first out
    assert queue.pop() == ("a", Dispatch("prog", "inputs.pack", 0, 10, 1))
    assert _drain(queue) == ["b", "c"]


def test_dropped_jobs_are_skipped_and_the_queue_says_when_it_is_empty() -> None:
    queue = PendingJobs()
    queue.extend(_entries("a b c d"))
    queue.put_back("x", Dispatch("prog", "inputs.pack", 0, 10, 1))
    queue.drop(["b", "d", "x", "unknown"])
    assert _drain(queue) == ["a", "c"]
    queue.drop(["a"])  # only dropped names of an empty queue: it is empty
    queue.extend(_entries("e"))
    queue.drop(["e"])
    assert not queue


def test_a_name_dropped_after_it_was_dealt_does_not_cancel_its_return() -> None:
    """A job a worker held when its cancellation came runs on: if that worker dies,
    the job comes back and is dealt again."""
    queue = PendingJobs()
    queue.extend(_entries("a b"))
    assert queue.pop() is not None  # a is with a worker
    queue.drop(["a"])
    queue.put_back("a", Dispatch("prog", "inputs.pack", 0, 10, 1))
    assert _drain(queue) == ["a", "b"]


def _workers(n: int) -> list[WorkerSlot]:
    workers = [WorkerSlot(f"s{i}") for i in range(n)]
    for worker in workers:
        worker.proc = cast(Any, object())  # live (the dispatcher only asks whether it is)
    return workers


def test_jobs_go_to_the_least_busy_worker_at_most_prefetch_deep() -> None:
    workers = _workers(2)
    queue = PendingJobs()
    queue.extend(_entries("a b c d e"))
    dealt: list[str] = []
    lines = deal(workers, queue, 100.0, dealt)
    assert dealt == ["a", "b", "c", "d"][: 2 * PREFETCH]
    assert [list(w.assigned) for w in workers] == [["a", "c"], ["b", "d"]]
    assert lines[workers[0]][0] == Dispatch("prog", "inputs.pack", 0, 10, 0).line("a")
    assert _drain(queue) == ["e"]
    assert job_to_withdraw(workers, 100.0) is None  # no worker is idle


def test_no_job_is_queued_behind_a_long_one_and_an_idle_worker_asks_for_it() -> None:
    busy, idle = _workers(2)
    queue = PendingJobs()
    queue.extend(_entries("a b"))
    deal([busy], queue, 100.0, [])  # both on one worker, before the other started
    assert list(busy.assigned) == ["a", "b"]
    assert job_to_withdraw([busy, idle], 100.0 + LONG_JOB / 2) is None  # not long yet
    later = 100.0 + 2 * LONG_JOB
    assert job_to_withdraw([busy, idle], later) == (busy, "b")
    busy.withdrawing.add("b")
    assert job_to_withdraw([busy, idle], later) is None  # one request at a time
    queue.extend(_entries("c"))
    deal([busy, idle], queue, later, [])
    assert list(idle.assigned) == ["c"]  # not behind the long job


def _paced(worker: WorkerSlot, seconds_per_job: float, jobs: int = 40) -> None:
    """Let ``worker`` report ``jobs`` jobs, each taking ``seconds_per_job``."""
    now = 0.0
    for i in range(jobs):
        worker.assigned[f"p{i}"] = Dispatch("prog", "inputs.pack", 0, 10, 0)
        worker.running_since = now
        now += seconds_per_job
        worker.done(f"p{i}", now)


def test_short_jobs_are_dealt_deeper_long_ones_no_deeper_than_prefetch() -> None:
    short, long, fresh = _workers(3)
    _paced(short, AHEAD / 100)
    _paced(long, AHEAD)
    assert (short.depth, long.depth, fresh.depth) == (MAX_PREFETCH, PREFETCH, PREFETCH)
    queue = PendingJobs()
    queue.extend(_entries(" ".join(f"j{i}" for i in range(20))))
    dealt: list[str] = []
    lines = deal([short], queue, 100.0, dealt)
    assert len(dealt) == MAX_PREFETCH == len(short.assigned)
    assert len(lines[short]) == MAX_PREFETCH  # one write carries them all


def test_a_deep_worker_is_topped_up_only_once_half_its_jobs_are_done() -> None:
    (worker,) = _workers(1)
    _paced(worker, AHEAD / 100)
    queue = PendingJobs()
    queue.extend(_entries(" ".join(f"j{i}" for i in range(40))))
    deal([worker], queue, 100.0, [])
    for k in range(MAX_PREFETCH // 2 - 1):  # still more than half held: nothing dealt
        worker.done(f"j{k}", 100.0 + k * 1e-4)
        assert deal([worker], queue, 100.0 + k * 1e-4, []) == {}
    now = 100.0 + MAX_PREFETCH // 2 * 1e-4
    worker.done(f"j{MAX_PREFETCH // 2 - 1}", now)
    dealt: list[str] = []
    deal([worker], queue, now, dealt)
    assert len(dealt) == MAX_PREFETCH // 2 and len(worker.assigned) == MAX_PREFETCH


def test_the_pace_is_learned_from_the_running_job_only() -> None:
    (worker,) = _workers(1)
    worker.assigned.update(
        (name, Dispatch("prog", "inputs.pack", 0, 10, 0)) for name in ("a", "b", "c")
    )
    worker.running_since = 100.0
    worker.done("c", 100.5)  # a queued job reported out of turn (given back): no pace
    assert worker.pace == 0.0
    worker.done("a", 101.0)
    assert worker.pace == 0.5
