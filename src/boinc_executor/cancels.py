"""Cancels on their way to the backend, held back so that an exit can still drop them.

Design note. ``ProcessPoolExecutor`` cancels a future at once, and so does the
collector; but a cancelled future's *job* is cancelled at the backend only once
:attr:`~boinc_executor.backends.base.Backend.cancel_delay` has passed, or at once
when the executor shuts down normally. The reason is ``sys.exit()`` (or an
exception) in a ``for`` loop over ``map``: the loop's iterator is closed, and
cancels its pending calls, before the executor sees why the loop ended. Held
back, those cancels are dropped when the executor then learns that the script is
exiting, and no work unit a volunteer may be running is cancelled on their account.

The queue is not thread-safe on its own: the collector calls it under its lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["OPERATOR", "HeldCancels"]

#: when a cancel that `boinc-executor cancel` asked for counts as asked: always due
OPERATOR = float("-inf")


@dataclass
class HeldCancels:
    """Job names to cancel at the backend, each with the monotonic time it was asked for.

    Attributes:
        delay: seconds a cancel is held back (the backend's ``cancel_delay``).
    """

    delay: float
    _queue: list[tuple[str, float]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self._queue)

    def add(self, name: str, asked: float) -> None:
        """Hold ``name`` back from ``asked`` on (:data:`OPERATOR`: due at once)."""
        self._queue.append((name, asked))

    def take_due(self, now: float, *, all_now: bool) -> tuple[list[str], float | None]:
        """Remove and return the names that are due (every one with ``all_now``).

        Returns:
            The names, and the seconds until the next held one is due (None if none is).
        """
        if all_now:
            names, self._queue = [name for name, _ in self._queue], []
            return names, None
        due = now - self.delay
        names = [name for name, asked in self._queue if asked <= due]
        self._queue = [(name, asked) for name, asked in self._queue if asked > due]
        if not self._queue:
            return names, None
        return names, max(0.0, min(asked for _, asked in self._queue) + self.delay - now)

    def drop_held(self) -> None:
        """Forget every cancel still held back, except the operator's."""
        self._queue = [(name, asked) for name, asked in self._queue if asked == OPERATOR]

    def clear(self) -> None:
        """Forget every cancel (the master is interrupted: nothing is cancelled)."""
        self._queue.clear()
