"""Collection, memory per pending job and a bounded ``map``, measured in one run.

Run ``python benchmarks/bench_collect.py [--quick] [--repeat R] [--records N]``.
Each measurement runs in a fresh child process, is repeated R times, and is
reported with its minimum and median:

* **Collection** (target >= 10,000 results/s): N jobs are submitted to a
  BoincExecutor whose backend runs nothing; their N result records are written
  beforehand into a staging directory on the same file system, then *another
  process* renames them into ``new/`` (so the renames do not share the master's
  GIL) and the clock runs until every future is resolved. Three ways in:
  ``landed`` (the kernel names each record as it lands, through the collector's
  inotify watch on ``new/``: the BOINC assimilator's deliveries on Linux),
  ``scan`` (the collector finds the records by listing ``new/`` only, as where no
  watch can be had) and ``delivered`` (the renaming process names each record on
  a pipe, and the master passes the name to ``BackendEvents.record_delivered``, as
  the embedded backend's workers do). The *floor* does only the required steps
  for the same records in one thread (read, decode, set the result, pack, unlink)
  and the ratio says how close the collector comes to it. The renaming process
  reports its own rate too (``(landing)``): no way in can resolve records faster
  than they land.
* **Memory per pending job** (target <= ProcessPoolExecutor's): one worker is
  blocked, N trivial calls are submitted, and the master's RSS growth and
  ``tracemalloc`` heap growth per pending job are compared with
  ``ProcessPoolExecutor(1)`` doing the same.
* **A 10**\\ :sup:`6`\\ **-item ``map`` with ``buffersize``** (target: constant
  memory): the growth from 10 % to 55 % and from 55 % to 100 % of the items
  consumed (constant memory: the second half adds nothing), for both
  executors, of the Python heap (``tracemalloc``, which the verdict uses: at
  most ``MAP_HEAP_SLACK`` in the second half, where anything kept per job would
  add hundreds of KiB) and of the RSS (in separate children). The RSS of the
  second half moves between about 50 KiB and 1 MiB from run to run while the
  heap shrinks: no Python object is behind it, and one C-allocator arena
  (``MALLOC_ARENA_MAX=1``) does not change it.
* **A finished batch's footprint** (target <= 1 KiB and <= 0.2 files per call
  beyond the results' own bytes): a 3,000-call batch with an explicit
  ``batch_dir``, once, after a clean shutdown.

Nothing lands in the user's home: ``BOINC_EXECUTOR_HOME`` points at a temporary
directory. Results are checked, so a fast wrong answer cannot pass; the exit
status is non-zero only when something failed, never because a target was missed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import itertools
import json
import operator
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

COLLECT_TARGET = 10_000.0  # results/s
MAP_HEAP_SLACK = 64 * 1024  # bytes the second half of the bounded map may add
# Renames the records into new/, then prints its own rate on stderr: the collector
# cannot resolve faster than the records land, and on a file system slowed by mass
# deletions the renames alone can fall below the target.
FEEDER = """
import os, sys, time
staging, new, announce = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
out = sys.stdout
names = sorted(os.listdir(staging))
start = time.perf_counter()
for name in names:
    os.rename(os.path.join(staging, name), os.path.join(new, name))
    if announce:
        out.write(name + "\\n")
out.flush()
sys.stderr.write("renames/s %f\\n" % (len(names) / (time.perf_counter() - start)))
"""


# --------------------------------------------------------------------------- children


def _null_backend() -> Any:
    """A local backend that stages and runs nothing: records come from the benchmark."""
    from boinc_executor.backends.local import LocalBackend

    class NullBackend(LocalBackend):
        def attach(self, batch: Any, checkpoint: Any, events: Any) -> None:
            self.events = events

        def stage(self, name: str, data: bytes, *, shared: bool) -> None:
            pass

        def stage_input(self, entry: Any, data: bytes) -> Any:
            return entry  # (LocalBackend's would append to an input pack it never attached)

        def wait_staged(self) -> None:
            pass

        def submit(self, jobs: Any, params: Any) -> None:
            pass

        def cancel(self, jobs: Any) -> None:
            pass

        def close(self, *, complete: bool, interrupted: bool = False) -> None:
            pass

    return NullBackend(max_workers=1)


def collect_child(records: int, mode: str, scratch: Path) -> dict[str, Any]:
    """Time the resolution of ``records`` records renamed into ``new/`` by another process."""
    from boinc_executor import BoincExecutor, protocol

    backend = _null_backend()
    # The collector watches new/ for backends that do not name their records; "scan"
    # and "delivered" go without the watch.
    backend.announces_records = mode != "landed"
    ex = BoincExecutor(batch_dir=scratch / "batch", _backend=backend)
    futures = [ex.submit(operator.neg, i) for i in range(records)]
    if not ex.flush(timeout=600):
        raise RuntimeError("the jobs were not handed over")
    staging = scratch / "staging"
    staging.mkdir()
    for i in range(records):
        job = protocol.job_name("pyb", ex.batch_id, i)
        (staging / protocol.record_file_name(job, "b")).write_bytes(
            protocol.encode_result(job, [(True, -i)])
        )
    new = ex.batch_dir / protocol.NEW
    announce = mode == "delivered"
    start = time.perf_counter()
    feeder = subprocess.Popen(
        [sys.executable, "-c", FEEDER, str(staging), str(new), "1" if announce else "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert feeder.stdout is not None
    if announce:
        delivered = backend.events.record_delivered

        def relay() -> None:
            assert feeder.stdout is not None
            for line in feeder.stdout:
                delivered(line.decode().rstrip("\n"))

        reader = threading.Thread(target=relay, daemon=True)
        reader.start()
    _, pending = concurrent.futures.wait(futures, timeout=600)
    elapsed = time.perf_counter() - start
    renames = feeder_rate(feeder)
    if pending or any(f.result() != -i for i, f in enumerate(futures)):
        raise RuntimeError(f"{len(pending)} futures unresolved or wrong after {elapsed:.0f} s")
    ex.shutdown(wait=True)
    return {"rate": records / elapsed, "renames": renames}


def feeder_rate(feeder: subprocess.Popen[bytes]) -> float:
    """Wait for the :data:`FEEDER` process; returns the renames per second it reported."""
    assert feeder.stderr is not None
    report = feeder.stderr.read().decode()
    if feeder.wait() != 0 or not report.startswith("renames/s "):
        raise RuntimeError(f"the renaming process failed: {report}")
    return float(report.split()[1])


def floor_child(records: int, scratch: Path) -> dict[str, Any]:
    """The required steps alone, in one thread: read, decode, resolve, pack, unlink."""
    from boinc_executor import protocol
    from boinc_executor.protocol.decoding import TypePolicy
    from boinc_executor.protocol.pack import RecordPack

    new = scratch / "new"
    new.mkdir()
    names = []
    for i in range(records):
        job = protocol.job_name("pyb", 1, i)
        name = protocol.record_file_name(job, "b")
        (new / name).write_bytes(protocol.encode_result(job, [(True, -i)]))
        names.append((job, name))
    policy = TypePolicy()
    pack = RecordPack(str(scratch / "handled.pack"))
    futures: list[Future[Any]] = [Future() for _ in range(records)]
    prefix = str(new) + os.sep
    start = time.perf_counter()
    for first in range(0, records, 256):
        frames = []
        for k in range(first, min(first + 256, records)):
            job, name = names[k]
            data = protocol.read_bounded(prefix + name, 1 << 30)
            record = protocol.decode_result(data, policy, expect_job=job, expect_calls=1)
            futures[k].set_running_or_notify_cancel()
            futures[k].set_result(record.outcomes[0][1])
            frames.append((name, data, 0))
        pack.append(frames)
    pack.sync()
    for _, name in names:
        os.unlink(prefix + name)
    elapsed = time.perf_counter() - start
    pack.close()
    if any(f.result() != -i for i, f in enumerate(futures)):
        raise RuntimeError("the floor decoded wrong values")
    return {"rate": records / elapsed}


def _rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _blocked(path: str) -> str:
    while not os.path.exists(path):
        time.sleep(0.01)
    return "released"


def _make(kind: str) -> Any:
    if kind == "ProcessPool":
        return ProcessPoolExecutor(1)
    from boinc_executor import BoincExecutor

    return BoincExecutor(max_workers=1)


def memory_child(kind: str, pending: int, measure: str, scratch: Path) -> dict[str, Any]:
    """Growth of the master per pending job, behind one blocked worker."""
    release = str(scratch / f"release-{kind}-{measure}")
    ex = _make(kind)
    blocker = ex.submit(_blocked, release)
    time.sleep(1.0)  # the blocker runs; start-up allocations are done
    gc.collect()
    if measure == "heap":
        tracemalloc.start()
    rss0 = _rss()
    futures = [ex.submit(operator.neg, i) for i in range(pending)]
    if kind == "BoincExecutor" and not ex.flush(timeout=600):
        raise RuntimeError("the jobs were not handed over")
    time.sleep(0.5)
    gc.collect()
    if measure == "heap":
        growth, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    else:
        growth = _rss() - rss0
    still = sum(not f.done() for f in futures)
    Path(release).touch()
    if blocker.result() != "released":
        raise RuntimeError("the blocking job returned a wrong result")
    ex.shutdown(wait=True, cancel_futures=True)
    if still != pending:
        raise RuntimeError(f"only {still} of {pending} jobs were pending at the measurement")
    return {"per_job": growth / pending}


def _neg_chunk(chunk: list[int]) -> list[int]:
    return [-x for x in chunk]


def _bounded_map(ex: Any, items: int, chunksize: int, buffersize: int) -> Iterator[int]:
    """``map(neg, range(items), chunksize, buffersize)`` for executors without ``buffersize``."""
    window: deque[Future[list[int]]] = deque()
    chunks = (list(range(i, min(i + chunksize, items))) for i in range(0, items, chunksize))
    for chunk in itertools.islice(chunks, buffersize):
        window.append(ex.submit(_neg_chunk, chunk))
    while window:
        done = window.popleft().result()
        nxt = next(chunks, None)
        if nxt is not None:
            window.append(ex.submit(_neg_chunk, nxt))
        yield from done


def map_child(kind: str, items: int, measure: str, scratch: Path) -> dict[str, Any]:
    """Growth while a bounded ``map`` goes from 10 % to 55 %, and from 55 % to 100 %.

    ``measure`` is ``rss`` (the resident set) or ``heap`` (``tracemalloc``'s
    count of live Python allocations).

    Constant memory shows as a second half that adds nothing: whatever the first
    half allocates once (pools, caches warming up) does not come back.

    Python before 3.14 has no ``buffersize`` on ``ProcessPoolExecutor.map``; there the
    same window is kept by hand.
    """
    if measure == "heap":
        tracemalloc.start()

    def used() -> int:
        gc.collect()
        return tracemalloc.get_traced_memory()[0] if measure == "heap" else _rss()

    ex = _make(kind)
    marks = {items // 10: "start", items * 55 // 100: "middle"}
    rss: dict[str, int] = {}
    total = 0
    if kind == "ProcessPool" and sys.version_info < (3, 14):
        values = _bounded_map(ex, items, 100, 16)
    else:
        values = ex.map(operator.neg, range(items), chunksize=100, buffersize=16)
    for n, value in enumerate(values):
        total += value
        if n in marks:
            rss[marks[n]] = used()
    end = used()
    ex.shutdown(wait=True)
    if total != -(items * (items - 1) // 2):
        raise RuntimeError("map returned wrong values")
    return {"first": rss["middle"] - rss["start"], "second": end - rss["middle"]}


def footprint_child(calls: int, scratch: Path) -> dict[str, Any]:
    """Files and bytes a finished batch of ``calls`` calls keeps, beyond its records' bytes."""
    from boinc_executor import BoincExecutor
    from boinc_executor.protocol.pack import RecordPack

    batch_dir = scratch / "batch"
    with BoincExecutor(max_workers=2, batch_dir=batch_dir) as ex:
        futures = [ex.submit(operator.neg, i) for i in range(calls)]
        if [f.result() for f in futures] != [-i for i in range(calls)]:
            raise RuntimeError("wrong results")
    files = total = 0
    for root, dirs, names in os.walk(batch_dir):
        files += len(names) + len(dirs)
        total += sum(os.path.getsize(os.path.join(root, n)) for n in names)
    pack = RecordPack(str(batch_dir / "handled.pack"), writable=False)
    records = sum(entry.size for entry, _ in pack.records())
    pack.close()
    return {"files": files / calls, "bytes": (total - records) / calls}


# --------------------------------------------------------------------------- parent


def _child(argv: Sequence[str], home: Path) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(dir=home))
    env = dict(os.environ, BOINC_EXECUTOR_HOME=str(home))
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *argv, "--scratch", str(scratch)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
        env=env,
    )
    shutil.rmtree(scratch, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child {argv} failed:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _stats(values: list[float]) -> str:
    return f"min {min(values):>10,.1f}  median {statistics.median(values):>10,.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument(
        "--only",
        choices=("collect", "memory", "map", "footprint"),
        help="run one measurement only",
    )
    parser.add_argument("--child", nargs="*")
    parser.add_argument("--scratch", type=Path)
    args = parser.parse_args()
    if args.child is not None:
        what, *rest = args.child
        if what == "collect":
            out = collect_child(int(rest[0]), rest[1], args.scratch)
        elif what == "floor":
            out = floor_child(int(rest[0]), args.scratch)
        elif what == "memory":
            out = memory_child(rest[0], int(rest[1]), rest[2], args.scratch)
        elif what == "footprint":
            out = footprint_child(int(rest[0]), args.scratch)
        else:
            out = map_child(rest[0], int(rest[1]), rest[2], args.scratch)
        print(json.dumps(out))
        return 0
    if args.quick:
        args.repeat, args.records, args.pending, args.items = 1, 10_000, 10_000, 100_000
    home = Path(tempfile.mkdtemp(prefix="bench-collect-"))
    try:
        print(
            f"# bench_collect: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
            f"repeat {args.repeat}; scratch on {home}"
        )
        if args.only in (None, "collect"):
            _report_collection(args, home)
        if args.only in (None, "memory"):
            _report_memory(args, home)
        if args.only in (None, "map"):
            _report_map(args, home)
        if args.only in (None, "footprint"):
            result = _child(["footprint", "3000"], home)
            print(
                "\n## a finished 3,000-call batch, beyond its records' bytes (target <= 1 KiB "
                f"and <= 0.2 files per call)\n{result['bytes']:,.0f} bytes and "
                f"{result['files']:.3f} files per call"
            )
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return 0


def _report_collection(args: argparse.Namespace, home: Path) -> None:
    rates: dict[str, list[float]] = {"floor": [], "landed": [], "scan": [], "delivered": []}
    renames: list[float] = []
    for _ in range(args.repeat):  # interleaved, so drift hits every variant alike
        rates["floor"].append(_child(["floor", str(args.records)], home)["rate"])
        for mode in ("landed", "scan", "delivered"):
            result = _child(["collect", str(args.records), mode], home)
            rates[mode].append(result["rate"])
            renames.append(result["renames"])
    print(
        f"\n## collection of {args.records:,} records (results/s; target >= {COLLECT_TARGET:,.0f})"
    )
    for mode, values in rates.items():
        ratio = statistics.median(values) / statistics.median(rates["floor"])
        print(f"{mode:>10}: {_stats(values)}   median/floor {ratio:.2f}")
    # The most the collector can do: records cannot be resolved faster than they land.
    print(f"{'(landing)':>10}: {_stats(renames)}   renames/s by the other process")


def _report_memory(args: argparse.Namespace, home: Path) -> None:
    memory: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeat):
        for measure in ("rss", "heap"):
            for kind in ("ProcessPool", "BoincExecutor"):
                argv = ["memory", kind, str(args.pending), measure]
                memory.setdefault((kind, measure), []).append(_child(argv, home)["per_job"])
    print(f"\n## memory per pending job, {args.pending:,} pending (bytes; target <= PPE)")
    for measure in ("rss", "heap"):
        ppe = statistics.median(memory[("ProcessPool", measure)])
        for kind in ("ProcessPool", "BoincExecutor"):
            values = memory[(kind, measure)]
            ratio = statistics.median(values) / ppe
            print(f"{measure:>5} {kind:>14}: {_stats(values)}   ratio to PPE {ratio:.2f}")


def _report_map(args: argparse.Namespace, home: Path) -> None:
    growth: dict[tuple[str, str, str], list[float]] = {}
    for _ in range(args.repeat):
        for measure in ("heap", "rss"):
            for kind in ("ProcessPool", "BoincExecutor"):
                out = _child(["map", kind, str(args.items), measure], home)
                for half in ("first", "second"):
                    growth.setdefault((measure, kind, half), []).append(out[half] / 1024)
    print(
        f"\n## map of {args.items:,} items, chunksize 100, buffersize 16: growth from "
        "10 % to 55 % and from 55 % to 100 % consumed (KiB; target: constant, the second "
        f"half's heap adds at most {MAP_HEAP_SLACK // 1024} KiB)"
    )
    for (measure, kind, half), values in growth.items():
        print(f"{measure:>5} {kind:>14} {half:>6} half: {_stats(values)}")
    second = statistics.median(growth[("heap", "BoincExecutor", "second")]) * 1024
    verdict = "PASS" if second <= MAP_HEAP_SLACK else "MISS"
    print(f"constant memory (BoincExecutor heap, second half, median): {verdict}")


if __name__ == "__main__":
    sys.exit(main())
