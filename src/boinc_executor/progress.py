"""Progress of a batch: the counts every backend reports, and a live bar for them.

:class:`Progress` is what ``BoincExecutor.progress()`` returns on every backend and
what ``boinc-executor status`` shows. :func:`show_progress` draws a live bar for a
running ``map`` (wrap its iterator) and :func:`watch_progress` one for a whole
batch::

    results = list(show_progress(ex.map(f, xs), total=len(xs)))
    watch_progress(ex)          # blocks until every call submitted is final

It uses ``tqdm`` when it is installed (``pip install 'boinc-executor[progress]'``)
and a plain one-line bar on stderr otherwise, so a script never needs it.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import IO, Any, Protocol, TypeVar

__all__ = ["Progress", "render_bar", "show_progress", "watch_progress"]

T = TypeVar("T")
_BAR_WIDTH = 30


@dataclass(frozen=True)
class Progress:
    """A batch's calls by state.

    Counts are of calls (a ``map`` chunk's calls share their job's state, except
    that each call that raised counts as failed on its own).

    Attributes:
        total: calls handed to the backend (journaled) so far.
        queued: waiting for a worker or a volunteer host.
        running: on a worker or host now (on BOINC: sent to a host, no record yet).
        done: finished with a value.
        failed: raised, or their job failed as a whole (crash, lost, BOINC error).
        cancelled: cancelled before they ran.
        stuck: on BOINC, why the batch does not move (which daemon leaves its work
            units waiting, and the commands that check it); None when nothing is stuck
            or on the embedded backend.
    """

    total: int
    queued: int
    running: int
    done: int
    failed: int
    cancelled: int
    stuck: str | None = None

    @property
    def finished(self) -> int:
        """Calls that reached a final state (done, failed or cancelled)."""
        return self.done + self.failed + self.cancelled

    @property
    def complete(self) -> bool:
        """Whether every call handed over so far reached a final state."""
        return self.finished >= self.total

    def as_dict(self) -> dict[str, int]:
        """The six counts as a plain dict (what ``--json`` prints as ``counts``)."""
        counts = asdict(self)
        counts.pop("stuck")
        return counts


class _HasProgress(Protocol):
    def progress(self) -> Progress: ...

    def flush(self, timeout: float | None = None) -> bool: ...


def render_bar(
    progress: Progress, *, elapsed: float, finished_before: int = 0, width: int = _BAR_WIDTH
) -> str:
    """One line: a bar of finished calls, the counts and an ETA from the rate so far.

    The ETA assumes the remaining calls finish at the average rate of those that
    finished in the last ``elapsed`` seconds (``finished_before`` were already final
    when that time began); it is "?" until one has finished.
    """
    total = max(progress.total, 1)
    filled = min(width, width * progress.finished // total)
    bar = "#" * filled + "-" * (width - filled)
    rate = (progress.finished - finished_before) / elapsed if elapsed > 0 else 0.0
    remaining = progress.total - progress.finished
    eta = _duration(remaining / rate) if rate > 0 else "?"
    if remaining <= 0:
        eta = "0s"
    return (
        f"[{bar}] {progress.finished}/{progress.total} "
        f"({progress.done} done, {progress.failed} failed, {progress.cancelled} cancelled, "
        f"{progress.running} running, {progress.queued} queued) ETA {eta}"
    )


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _have_tqdm() -> bool:
    return importlib.util.find_spec("tqdm") is not None


class _PlainBar:
    """A carriage-return bar on a stream: the fallback when tqdm is absent."""

    def __init__(self, total: int | None, stream: IO[str]) -> None:
        self.total = total
        self.n = 0
        self.stream = stream
        self.start = time.monotonic()
        self._last = 0.0

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= 0.2 or (self.total is not None and self.n >= self.total):
            self._last = now
            self._draw()

    def _draw(self) -> None:
        if self.total:
            p = Progress(self.total, self.total - self.n, 0, self.n, 0, 0)
            line = render_bar(p, elapsed=time.monotonic() - self.start)
            line = line.split(" (", 1)[0] + " ETA" + line.rsplit(" ETA", 1)[1]
        else:
            line = f"{self.n} done"
        self.stream.write("\r" + line)
        self.stream.flush()

    def close(self) -> None:
        self._draw()
        self.stream.write("\n")
        self.stream.flush()


def _bar(total: int | None, desc: str | None, stream: IO[str]) -> Any:
    if _have_tqdm():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, file=stream, unit="call")
    return _PlainBar(total, stream)


def show_progress(
    items: Iterable[T],
    *,
    total: int | None = None,
    desc: str | None = None,
    file: IO[str] | None = None,
) -> Iterator[T]:
    """Pass a ``map``'s results through, advancing a live bar one per result.

    Args:
        items: typically ``ex.map(...)``; any iterable works.
        total: the number of items, for the bar's length and ETA.
        desc: a label in front of the bar (tqdm only).
        file: where to draw (default stderr).

    Returns:
        An iterator over ``items``, in order; the bar closes when it is exhausted.
    """
    if not isinstance(items, Iterable):
        raise TypeError(f"show_progress() needs an iterable, got {type(items).__name__}")
    return _track(items, total, desc, file if file is not None else sys.stderr)


def watch_progress(
    executor: _HasProgress,
    *,
    desc: str | None = None,
    interval: float = 1.0,
    file: IO[str] | None = None,
) -> Progress:
    """Block, showing a live bar of a batch's counts, until every call submitted is final.

    Calls submitted so far are first handed over (``executor.flush()``), so none is
    missed because it was still buffered.

    Args:
        executor: a ``BoincExecutor`` (anything with ``progress()``).
        desc: a label in front of the bar (tqdm only).
        interval: seconds between polls of the counts.
        file: where to draw (default stderr).

    Returns:
        The last counts.
    """
    stream = file if file is not None else sys.stderr
    executor.flush()
    counts = executor.progress()
    bar = _bar(counts.total, desc, stream)
    try:
        while True:
            if bar.total != counts.total:
                bar.total = counts.total
            bar.update(counts.finished - bar.n)
            if counts.complete and counts.total:
                return counts
            time.sleep(interval)
            counts = executor.progress()
    finally:
        bar.close()


def _track(items: Iterable[T], total: int | None, desc: str | None, stream: IO[str]) -> Iterator[T]:
    bar = _bar(total, desc, stream)
    try:
        for item in items:
            yield item
            bar.update(1)
    finally:
        bar.close()
