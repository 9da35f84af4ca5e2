"""A job: its calls' futures, where it is, and how a record's outcomes resolve them.

Owned by the collector (:mod:`boinc_executor.collector`), which keeps the job
table and decides when a job resolves; this module only says how.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from .backends.base import JobState
from .errors import rebuild_exception
from .protocol import all_succeeded

if TYPE_CHECKING:
    from .collector import Collector

__all__ = ["Job"]

logger = logging.getLogger("boinc_executor")


class Job:
    """One job: its name, its calls' futures, and where it is.

    A job has one future per call, except a ``map`` chunk: like
    ``ProcessPoolExecutor``, it has a single future whose result is the list of
    the calls' outcomes, ``(True, value)`` or ``(False, exception)``, so a map
    over many small calls does not pay for a future per call.

    It is also the done-callback of its futures, so cancelling a future reaches
    the collector without a closure per future. A pending job costs less than
    ``ProcessPoolExecutor``'s work item: slots only, a lone future held as is
    (not in a tuple of one), and nothing that its name already says (index,
    first call) or the journal keeps.
    """

    __slots__ = ("_futures", "chunk", "collector", "n", "name", "record", "state")

    def __init__(
        self,
        collector: Collector,
        name: str,
        futures: Sequence[Future[Any]],
        *,
        n: int | None = None,
    ) -> None:
        self.collector = collector
        self.name = name
        self._futures: Future[Any] | tuple[Future[Any], ...] = (
            futures[0] if len(futures) == 1 else tuple(futures)
        )
        self.n = len(futures) if n is None else n  # calls the job carries
        self.chunk = n is not None  # one future for all n calls
        self.state = JobState.PENDING
        # The record claimed for it (its name in new/, or "" for its packed one):
        # later records of the job wait in new/ until it is resolved, then are dropped.
        self.record: str | None = None

    @property
    def futures(self) -> tuple[Future[Any], ...]:
        """The job's futures: one per call, or the chunk's one."""
        futures = self._futures
        return (futures,) if isinstance(futures, Future) else futures

    def __call__(self, future: Future[Any]) -> None:
        if future.cancelled():
            self.collector.future_cancelled(self, future)

    def claim(self) -> list[bool]:
        """Which of the futures a resolution now sets (called under the collector's lock)."""
        return [
            not fut.done() and (fut.running() or fut.set_running_or_notify_cancel())
            for fut in self.futures
        ]

    def settle(
        self,
        running: list[bool],
        outcomes: list[tuple[bool, Any]] | None,
        error: BaseException | None,
    ) -> int:
        """Set the claimed futures from the calls' outcomes (or ``error``); returns failed calls.

        A chunk's one future gets the outcome list itself when no call failed,
        so a ``map`` over many small calls copies nothing.

        ``Future`` logs an ``Exception`` from a done-callback, but lets a
        ``SystemExit`` (a callback calling ``sys.exit()``) or any other
        ``BaseException`` escape ``set_result``. Every other claimed future is still
        set; on the main thread the first such exception is raised afterwards (it may
        be a ^C), on the collector's and the backends' threads it is logged, since
        letting it out would end the thread and leave every later future unresolved.
        """
        failed = 0
        escaped: BaseException | None = None
        for i, fut in enumerate(self.futures):
            if not running[i]:
                continue
            try:
                if outcomes is None:
                    failed += 1
                    fut.set_exception(error)
                elif self.chunk:
                    if all_succeeded(outcomes):  # the list is the result
                        fut.set_result(outcomes)
                        continue
                    failed += sum(1 for ok, _ in outcomes if not ok)
                    fut.set_result([(ok, v if ok else rebuild_exception(v)) for ok, v in outcomes])
                else:
                    ok, value = outcomes[i]
                    failed += not ok
                    if ok:
                        fut.set_result(value)
                    else:
                        fut.set_exception(rebuild_exception(value))
            except BaseException as exc:  # a done-callback's SystemExit: set the others first
                escaped = escaped or exc
        if escaped is not None:
            if threading.current_thread() is threading.main_thread():
                raise escaped
            logger.error(
                "a done-callback of job %s raised %s; ignored, so that collection goes on",
                self.name,
                type(escaped).__name__,
                exc_info=escaped,
            )
        return failed
