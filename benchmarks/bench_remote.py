"""Remote submission through the stand-in web pages: calls/s submitted and collected.

Run ``python benchmarks/bench_remote.py [--quick] [--jobs N] [--naive N] [--collect N]``
from the repository root (needs MariaDB; it uses tests/boinc_harness for the project
and tests/remote_harness for submit_rpc_handler.php / job_file.php / get_output.php
on a loopback port). One table, all rows from the same run on the same machine:

* **Bulk submission**: ``BoincExecutor(server=..., authenticator=...)``, then
  ``map(fn, range(N), chunksize=1)``; the clock stops when all N work units are in
  the database. That is pickling, query_files + chunked upload_files, journaling,
  query_batch (which names exist?) and one submit_batch (the server's create_work
  --stdin).
* **One submit_batch per call** (the naive client of BOINC's own binding): for a
  sample of calls, each is pickled, its data file query_files'd and uploaded, a
  batch created and one submit_batch sent, extrapolated linearly to N.
* **Collection**: a batch of M calls is submitted; the benchmark then plays an
  instant volunteer (transitioner pass, every output written into upload/ and the
  results marked valid and canonical in one go), and the clock runs from there to
  the last future resolved: query_batch, query_job and an authenticated
  get_output.php per job, delivery into new/, decoding.
* **ProcessPoolExecutor** ``map`` of the same N calls, for scale (it does no I/O).

The machine is shared and loaded: compare the rows with each other, not with
other runs. Results are checked; the exit status is non-zero only on a failure.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from boinc_executor import BoincExecutor, protocol  # noqa: E402
from boinc_executor.backends.remote_rpc import RpcClient  # noqa: E402
from boinc_executor.server.project import setup_project  # noqa: E402
from boinc_executor.server.remote import setup_remote  # noqa: E402
from tests.boinc_harness.backend import output_files  # noqa: E402
from tests.boinc_harness.common import read_config  # noqa: E402
from tests.boinc_harness.mariadb import (  # noqa: E402
    create_boinc_database,
    drop_database,
    ensure_server,
)
from tests.boinc_harness.project import Project, make_project  # noqa: E402
from tests.boinc_harness.server import Server, transitioner_pass  # noqa: E402
from tests.remote_harness.web import WebServer  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does."""

    jobs: int
    naive: int
    collect: int


FULL = Sizes(jobs=5_000, naive=100, collect=1_000)
QUICK = Sizes(jobs=500, naive=20, collect=200)


def square(x: int) -> int:
    """The workload (it runs only in the ProcessPoolExecutor row)."""
    return x * x


def _wu_count(project: Project, batch_ids: list[int] | None = None) -> int:
    rows = project.query("select batch from workunit")
    return sum(1 for r in rows if batch_ids is None or r["batch"] in batch_ids)


def _wait(predicate: object, timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.02)


def measure_bulk(project: Project, web: WebServer, key: str, n: int) -> tuple[float, int]:
    """(seconds to all ``n`` work units, HTTP requests sent) for one executor map."""
    before = _wu_count(project)
    start = time.perf_counter()
    ex = BoincExecutor(server=web.url, authenticator=key, name="bench-bulk")
    results = ex.map(square, range(n), chunksize=1)
    _wait(lambda: _wu_count(project) - before >= n)
    elapsed = time.perf_counter() - start
    requests = len(web.calls)
    results.close()
    ex.shutdown(wait=True, cancel_futures=True)
    return elapsed, requests


def measure_naive(project: Project, web: WebServer, key: str, n: int) -> float:
    """Seconds for ``n`` calls sent one submit_batch each (BOINC's binding, used naively)."""
    rpc = RpcClient(web.url, key)
    start = time.perf_counter()
    program = protocol.encode_program(square)
    program_jf = "jf_" + hashlib.md5(program).hexdigest()
    if rpc.query_files([program_jf]):
        rpc.upload_files([(program_jf, program)])
    for i in range(n):
        batch_id = rpc.create_batch("pyboinc", f"naive {i}")
        job = protocol.job_name("naive", batch_id, 0)
        data = protocol.encode_data(job, [((i,), {})])
        data_jf = "jf_" + hashlib.md5(data).hexdigest()
        if rpc.query_files([data_jf]):
            rpc.upload_files([(data_jf, data)])
        rpc.submit_batch(
            batch_id,
            "pyboinc",
            [(job, [program_jf, data_jf])],
            input_template="pyboinc_remote_in",
            output_template="pyboinc_remote_out",
            job_params={},
        )
    return time.perf_counter() - start


def instant_volunteer(project: Project, batch_id: int) -> None:
    """Finish every job of a batch at once: results created, outputs uploaded, canonical."""
    config = read_config(project.root)
    conn = config.connect()
    try:
        srv = Server(config=config, conn=conn)
        while srv.q(
            "select w.id from workunit w where w.batch=%s and not exists (select 1 "
            "from result r where r.workunitid=w.id) limit 1",
            batch_id,
        ):
            transitioner_pass(srv)
        rows = srv.q(
            "select r.*, w.name as wu_name from result r join workunit w on "
            "w.id=r.workunitid where w.batch=%s",
            batch_id,
        )
        cur = conn.cursor()
        for r in rows:
            i = protocol.parse_job_name(r["wu_name"])
            assert i is not None
            record = protocol.encode_result(r["wu_name"], [(True, i[2] * i[2])])
            name = output_files(r)[0][0]
            config.upload_path(name, create=True).write_bytes(record)
            cur.execute(
                "update result set server_state=5, outcome=1, validate_state=1 where id=%s",
                (r["id"],),
            )
            cur.execute(
                "update workunit set canonical_resultid=%s where id=%s", (r["id"], r["workunitid"])
            )
    finally:
        conn.close()


def measure_collection(project: Project, web: WebServer, key: str, n: int) -> float:
    """Seconds from outputs on the server to every future resolved on the laptop."""
    os.environ["BOINC_EXECUTOR_POLL_INTERVAL"] = "0.2"
    try:
        ex = BoincExecutor(server=web.url, authenticator=key, name="bench-collect")
        futures = [ex.submit(square, i) for i in range(n)]
        assert ex.flush(timeout=600)
        _wait(lambda: _wu_count(project, [ex.batch_id]) >= n)
        instant_volunteer(project, ex.batch_id)
        start = time.perf_counter()
        total = sum(f.result(timeout=1800) for f in futures)
        elapsed = time.perf_counter() - start
        ex.shutdown(wait=True)
    finally:
        os.environ.pop("BOINC_EXECUTOR_POLL_INTERVAL", None)
    if total != sum(i * i for i in range(n)):
        raise RuntimeError("collection returned wrong results")
    return elapsed


def measure_process_pool(n: int) -> float:
    start = time.perf_counter()
    with ProcessPoolExecutor(2) as pool:
        total = sum(pool.map(square, range(n), chunksize=1))
    if total != sum(i * i for i in range(n)):
        raise RuntimeError("ProcessPoolExecutor returned wrong results")
    return time.perf_counter() - start


@contextmanager
def bench_project(scratch: Path) -> Iterator[tuple[Project, WebServer, str]]:
    server = ensure_server()
    db_name = f"bench_{uuid.uuid4().hex[:12]}"
    create_boinc_database(server, db_name)
    web: WebServer | None = None
    try:
        project = make_project(scratch / "boinctest", server, db_name)
        setup_project(project.root)
        setup_remote(project.root)
        web = WebServer(project.root).start()
        key = str(project.query("select authenticator from user where id=1")[0]["authenticator"])
        yield project, web, key
    finally:
        if web is not None:
            web.stop()
        drop_database(server, db_name)


def _row(label: str, calls: int, seconds: float, note: str = "") -> str:
    return f"{label:<46} {calls:>7,} {seconds:>9.2f} {calls / seconds:>9,.0f}  {note}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--jobs", type=int, help="bulk submission size")
    parser.add_argument("--naive", type=int, help="naive sample size")
    parser.add_argument("--collect", type=int, help="results to collect")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    sizes = Sizes(args.jobs or base.jobs, args.naive or base.naive, args.collect or base.collect)
    scratch = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    os.environ["BOINC_EXECUTOR_HOME"] = str(scratch / "home")
    for name in ("PYBOINC_DIR", "BOINC_EXECUTOR_BATCH_DIR", "BOINC_EXECUTOR_SERVER"):
        os.environ.pop(name, None)
    try:
        with bench_project(scratch) as (project, web, key):
            bulk, requests = measure_bulk(project, web, key, sizes.jobs)
            naive = measure_naive(project, web, key, sizes.naive)
            naive_n = naive * sizes.jobs / sizes.naive
            collect = measure_collection(project, web, key, sizes.collect)
        pool = measure_process_pool(sizes.jobs)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"bench_remote (loopback stand-in, {os.cpu_count()} CPUs, shared and loaded machine)")
    print(f"{'measurement':<46} {'calls':>7} {'seconds':>9} {'calls/s':>9}")
    print(
        _row("bulk: BoincExecutor(server=...).map", sizes.jobs, bulk, f"{requests} HTTP requests")
    )
    print(
        _row(
            f"one submit_batch per call (sample {sizes.naive})", sizes.jobs, naive_n, "extrapolated"
        )
    )
    print(_row("collect: outputs on server -> futures", sizes.collect, collect))
    print(_row("ProcessPoolExecutor(2).map, for scale", sizes.jobs, pool))
    print(f"bulk vs one submit_batch per call: {naive_n / bulk:.1f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
