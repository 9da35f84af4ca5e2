"""The iterator ``BoincExecutor.map`` returns: ordered results, and what closing it cancels.

Design note. As with ``ProcessPoolExecutor``, closing the iterator (``break``,
``close()``, garbage collection) or a failing item cancels the jobs that have
not started. Unlike it, an iterator closed because the process is being
interrupted (^C, SIGTERM, ``SystemExit``; see :mod:`boinc_executor.interrupts`)
cancels nothing: those jobs belong to a batch the next run replays.
"""

from __future__ import annotations

import itertools
import operator
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

from . import interrupts
from .protocol import all_succeeded

if TYPE_CHECKING:
    from .executor import BoincExecutor

__all__ = ["batched", "map_results"]

T = TypeVar("T")
_second = operator.itemgetter(1)


def batched(iterable: Iterable[T], n: int) -> Iterator[list[T]]:
    """Lists of ``n`` items (the last one shorter)."""
    it = iter(iterable)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def _result_or_cancel(fut: Future[T], timeout: float | None = None) -> T:
    try:
        return fut.result(timeout)
    except BaseException as exc:
        if not (interrupts.is_interrupt(exc) or interrupts.interrupted()):
            fut.cancel()
        raise


def map_results(
    executor: weakref.ReferenceType[BoincExecutor],
    fn: Callable[..., T],
    pending: deque[Future[list[tuple[bool, Any]]]],
    more: Iterator[list[tuple[Any, ...]]] | None,
    end_time: float | None,
) -> Iterator[T]:
    """The results of ``pending`` chunks in order, submitting ``more`` as they are consumed.

    Holds the executor only weakly: the iterator must not keep it alive.
    """
    stopped = False  # the process is being interrupted: cancel nothing
    exhausted = False  # every result was yielded
    try:
        while pending:
            chunk = pending.popleft()
            ex = executor()
            if more is not None and ex is not None:
                args = next(more, None)
                if args is not None:
                    pending.append(ex._submitter.submit_chunk(fn, args))
            del ex
            timeout = None if end_time is None else end_time - time.monotonic()
            outcomes = _result_or_cancel(chunk, timeout)
            del chunk
            if all_succeeded(outcomes):  # hand the values straight on
                yield from map(_second, outcomes)
                continue
            for ok, value in outcomes:
                if not ok:
                    raise value
                yield value
        exhausted = True
    except BaseException as exc:
        stopped = interrupts.is_interrupt(exc)
        raise
    finally:
        # Closed by break/close() or failed: cancel the rest, as ProcessPoolExecutor
        # does. Closed because ^C or SIGTERM unwinds the caller: keep everything.
        if not (exhausted or stopped or interrupts.interrupted()):
            # A SystemExit in the caller's loop closes us too, unseen: the executor
            # takes an exit right after this for an interrupt (executor.py).
            ex = executor()
            if ex is not None:
                ex._collector.give_up()
            del ex
            for chunk in pending:
                chunk.cancel()
