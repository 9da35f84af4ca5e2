"""BoincExecutor on the embedded local backend against ProcessPoolExecutor, in one run.

Run ``python benchmarks/bench_local.py [--quick] [--workers N] [--repeat R]``.
Every figure is measured for both executors on the same machine, with the same
worker count and workload, in the same run, and printed as a ratio to
``ProcessPoolExecutor`` (the machine may be loaded: only the ratios compare):

* **Throughput** of ``map`` on warm executors (start-up excluded): a trivial task
  (``operator.neg``) at chunksize 1, 10 and 100, and a task that spins the CPU
  for 1 ms and for 10 ms. Each is repeated R times with the executors
  interleaved; the ratio of each repetition is kept, and the minimum and median
  are printed with the targets (>= 0.5, -, 0.6, 0.85, 0.95).
* **Latency**: submit -> result of one trivial job, the median over a round of
  sequential submits; R rounds with the executors interleaved (a VM's wake-up
  latency drifts within seconds), the ratio of each round kept, and its minimum
  and median printed; target <= 2x ProcessPoolExecutor's.
* **After deletions**: BoincExecutor's chunksize-1 throughput right after 20,000
  files were created and deleted on the batch directories' file system, against
  the same measure just before; target: it falls by at most 20%.
* **Syscalls per job**, where ``strace`` is installed: ``strace -c -f`` of a child
  running N and then 2N jobs, the difference divided by N (start-up cancels out).
* **Files per job** (Linux): inotify events under the batch directory during a
  run: files created, deleted and renamed per job.
* **Memory per pending job**: in a fresh child process (so earlier phases cannot
  raise the baseline), one worker is blocked on a file, N trivial calls are
  submitted, and the master's growth is measured twice, in separate children:
  the resident set (peak ``VmHWM`` after resetting it, and ``VmRSS`` once every
  job is handed over) and the Python heap (``tracemalloc`` peak). The target is
  compared with the RSS peak.

With ``--load N``, N processes spin a CPU each for the whole run, so that every
figure is also measured under a steady load (both executors face the same one).

Nothing lands in the user's home: ``BOINC_EXECUTOR_HOME`` points at a temporary
directory that is removed at the end. Results are checked, so a fast wrong answer
cannot pass. The exit status is non-zero only when something failed, never
because a target was missed (timing is not a test).
"""

from __future__ import annotations

import argparse
import dataclasses
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

import local_probes

LATENCY_TARGET = 2.0  # BoincExecutor latency at most this many times ProcessPool's
CHURN_TARGET = 0.8  # throughput after 20,000 deletions, relative to just before
KINDS = ("ProcessPool", "BoincExecutor")


def spin(seconds: float) -> float:
    """The CPU-bound workload: busy for ``seconds``, as a real task would be."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return seconds


@dataclass(frozen=True)
class Workload:
    """One throughput measurement: ``map(fn, args, chunksize=...)``."""

    label: str
    seconds: float  # the task's CPU time (0: operator.neg)
    chunksize: int
    n: int
    target: float | None

    def run(self, executor: Executor) -> float:
        """Tasks/s of one checked ``map``."""
        start = time.perf_counter()
        if self.seconds:
            total = sum(executor.map(spin, [self.seconds] * self.n, chunksize=self.chunksize))
            ok = abs(total - self.seconds * self.n) < 1e-6 * self.n
        else:
            total = sum(executor.map(operator.neg, range(self.n), chunksize=self.chunksize))
            ok = total == -(self.n * (self.n - 1) // 2)
        elapsed = time.perf_counter() - start
        if not ok:
            raise RuntimeError(f"{type(executor).__name__}.map returned wrong results")
        return self.n / elapsed


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does."""

    workloads: tuple[Workload, ...]
    repeat: int
    latency_submits: int
    pending: int
    syscall_jobs: int


def _workloads(scale: float) -> tuple[Workload, ...]:
    def n(full: int) -> int:
        return max(20, int(full * scale))

    return (
        Workload("trivial, chunksize 1", 0.0, 1, n(3000), 0.5),
        Workload("trivial, chunksize 10", 0.0, 10, n(20_000), None),
        Workload("trivial, chunksize 100", 0.0, 100, n(100_000), 0.6),
        Workload("1 ms task", 0.001, 1, n(2000), 0.85),
        Workload("10 ms task", 0.01, 1, n(300), 0.95),
    )


FULL = Sizes(_workloads(1.0), repeat=5, latency_submits=200, pending=100_000, syscall_jobs=1000)
QUICK = Sizes(_workloads(0.2), repeat=3, latency_submits=20, pending=10_000, syscall_jobs=200)


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
    """Start every worker and load the workloads once, so start-up is not measured."""
    for chunksize in (1, 10, 100):
        n = workers * 20 * chunksize
        if sum(executor.map(operator.neg, range(n), chunksize=chunksize)) != -sum(range(n)):
            raise RuntimeError("warm-up returned wrong results")
    list(executor.map(spin, [0.001] * workers * 4))


def measure_throughput(
    executors: dict[str, Executor], sizes: Sizes
) -> dict[str, dict[str, list[float]]]:
    """Per workload: each executor's tasks/s and the ratio, one entry per repetition.

    The executors alternate within each repetition, so drift hits both alike.
    """
    table: dict[str, dict[str, list[float]]] = {
        w.label: {k: [] for k in (*KINDS, "ratio")} for w in sizes.workloads
    }
    for _ in range(sizes.repeat):
        for workload in sizes.workloads:
            row = table[workload.label]
            for kind, executor in executors.items():
                row[kind].append(workload.run(executor))
            row["ratio"].append(row["BoincExecutor"][-1] / row["ProcessPool"][-1])
    return table


def measure_latency(executors: dict[str, Executor], sizes: Sizes) -> dict[str, list[float]]:
    """Per executor, the median latency of each of ``sizes.repeat`` interleaved rounds."""
    rounds: dict[str, list[float]] = {kind: [] for kind in executors}
    for _ in range(sizes.repeat):
        for kind, executor in executors.items():
            rounds[kind].append(_latency_round(executor, sizes.latency_submits))
    return rounds


def _latency_round(executor: Executor, submits: int) -> float:
    """Median seconds from ``submit`` to ``result()`` of single sequential jobs."""
    for i in range(5):  # the first submit of a new (fn, argument) shape may pickle more
        executor.submit(operator.neg, i).result()
    samples = []
    for i in range(submits):
        start = time.perf_counter()
        if executor.submit(operator.neg, i).result() != -i:
            raise RuntimeError("latency job returned a wrong result")
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def measure_churn(executor: Executor, home: Path, sizes: Sizes) -> tuple[float, float]:
    """BoincExecutor's chunksize-1 rate (median of 3) before and right after 20,000 deletions."""
    workload = sizes.workloads[0]
    before = statistics.median(workload.run(executor) for _ in range(3))
    local_probes.churn(home / "churn")
    after = statistics.median(workload.run(executor) for _ in range(3))
    return before, after


def measure_files(executor: Executor, n: int) -> dict[str, float] | None:
    """Files created, deleted and moved in per job under the batch directory (inotify)."""
    from boinc_executor import BoincExecutor

    if not local_probes.FileEvents.available():
        return None
    assert isinstance(executor, BoincExecutor)
    with local_probes.FileEvents(executor.batch_dir) as events:
        if sum(executor.map(operator.neg, range(n))) != -(n * (n - 1) // 2):
            raise RuntimeError("files run returned wrong results")
        time.sleep(0.5)  # let the collector move the last records to old/
    return {k: events.counts[k] / n for k in ("created", "deleted", "moved_in")}


def syscall_child(kind: str, n: int) -> None:
    """Run ``n`` trivial jobs at chunksize 1 on a fresh executor (under strace)."""
    executor = _make(kind, 2)
    with executor:
        if sum(executor.map(operator.neg, range(n))) != -(n * (n - 1) // 2):
            raise RuntimeError("syscall child returned wrong results")


def measure_syscalls(kind: str, n: int, scratch: Path) -> float | None:
    """System calls per job: strace of 2n jobs minus strace of n jobs, over n."""
    counts = []
    for jobs in (n, 2 * n):
        argv = [sys.executable, __file__, "--syscall-child", kind, "--pending", str(jobs)]
        argv += ["--scratch", str(scratch)]
        count = local_probes.syscalls(argv, scratch / f"strace-{kind}-{jobs}.txt")
        if count is None:
            return None
        counts.append(count)
    return (counts[1] - counts[0]) / n


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
    """Jobs a BoincExecutor has journaled, i.e. handed to its backend (read from disk).

    Read through one small buffer: this runs in the measured process, every 20 ms,
    and 1 MiB reads of a growing journal once added a 2 MB transient to the very
    peak being measured (about 200 B per job at 10k pending).
    """
    from boinc_executor import BoincExecutor, protocol

    assert isinstance(executor, BoincExecutor)
    path = executor.batch_dir / protocol.JOURNAL
    buffer = bytearray(1 << 14)
    lines = 0
    try:
        with open(path, "rb", buffering=0) as fh:
            while got := fh.readinto(buffer):
                lines += buffer.count(b"\n", 0, got)
    except FileNotFoundError:
        return 0
    return lines


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


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_report(
    sizes: Sizes,
    workers: int,
    home: Path,
    results: dict[str, Any],
    memory: dict[str, dict[str, Any]],
    elapsed: float,
    load: int,
) -> None:
    """Print the one table this benchmark exists for."""
    print(
        f"boinc-executor local benchmark: Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"max_workers={workers}, {load} CPU-spinning processes alongside, "
        f"load average {os.getloadavg()[0]:.1f} at the end"
    )
    print(f"batch directories under {home.parent} ({_file_system(home)})")
    print("results checked; executors warm; ratio = BoincExecutor / ProcessPool per repetition\n")
    print(f"Throughput, tasks/s (median of {sizes.repeat}, executors interleaved)")
    print(
        f"{'workload':<24} {'N':>7} {'ProcessPool':>12} {'BoincExecutor':>14} "
        f"{'ratio min':>9} {'median':>7} {'target':>7}  verdict"
    )
    for w in sizes.workloads:
        row = results["throughput"][w.label]
        low, mid = min(row["ratio"]), statistics.median(row["ratio"])
        goal = f">= {w.target}" if w.target else "-"
        verdict = "" if w.target is None else _verdict(mid >= w.target)
        print(
            f"{w.label:<24} {w.n:>7} {_rate(statistics.median(row['ProcessPool'])):>12} "
            f"{_rate(statistics.median(row['BoincExecutor'])):>14} {low:>9.2f} {mid:>7.2f} "
            f"{goal:>7}  {verdict}"
        )
    latency = results["latency"]
    ratios = [b / p for b, p in zip(latency["BoincExecutor"], latency["ProcessPool"], strict=True)]
    ratio = statistics.median(ratios)
    print(
        f"\nLatency, submit -> result ({sizes.repeat} interleaved rounds of "
        f"{sizes.latency_submits}, median round): ProcessPool "
        f"{_ms(statistics.median(latency['ProcessPool']))}, BoincExecutor "
        f"{_ms(statistics.median(latency['BoincExecutor']))}, ratio min {min(ratios):.2f} "
        f"median {ratio:.2f} (target <= {LATENCY_TARGET}): {_verdict(ratio <= LATENCY_TARGET)}"
    )
    before, after = results["churn"]
    print(
        f"After 20,000 files were deleted on that file system: chunksize-1 rate "
        f"{_rate(before)}/s before, {_rate(after)}/s after, ratio {after / before:.2f} "
        f"(target >= {CHURN_TARGET}): {_verdict(after / before >= CHURN_TARGET)}"
    )
    calls = results["syscalls"]
    if calls["BoincExecutor"] is None:
        print("Syscalls per job: n/a (install strace)")
    else:
        print(
            f"Syscalls per job (strace -c -f, whole process tree, chunksize 1): ProcessPool "
            f"{calls['ProcessPool']:.0f}, BoincExecutor {calls['BoincExecutor']:.0f}"
        )
    files = results["files"]
    if files is None:
        print("Files per job: n/a (needs Linux inotify)")
    else:
        print(
            f"Files per job under the batch directory (inotify): created {files['created']:.2f}, "
            f"deleted {files['deleted']:.2f}, renamed in {files['moved_in']:.2f} "
            "(ProcessPool: none)"
        )
    n = sizes.pending
    if not memory:
        print(f"\ntotal benchmark time {elapsed:.0f}s (memory not measured)")
        return
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
    peak, ppe = memory["BoincExecutor"].get("rss_peak"), memory["ProcessPool"].get("rss_peak")
    if peak is None or ppe is None:
        print("memory target (RSS peak <= ProcessPool's): n/a (needs Linux /proc)")
    else:
        print(f"memory target (RSS peak <= ProcessPool's): {_verdict(peak <= ppe)}")
    print(f"\ntotal benchmark time {elapsed:.0f}s")


@contextmanager
def _steady_load(processes: int) -> Iterator[None]:
    """Keep ``processes`` CPU-bound child processes running while the block runs."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)
    ]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


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
    parser.add_argument("--quick", action="store_true", help="small sizes, for smoke tests")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="max_workers")
    parser.add_argument("--repeat", type=int, help="repetitions per throughput measurement")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory children")
    parser.add_argument(
        "--load", type=int, default=0, help="CPU-spinning processes to run alongside (default 0)"
    )
    parser.add_argument(
        "--tmpdir",
        type=Path,
        help="where the batch directories live (default: the system temp dir)",
    )
    parser.add_argument("--memory-child", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--syscall-child", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=("rss", "heap"), help=argparse.SUPPRESS)
    parser.add_argument("--pending", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        _isolate_environment(args.scratch)
        print(json.dumps(memory_child(args.memory_child, args.pending, args.measure, args.scratch)))
        return 0
    if args.syscall_child:
        _isolate_environment(args.scratch)
        syscall_child(args.syscall_child, args.pending)
        return 0
    sizes = QUICK if args.quick else FULL
    if args.repeat:
        sizes = dataclasses.replace(sizes, repeat=args.repeat)
    began = time.perf_counter()
    with _scratch_home(args.tmpdir) as home, _steady_load(args.load):
        _isolate_environment(home)
        executors: dict[str, Executor] = {}
        results: dict[str, Any] = {}
        try:
            # In order: the process pool forks its workers before the BoincExecutor
            # starts any thread.
            for kind in KINDS:
                executors[kind] = _make(kind, args.workers)
                _warm_up(executors[kind], args.workers)
            results["throughput"] = measure_throughput(executors, sizes)
            results["latency"] = measure_latency(executors, sizes)
            boinc = executors["BoincExecutor"]
            results["files"] = measure_files(boinc, sizes.workloads[0].n)
            results["churn"] = measure_churn(boinc, home, sizes)
        finally:
            for executor in executors.values():
                executor.shutdown(wait=True)
        results["syscalls"] = {
            kind: measure_syscalls(kind, sizes.syscall_jobs, home) for kind in KINDS
        }
        memory: dict[str, dict[str, Any]] = {}
        for kind in KINDS if not args.no_memory else ():
            # Timings come from the RSS child: tracemalloc slows the heap child down.
            heap = run_memory(kind, sizes.pending, "heap", home)
            memory[kind] = run_memory(kind, sizes.pending, "rss", home)
            memory[kind].update(heap_peak=heap["heap_peak"], heap_after=heap["heap_after"])
        elapsed = time.perf_counter() - began
        print_report(sizes, args.workers, home, results, memory, elapsed, args.load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
