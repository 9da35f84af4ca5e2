"""How a ``BoincExecutor`` ends: a normal shutdown, or kept for an interrupted master.

``__exit__`` and the exit hook (:func:`shutdown_at_exit`) tell a ^C, SIGTERM or
early ``SystemExit`` (:mod:`boinc_executor.interrupts`) from a normal end, and
then stop at once, cancel nothing and keep the batch. An exit within
:data:`_EXIT_AFTER_CANCEL` seconds of giving results up counts as an interrupt
too: a ``SystemExit`` raised in a ``for`` loop over ``map`` closes the iterator,
which cancels the calls that have not started and drops the results it has not
yielded, before ``__exit__`` or the exit hook sees the exit. Backends whose jobs
cost volunteers' work hold such cancels back for longer (``Backend.cancel_delay``),
so keeping the batch drops them unsent.

:class:`ExecutorEnding` is a mixin of :class:`~boinc_executor.executor.BoincExecutor`,
which owns the state it uses; it is its own module to keep each under ~500 lines.
"""

from __future__ import annotations

import logging
import sys
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import interrupts

if TYPE_CHECKING:
    from .batch import Checkpoint
    from .collector import Collector
    from .executor import BoincExecutor
    from .lifecycle import Opened

__all__ = ["ExecutorEnding", "shutdown_at_exit"]

logger = logging.getLogger("boinc_executor")
_EXIT_FLUSH_SECONDS = 120.0
_ABANDON_SECONDS = 10.0  # how long an interrupted executor waits for its thread
#: an exit this soon after results were given up is taken for the interrupt that gave them up
#: (less than the BOINC backends' cancel_delay, so those cancels are still unsent)
_EXIT_AFTER_CANCEL = 1.0


class ExecutorEnding:
    """The end of an executor's life (a mixin of ``BoincExecutor``, see the module docstring)."""

    # State owned by the executor (see BoincExecutor.__init__).
    _collector: Collector
    _checkpoint: Checkpoint
    _opened: Opened
    _kept: bool

    if TYPE_CHECKING:  # the executor's own

        @property
        def batch_id(self) -> int: ...

        @property
        def batch_dir(self) -> Path: ...

        def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None: ...

    def __exit__(self, exc_type: Any, exc_val: BaseException | None, exc_tb: Any) -> None:
        """Shut down, waiting; but on ^C, SIGTERM or an early ``SystemExit``, keep the batch."""
        stopping = isinstance(exc_val, KeyboardInterrupt) or (
            exc_val is not None and interrupts.interrupted()
        )
        collector = self._collector
        if stopping or (
            isinstance(exc_val, SystemExit)
            and (not collector.complete or collector.given_up_within(_EXIT_AFTER_CANCEL))
        ):
            self._keep_interrupted()
        else:
            if exc_val is not None:
                self._keep_after(exc_val)
            self.shutdown(wait=True)

    def _keep_after(self, exc: BaseException) -> None:
        """The script ends with ``exc``: cancel no work unit on its account, keep the batch.

        Waiting for the calls stays as in ``ProcessPoolExecutor``; but a ``map`` loop
        that raised has just cancelled its pending calls, and whatever came back is
        what the script never used. So the held-back cancels are dropped and the
        completed batch is not removed: the fixed script's next run replays it.
        """
        self._collector.drop_held_cancels()
        self._opened.kept_for = f"the script ended with {type(exc).__name__}"

    def _keep_interrupted(self, *, tell: bool = True) -> None:
        """Stop at once, for an interrupted master: cancel nothing, keep the batch, say where."""
        if self._kept or not self._collector.running:
            return  # already kept, or the batch ended (and was dealt with) before
        self._kept = True
        if not self._collector.abandon(timeout=_ABANDON_SECONDS):
            logger.warning(
                "batch %d: the collector was still busy after %.0f s; leaving it",
                self.batch_id,
                _ABANDON_SECONDS,
            )
        if tell:
            interrupts.tell_kept(
                self.batch_id, self.batch_dir, script=bool(self._checkpoint.script)
            )


def shutdown_at_exit(ref: weakref.ReferenceType[BoincExecutor]) -> None:
    """The exit hook of an executor the script did not shut down: finish or keep its batch."""
    executor = ref()
    if executor is not None and not executor._kept:
        uncaught = getattr(sys, "last_value", None)  # set when a traceback was printed
        if (
            interrupts.interrupted()
            or isinstance(uncaught, KeyboardInterrupt)
            or (
                not executor._collector.stopping
                and executor._collector.given_up_within(_EXIT_AFTER_CANCEL)
            )
        ):
            executor._keep_interrupted()
            return
        if uncaught is not None and not hasattr(sys, "ps1"):  # a script died of it
            executor._keep_after(uncaught)
        # Locally, like ProcessPoolExecutor, finish the work. On BOINC the jobs keep
        # running on volunteers, so only make sure every call is handed over.
        local = executor.backend == "local"
        executor.shutdown(wait=local)
        if not local and not executor.flush(timeout=_EXIT_FLUSH_SECONDS):
            logger.warning(
                "exiting before every call of batch %d was handed to BOINC; run the script "
                "again (or BoincExecutor.resume(%d)) to submit the rest",
                executor.batch_id,
                executor.batch_id,
            )
