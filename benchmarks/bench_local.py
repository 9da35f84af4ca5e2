"""BoincExecutor on the embedded local backend against ProcessPoolExecutor, in one run.

Run ``python benchmarks/bench_local.py [--quick] [--workers N] [--repeat R]``.
It prints one report with three parts, each measured for both executors on the
same machine, with the same worker count and the same workload:

* **Throughput**: tasks/s of ``map(operator.neg, range(N), chunksize=c)`` for
  c = 1, 10, 100 on warm executors (start-up excluded), best of R runs,
  interleaved so that drift hits both executors alike. The ratio
  BoincExecutor/ProcessPoolExecutor is checked against the targets
  (>= 0.5 at chunksize 1, >= 0.9 at chunksize 100).
* **Latency**: submit -> result of one trivial job on a warm executor, median and
  p95 over sequential submits.
* **Memory per pending job**: in a fresh child process (so earlier phases cannot
  raise the baseline), one worker is blocked on a file, N trivial calls are
  submitted, and the master's growth is measured twice, in separate children:
  the resident set (peak ``VmHWM`` after resetting it, and ``VmRSS`` once every
  job is handed over) and the Python heap (``tracemalloc`` peak, which would
  inflate the RSS figure if both ran together). The target (<= 2 KiB per
  pending job) is compared with the RSS peak: it is what the machine has to
  provide, allocator overhead included. Then the worker is released and the
  executor is shut down with the rest cancelled.

Nothing lands in the user's home: ``BOINC_EXECUTOR_HOME`` points at a temporary
directory that is removed at the end. Results are checked, so a fast wrong answer
cannot pass. The exit status is non-zero only when something failed, never
because a target was missed (timing is not a test).
"""

from __future__ import annotations

import argparse
import gc
import json
import operator
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHUNKSIZES = (1, 10, 100)
TARGETS = {1: 0.5, 100: 0.9}  # minimum BoincExecutor/ProcessPool throughput ratio
MEMORY_TARGET = 2048  # bytes per pending job in the BoincExecutor master
KINDS = ("ProcessPool", "BoincExecutor")


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does."""

    tasks: dict[int, int]  # chunksize -> N
    repeat: int
    latency_submits: int
    pending: int


FULL = Sizes(
    tasks={1: 3000, 10: 20_000, 100: 100_000}, repeat=3, latency_submits=50, pending=100_000
)
QUICK = Sizes(tasks={1: 600, 10: 3000, 100: 20_000}, repeat=3, latency_submits=20, pending=10_000)


# --------------------------------------------------------------------------- executors


def _isolate_environment(home: Path) -> None:
    """Force the embedded backend and keep its registry and batch dirs in ``home``."""
    os.environ["BOINC_EXECUTOR_HOME"] = str(home)
    os.environ.pop("PYBOINC_DIR", None)
    os.environ.pop("BOINC_EXECUTOR_BATCH_DIR", None)


def _make(kind: str, workers: int) -> Executor:
    if kind == "ProcessPool":
        return ProcessPoolExecutor(max_workers=workers)
    from boinc_executor import BoincExecutor

    executor = BoincExecutor(max_workers=workers)
    assert executor.backend == "local", "the benchmark must run on the embedded backend"
    return executor


def _warm_up(executor: Executor, workers: int) -> None:
    """Start every worker and load the workload once, so start-up is not measured."""
    for chunksize in CHUNKSIZES:
        n = workers * 20 * chunksize
        if sum(executor.map(operator.neg, range(n), chunksize=chunksize)) != -sum(range(n)):
            raise RuntimeError("warm-up returned wrong results")


def _run_map(executor: Executor, n: int, chunksize: int) -> float:
    """Seconds for one checked ``map`` of ``n`` trivial tasks."""
    start = time.perf_counter()
    total = sum(executor.map(operator.neg, range(n), chunksize=chunksize))
    elapsed = time.perf_counter() - start
    if total != -(n * (n - 1) // 2):
        raise RuntimeError(f"{type(executor).__name__}.map returned wrong results")
    return elapsed


def measure_throughput(executors: dict[str, Executor], sizes: Sizes) -> dict[int, dict[str, float]]:
    """Best tasks/s per chunksize and executor; repetitions interleave the executors."""
    best: dict[int, dict[str, float]] = {c: dict.fromkeys(executors, 0.0) for c in CHUNKSIZES}
    for _ in range(sizes.repeat):
        for chunksize in CHUNKSIZES:
            n = sizes.tasks[chunksize]
            for kind, executor in executors.items():
                rate = n / _run_map(executor, n, chunksize)
                best[chunksize][kind] = max(best[chunksize][kind], rate)
    return best


def measure_latency(executor: Executor, submits: int) -> tuple[float, float]:
    """Median and p95 seconds from ``submit`` to ``result()`` of single sequential jobs."""
    for i in range(5):  # the first submit of a new (fn, argument) shape may pickle more
        executor.submit(operator.neg, i).result()
    samples = []
    for i in range(submits):
        start = time.perf_counter()
        if executor.submit(operator.neg, i).result() != -i:
            raise RuntimeError("latency job returned a wrong result")
        samples.append(time.perf_counter() - start)
    p95 = statistics.quantiles(samples, n=20, method="inclusive")[18]
    return statistics.median(samples), p95


# --------------------------------------------------------------------------- memory child


def block_until(started: str, release: str) -> str:
    """The first job of the memory test: occupy the only worker until released."""
    Path(started).touch()
    while not os.path.exists(release):
        time.sleep(0.01)
    return "released"


def _status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (Linux), or None where there is none."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0) so the peak is this phase's."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _journaled(executor: Executor) -> int:
    """Jobs a BoincExecutor has journaled, i.e. handed to its backend (read from disk)."""
    from boinc_executor import BoincExecutor, protocol

    assert isinstance(executor, BoincExecutor)
    path = executor.batch_dir / protocol.JOURNAL
    try:
        with open(path, "rb") as fh:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def memory_child(kind: str, pending: int, measure: str, scratch: Path) -> dict[str, Any]:
    """Measure the master's growth for ``pending`` queued jobs behind a blocked worker."""
    own = Path(tempfile.mkdtemp(dir=scratch))  # fresh signal files for every child
    started, release = own / "started", own / "release"
    executor = _make(kind, 1)
    blocker = executor.submit(block_until, str(started), str(release))
    _wait_for(started.exists, "the blocking job to start")
    if kind == "BoincExecutor":  # the blocker's own record must not count as pending
        _wait_for(lambda: _journaled(executor) >= 1, "the blocking job to be journaled")
    gc.collect()
    rss0 = _status_kib("VmRSS")
    peak_reset = _reset_peak_rss()
    if measure == "heap":
        tracemalloc.start()
    start = time.perf_counter()
    futures: list[Future[Any]] = [executor.submit(operator.neg, i) for i in range(pending)]
    submit_seconds = time.perf_counter() - start
    if kind == "BoincExecutor":
        _wait_for(lambda: _journaled(executor) >= pending + 1, "every job to be handed over")
    handed_over_seconds = time.perf_counter() - start
    time.sleep(0.5)  # let the collector finish the backend hand-over that follows the journal
    result: dict[str, Any] = {
        "kind": kind,
        "pending": pending,
        "measure": measure,
        "submit_s": submit_seconds,
        "handed_over_s": handed_over_seconds,
        "still_pending": sum(not f.done() for f in futures),
    }
    if measure == "heap":
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        result.update(heap_peak=peak, heap_after=current)
    else:
        rss1, hwm = _status_kib("VmRSS"), _status_kib("VmHWM")
        if rss0 is not None and rss1 is not None and hwm is not None:
            result["rss_after"] = (rss1 - rss0) * 1024
            # Without the reset, VmHWM may be an earlier peak: report none rather than a wrong one.
            result["rss_peak"] = (hwm - rss0) * 1024 if peak_reset else None
    release.touch()
    executor.shutdown(wait=True, cancel_futures=True)
    if blocker.result() != "released":
        raise RuntimeError("the blocking job returned a wrong result")
    if result["still_pending"] != pending or not all(f.done() for f in futures):
        raise RuntimeError(
            f"{result['still_pending']} of {pending} jobs were pending at the measurement and "
            "every one must be done after shutdown; the worker was not blocked as intended"
        )
    return result


def run_memory(kind: str, pending: int, measure: str, scratch: Path) -> dict[str, Any]:
    """Run :func:`memory_child` in a fresh interpreter; returns its measurements."""
    argv = ["--memory-child", kind, "--measure", measure, "--pending", str(pending)]
    proc = subprocess.run(
        [sys.executable, __file__, *argv, "--scratch", str(scratch)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory child ({kind}, {measure}) failed:\n{proc.stderr}")
    data: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return data


# --------------------------------------------------------------------------- report


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def _per_job(total: Any, n: int) -> str:
    return "n/a" if total is None else f"{total / n:,.0f} B"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def _file_system(path: Path) -> str:
    """The type of the file system holding ``path`` (Linux), for the report header."""
    best, kind = "", "unknown file system"
    try:
        with open("/proc/mounts") as fh:
            for line in fh:
                fields = line.split()
                mount = fields[1]
                inside = str(path).startswith(mount.rstrip("/") + "/")
                if len(fields) > 2 and inside and len(mount) > len(best):
                    best, kind = mount, fields[2]
    except OSError:
        pass
    return kind


def print_report(
    sizes: Sizes,
    workers: int,
    home: Path,
    throughput: dict[int, dict[str, float]],
    latency: dict[str, tuple[float, float]],
    memory: dict[str, dict[str, Any]],
    elapsed: float,
) -> None:
    """Print the one table this benchmark exists for."""
    print(
        f"boinc-executor local benchmark: Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"max_workers={workers}"
    )
    print(f"batch directories under {home.parent} ({_file_system(home)})")
    print("workload: operator.neg on range(N); results checked; executors warm\n")
    print(f"Throughput, tasks/s (best of {sizes.repeat}, executors interleaved)")
    head = f"{'chunksize':>9} {'N':>8} {'ProcessPool':>12} {'BoincExecutor':>14}"
    print(f"{head} {'ratio':>6} {'target':>7}  verdict")
    for chunksize in CHUNKSIZES:
        row = throughput[chunksize]
        ratio = row["BoincExecutor"] / row["ProcessPool"]
        target = TARGETS.get(chunksize)
        goal = f">= {target}" if target else "-"
        verdict = "" if target is None else ("PASS" if ratio >= target else "MISS")
        print(
            f"{chunksize:>9} {sizes.tasks[chunksize]:>8} {_rate(row['ProcessPool']):>12} "
            f"{_rate(row['BoincExecutor']):>14} {ratio:>6.2f} {goal:>7}  {verdict}"
        )
    print(f"\nLatency, submit -> result of one job ({sizes.latency_submits} sequential submits)")
    print(f"{'':<14} {'median':>10} {'p95':>10}")
    for kind in KINDS:
        median, p95 = latency[kind]
        print(f"{kind:<14} {_ms(median):>10} {_ms(p95):>10}")
    n = sizes.pending
    print(f"\nMemory per pending job: {n:,} jobs queued behind 1 blocked worker (fresh process)")
    print(
        f"{'':<14} {'RSS peak':>10} {'RSS after':>10} {'heap peak':>10} {'heap after':>11} "
        f"{'submit':>8} {'handed over':>12}"
    )
    for kind in KINDS:
        m = memory[kind]
        rss = f"{_per_job(m.get('rss_peak'), n):>10} {_per_job(m.get('rss_after'), n):>10}"
        print(
            f"{kind:<14} {rss} "
            f"{_per_job(m.get('heap_peak'), n):>10} {_per_job(m.get('heap_after'), n):>11} "
            f"{m['submit_s']:>7.1f}s {m['handed_over_s']:>11.1f}s"
        )
    boinc = memory["BoincExecutor"]
    peak = boinc.get("rss_peak")
    if peak is None:
        print("BoincExecutor target <= 2 KiB per pending job on RSS peak: n/a (needs Linux /proc)")
    else:
        verdict = "PASS" if peak / n <= MEMORY_TARGET else "MISS"
        print(f"BoincExecutor target <= 2 KiB per pending job on RSS peak: {verdict}")
    print(
        "(RSS: VmHWM/VmRSS growth over the baseline with workers warm; heap: tracemalloc, "
        "measured in a separate child.\n submit: time for the submit() calls; handed over: "
        "until every job was journaled and given to the backend.)"
    )
    print(f"\ntotal benchmark time {elapsed:.0f}s")


@contextmanager
def _scratch_home(parent: Path | None) -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="bench-boinc-executor-", dir=parent))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Run every measurement and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (~20 s), for smoke tests")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="max_workers")
    parser.add_argument("--repeat", type=int, help="repetitions per throughput measurement")
    parser.add_argument(
        "--tmpdir",
        type=Path,
        help="where the batch directories live (default: the system temp dir); the local "
        "backend creates several files per job, so the file system matters",
    )
    parser.add_argument("--memory-child", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=("rss", "heap"), help=argparse.SUPPRESS)
    parser.add_argument("--pending", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        _isolate_environment(args.scratch)
        print(json.dumps(memory_child(args.memory_child, args.pending, args.measure, args.scratch)))
        return 0
    sizes = QUICK if args.quick else FULL
    if args.repeat:
        sizes = Sizes(sizes.tasks, args.repeat, sizes.latency_submits, sizes.pending)
    began = time.perf_counter()
    with _scratch_home(args.tmpdir) as home:
        _isolate_environment(home)
        executors: dict[str, Executor] = {}
        try:
            # In order: the process pool forks its workers before the BoincExecutor
            # starts any thread.
            for kind in KINDS:
                executors[kind] = _make(kind, args.workers)
                _warm_up(executors[kind], args.workers)
            throughput = measure_throughput(executors, sizes)
            latency = {
                kind: measure_latency(ex, sizes.latency_submits) for kind, ex in executors.items()
            }
        finally:
            for executor in executors.values():
                executor.shutdown(wait=True)
        memory: dict[str, dict[str, Any]] = {}
        for kind in KINDS:
            # Timings come from the RSS child: tracemalloc slows the heap child down.
            heap = run_memory(kind, sizes.pending, "heap", home)
            memory[kind] = run_memory(kind, sizes.pending, "rss", home)
            memory[kind].update(heap_peak=heap["heap_peak"], heap_after=heap["heap_after"])
        elapsed = time.perf_counter() - began
        print_report(sizes, args.workers, home, throughput, latency, memory, elapsed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
