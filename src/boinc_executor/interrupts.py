"""Telling an interrupt (^C, SIGTERM) apart from an explicit cancel.

Design note. ``ProcessPoolExecutor`` cancels what has not started when its
``map`` iterator is closed and waits for the rest at ``shutdown``. For a batch
that lives on BOINC for days that is wrong when the cause is an interrupt: a ^C
must keep every job and every result so that running the script again replays
the batch. The difficulty is that an interrupt often reaches the executor only
as an ordinary close: CPython pops a ``for`` loop's iterator off the stack (and
so closes a ``map`` generator) *before* the ``with`` block's ``__exit__`` sees the
``KeyboardInterrupt``. So the executor notes interrupts where they start:

* ``SIGINT``: when its handler is Python's default (``default_int_handler``), an
  executor created in the main thread installs one that notes the interrupt and
  then raises ``KeyboardInterrupt`` exactly as the default does.
* ``SIGTERM``: when its handler is ``SIG_DFL`` (which would kill the process
  without any clean-up), one that notes it and raises ``SystemExit(143)``, so
  ``finally`` blocks, ``with`` blocks and exit hooks run as for ^C.

A handler the user installed is never replaced or wrapped; with one in place,
the executor still recognises ``KeyboardInterrupt`` and ``SystemExit`` when they
pass through its own code (``__exit__``, a ``map`` iterator's ``next()``).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

__all__ = ["install_handlers", "interrupted", "is_interrupt", "note", "tell_kept"]

_lock = threading.Lock()
_seen: list[tuple[str, float]] = []  # (cause, monotonic time) of each interrupt
#: an interrupt counts for this long: a program that caught its ^C and carried on
#: gets ProcessPoolExecutor's cancel-on-close semantics back afterwards
_WINDOW = 60.0


def note(cause: str) -> None:
    """Record that the process is being interrupted (``cause``: "SIGINT", "SIGTERM", ...)."""
    with _lock:
        _seen.append((cause, time.monotonic()))


def interrupted() -> bool:
    """Whether an interrupt was noted in this process within the last minute."""
    with _lock:
        return bool(_seen) and time.monotonic() - _seen[-1][1] < _WINDOW


def is_interrupt(exc: BaseException | None) -> bool:
    """Whether ``exc`` (an exception in flight) means the process is being stopped."""
    return isinstance(exc, (KeyboardInterrupt, SystemExit)) or (exc is None and interrupted())


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    note("SIGINT")
    signal.default_int_handler(signum, frame)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    note("SIGTERM")
    raise SystemExit(128 + signal.SIGTERM)


def install_handlers() -> None:
    """Install the noting handlers where the defaults are in place (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _on_sigint)
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main interpreter
        return


def tell_kept(batch_id: int, batch_dir: Path, *, script: bool) -> None:
    """The one line that says where an interrupted batch is and how to go on with it.

    Written to stderr directly, whatever logging is configured, because the user
    needs it exactly when their own output stops.
    """
    again = "run the script again, or " if script else ""
    print(
        f"boinc-executor: batch {batch_id} is kept in {batch_dir}; "
        f"{again}BoincExecutor.resume({batch_id})",
        file=sys.stderr,
        flush=True,
    )
