"""The BOINC backend's submission and collection rates, against the naive way, in one run.

Run ``python benchmarks/bench_boinc.py [--quick] [--jobs N] [--naive N] [--collect N]``
from the repository root (it needs MariaDB and uses the test harness's stand-in
``bin/create_work``, which talks to the real database). It builds a throw-away
project (``make_project`` stand-in + ``setup_project``) in a temporary directory and
database, then measures three things and prints one table:

* **Bulk submission**: ``BoincExecutor(project_dir=...)`` is created (the batch row),
  ``map(fn, range(N), chunksize=1)`` is called, and the clock stops when all N work
  units are in the ``workunit`` table. That is pickling, staging into the fan-out
  hierarchy, journaling, the existing-name query and ``create_work --stdin`` (one
  process per 5,000 jobs).
* **Naive submission**: for a sample of jobs, each one is pickled, staged and given
  its own ``bin/create_work --wu_name ...`` process, as a script calling create_work
  per job would. The sample's rate is extrapolated to N linearly (every naive job
  costs the same process start and one INSERT; nothing in it grows with N).
* **Collection**: a second batch of M jobs is submitted and, once every work unit
  exists, M result records (written beforehand next to ``new/``) are renamed into
  ``BATCH_DIR/new/`` in a tight loop by another process (so the renames do not
  share the master's GIL); the clock runs from the first rename to the
  last future resolved through the executor's collector (decode, resolve, pack and
  remove from ``new/``). The renaming process's own rate is printed beside it.

Before each bulk submission it also times creating 2,000 small files on the same file
system, as context: staging creates two files per job, and on a VM that rate drifts
threefold within a day and drops after mass deletions (the collection measure deletes
its 100,000 records), so it says how much of a low bulk rate is the file system's.

Each is repeated R times (``--repeat``, default 3), interleaved, in fresh batches of one
project, and reported with its minimum and median. Targets: bulk >= 3,000 jobs/s and
>= 100x the naive rate, collection >= 10,000 results/s; the verdicts use the medians.
Results are checked, so a fast wrong answer cannot pass; the exit status is non-zero
only when something failed, never because a target was missed.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench_collect import FEEDER, feeder_rate  # noqa: E402 (the same renaming process)

from boinc_executor import BoincExecutor, JobParams, protocol  # noqa: E402
from boinc_executor.backends.boinc import BoincBackend  # noqa: E402
from boinc_executor.backends.workunits import param_options  # noqa: E402
from tests.boinc_harness.mariadb import (  # noqa: E402
    create_boinc_database,
    drop_database,
    ensure_server,
)
from tests.boinc_harness.project import Project, make_project  # noqa: E402

BULK_TARGET = 3_000.0  # jobs/s
SPEEDUP_TARGET = 100.0
COLLECT_TARGET = 10_000.0


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does."""

    jobs: int
    naive: int
    collect: int


FULL = Sizes(jobs=10_000, naive=100, collect=100_000)
QUICK = Sizes(jobs=2_000, naive=30, collect=20_000)


def square(x: int) -> int:
    """The workload; it never runs here (no volunteer), only its pickle matters."""
    return x * x


def _wu_count(project: Project, batch_id: int) -> int:
    rows = project.query("select count(*) as n from workunit where batch=%s", batch_id)
    return int(rows[0]["n"])


def _wait_for_wus(project: Project, batch_id: int, n: int, timeout: float = 1800) -> float:
    """Poll until ``n`` work units of the batch exist; returns the time they did."""
    deadline = time.monotonic() + timeout
    while _wu_count(project, batch_id) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {_wu_count(project, batch_id)} of {n} work units appeared")
        time.sleep(0.02)
    return time.perf_counter()


def measure_bulk(project: Project, n: int) -> float:
    """Seconds from executor creation to all ``n`` work units in the database."""
    start = time.perf_counter()
    executor = BoincExecutor(project_dir=project.root, name="bench-bulk")
    results = executor.map(square, range(n), chunksize=1)
    end = _wait_for_wus(project, executor.batch_id, n)
    if _wu_count(project, executor.batch_id) != n:
        raise RuntimeError("the bulk batch has more work units than jobs")
    results.close()
    executor.shutdown(wait=True, cancel_futures=True)
    return end - start


def measure_file_creation(directory: Path, n: int = 2000) -> float:
    """Small files created per second in ``directory``, as staging creates them.

    The bulk rate is bound by file creation (two files per job), whose cost on
    this kind of VM drifts threefold within a day and rises after mass
    deletions; this line says how fast the file system was when bulk ran. The
    files stay until the end (deleting them would slow what follows).
    """
    directory.mkdir(parents=True)
    subdirs = [directory / f"{i:x}" for i in range(64)]
    for sub in subdirs:
        sub.mkdir()
    start = time.perf_counter()
    for i in range(n):
        fd = os.open(subdirs[i % 64] / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, b"x" * 120)
        os.close(fd)
    return n / (time.perf_counter() - start)


def measure_naive(project: Project, n: int) -> float:
    """Seconds for ``n`` jobs staged and created one ``create_work`` process each."""
    backend = BoincBackend(project.root)
    params = JobParams()
    try:
        batch_id, _ = backend.create_batch("bench-naive", project.root / "naive-batch")
        options = param_options(params)
        start = time.perf_counter()
        program = protocol.encode_program(square)
        program_name = protocol.program_file_name("naive", program)
        backend.stage(program_name, program, shared=True)
        for i in range(n):
            job = protocol.job_name("naive", batch_id, i)
            data_name = protocol.data_file_name(job)
            backend.stage(data_name, protocol.encode_data(job, [((i,), {})]), shared=False)
            backend.wait_staged()  # staging is asynchronous; create_work reads the file
            done = subprocess.run(
                [str(project.root / "bin" / "create_work"), "--appname", "pyboinc",
                 "--batch", str(batch_id), "--wu_name", job, *options, program_name, data_name],
                cwd=project.root, capture_output=True, check=False,
            )  # fmt: skip
            if done.returncode:
                raise RuntimeError(f"create_work failed: {done.stderr.decode(errors='replace')}")
        elapsed = time.perf_counter() - start
    finally:
        backend.close(complete=False)
    if _wu_count(project, batch_id) != n:
        raise RuntimeError("the naive batch lacks work units")
    return elapsed


def measure_collection(project: Project, n: int) -> tuple[float, float, float]:
    """(submission seconds, collection seconds, renames/s) for ``n`` results.

    The renames/s are the other process's own: records cannot resolve faster than
    they land.
    """
    start = time.perf_counter()
    executor = BoincExecutor(project_dir=project.root, name="bench-collect")
    results = executor.map(square, range(n), chunksize=1)
    submitted = _wait_for_wus(project, executor.batch_id, n) - start
    staging = executor.batch_dir / "bench-staging"
    staging.mkdir()
    for i in range(n):
        job = protocol.job_name("pyb", executor.batch_id, i)
        name = protocol.record_file_name(job, "bench")
        (staging / name).write_bytes(protocol.encode_result(job, [(True, i * i)]))
    new = executor.batch_dir / protocol.NEW
    begin = time.perf_counter()
    # Another process renames them in (as the assimilator would), so its renames
    # do not share the master's GIL.
    feeder = subprocess.Popen(
        [sys.executable, "-c", FEEDER, str(staging), str(new), "0"], stderr=subprocess.PIPE
    )
    total = sum(results)
    elapsed = time.perf_counter() - begin
    renames = feeder_rate(feeder)
    if total != sum(i * i for i in range(n)):
        raise RuntimeError("collection returned wrong results")
    executor.shutdown(wait=True)
    return submitted, elapsed, renames


@contextmanager
def bench_project(scratch: Path) -> Iterator[Project]:
    """A stand-in project configured by setup-project, with its own database."""
    from boinc_executor.server.project import setup_project

    server = ensure_server()
    db_name = f"bench_{uuid.uuid4().hex[:12]}"
    create_boinc_database(server, db_name)
    try:
        project = make_project(scratch / "boinctest", server, db_name)
        setup_project(project.root)
        yield project
    finally:
        drop_database(server, db_name)


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _row(
    label: str, jobs: int, rates: list[float], target: str = "", ok: bool | None = None
) -> str:
    verdict = "" if ok is None else _verdict(ok)
    return (
        f"{label:<50} {jobs:>8,} {min(rates):>10,.0f} {statistics.median(rates):>10,.0f}"
        f" {target:>9}  {verdict}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--jobs", type=int, help="bulk submission size (default 10,000)")
    parser.add_argument("--naive", type=int, help="naive sample size (default 100)")
    parser.add_argument("--collect", type=int, help="results to collect (default 100,000)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    sizes = Sizes(
        jobs=args.jobs or base.jobs,
        naive=args.naive or base.naive,
        collect=args.collect or base.collect,
    )
    scratch = Path(tempfile.mkdtemp(prefix="bench-boinc-"))
    os.environ["BOINC_EXECUTOR_HOME"] = str(scratch / "home")
    os.environ.pop("PYBOINC_DIR", None)
    os.environ.pop("BOINC_EXECUTOR_BATCH_DIR", None)
    # No BOINC daemon runs here, so every batch that waits long enough for the
    # transitioner would be reported stuck (stuck.py): expected, and not measured.
    os.environ["BOINC_EXECUTOR_STUCK_AFTER"] = "86400"
    bulk: list[float] = []
    creation: list[float] = []
    naive: list[float] = []
    submitted: list[float] = []
    collected: list[float] = []
    landing: list[float] = []
    try:
        with bench_project(scratch) as project:
            for r in range(args.repeat):  # interleaved, so drift hits every measure alike
                creation.append(measure_file_creation(project.root / "bench-files" / str(r)))
                bulk.append(sizes.jobs / measure_bulk(project, sizes.jobs))
                naive.append(sizes.naive / measure_naive(project, sizes.naive))
                sub, col, renames = measure_collection(project, sizes.collect)
                submitted.append(sizes.collect / sub)
                collected.append(sizes.collect / col)
                landing.append(renames)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    speedups = [b / n for b, n in zip(bulk, naive, strict=True)]
    print(
        f"BOINC backend, harness create_work on MariaDB; Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {platform.system()} {platform.release()}; "
        f"repeat {args.repeat}"
    )
    print(f"{'':<50} {'jobs':>8} {'min /s':>10} {'median /s':>10} {'target':>9}  verdict")
    bulk_ok = statistics.median(bulk) >= BULK_TARGET
    print(
        _row("bulk: map -> stage + batch + create_work --stdin", sizes.jobs, bulk,
             f">= {BULK_TARGET:,.0f}", bulk_ok)
    )  # fmt: skip
    print(_row("(file system: small files created, just before)", 2000, creation))
    print(_row("naive: stage + one create_work per job (sample)", sizes.naive, naive))
    speedup = statistics.median(speedups)
    print(
        f"{'speed-up, bulk over naive':<50} {'':>8} {min(speedups):>9,.0f}x {speedup:>9,.0f}x"
        f" {f'>= {SPEEDUP_TARGET:.0f}x':>9}  {_verdict(speedup >= SPEEDUP_TARGET)}"
    )
    print(_row("(collection batch submitted in bulk)", sizes.collect, submitted))
    print(
        _row("collection: records in new/ -> futures resolved", sizes.collect, collected,
             f">= {COLLECT_TARGET:,.0f}", statistics.median(collected) >= COLLECT_TARGET)
    )  # fmt: skip
    print(_row("(records renamed into new/ by the other process)", sizes.collect, landing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
