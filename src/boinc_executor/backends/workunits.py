"""Putting jobs into a BOINC project's files: staging inputs and running ``create_work``.

The database side of the BOINC backend lives in ``boinc.py`` and ``db.py``; this
module only writes files into the download hierarchy (fan-out directories,
boinc-facts §3) and runs ``bin/create_work --stdin`` from the project root, so it
works without ``MySQLdb``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ..batch import JournalEntry
from ..config import JobParams, ProjectConfig
from ..errors import SubmissionError
from ..protocol.names import APP_NAME

__all__ = [
    "INPUT_TEMPLATE",
    "OUTPUT_TEMPLATE",
    "PARAM_TAGS",
    "Stager",
    "cache_md5_info",
    "create_work",
    "param_options",
]

INPUT_TEMPLATE = f"templates/{APP_NAME}_in"
OUTPUT_TEMPLATE = f"templates/{APP_NAME}_out"

_CREATE_WORK_CHUNK = 5000  # jobs per create_work process at most
_CREATE_WORK_MIN_CHUNK = 500  # below this, one more process costs more than it saves
# Two writers: one overlaps the disk's latency with the other's system calls, and the
# executor keeps encoding meanwhile. More do not go faster on a local file system:
# creating a file is kernel CPU work serialised on the journal, and 16 threads made
# bench_boinc's bulk submission about 1.5x slower than 2 (for a data file and its .md5:
# 190 us of system time against 135 us with 2 threads, and 10x the context switches).
_STAGE_THREADS = 2
_STAGE_BATCH = 64  # files written by one pool task
_STAGE_WINDOW = 16  # pool tasks in flight before stage() waits for the older half
_STDERR_TAIL = 2000
# JobParams fields that are create_work options; the first ten are also <workunit>
# children of an input template, whose values would override the options (§3).
PARAM_TAGS = (
    "rsc_fpops_est",
    "rsc_fpops_bound",
    "rsc_memory_bound",
    "rsc_disk_bound",
    "delay_bound",
    "min_quorum",
    "target_nresults",
    "max_error_results",
    "max_total_results",
    "max_success_results",
)
_PARAM_OPTIONS = (*PARAM_TAGS, "priority")


def param_options(params: JobParams) -> list[str]:
    """``JobParams`` as create_work command-line options (``--rsc_fpops_est 1e10`` ...)."""
    argv: list[str] = []
    for option in _PARAM_OPTIONS:
        argv += [f"--{option}", repr(getattr(params, option))]
    return argv


class Stager:
    """Writes input files into the download hierarchy on a pool of threads.

    Creating a file (and, the first time, its fan-out directory) costs latency
    and kernel time, not bandwidth, so writes run on a small pool while the
    executor keeps staging, a batch of files per task so the pool's own
    overhead stays small; :meth:`wait` is the barrier ``submit`` crosses before
    ``create_work`` reads the files. A failed write is reported by the next
    :meth:`stage` or :meth:`wait`, whichever comes first.

    Each input is one file written where it belongs, without a temp file and
    rename: nothing reads it before ``create_work``, which runs after
    :meth:`wait`, and a file torn by a killed master has no journal line, so
    the re-run finds its bytes differ and rewrites it. With ``<cache_md5_info>``
    on (make_project's default), create_work keeps ``<file>.md5`` ("<md5>
    <nbytes>") beside each input and trusts it while it is not older than the
    file (boinc-facts §3); writing it here, after the file, in parallel, spares
    create_work a serial read, hash and file creation per job.
    """

    def __init__(self, config: ProjectConfig) -> None:
        self._config = config
        self._download = str(config.download_dir)
        self._md5_cache = cache_md5_info(config.root)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []
        self._batch: list[tuple[str, bytes, bool]] = []
        self._error: SubmissionError | None = None
        self._fanout_made: set[str] = set()
        self._written: set[str] = set()  # staged by this process: no stat needed to know

    def is_staged(self, name: str) -> bool:
        """Whether file ``name`` is in the download hierarchy (after :meth:`wait`)."""
        return name in self._written or os.path.isfile(self.path(name))

    def path(self, name: str) -> str:
        """Where file ``name`` is (or goes) in the download hierarchy."""
        return os.path.join(self._download, self._config.fanout_dir(name), name)

    def stage(self, name: str, data: bytes, *, shared: bool) -> None:
        """Queue ``data`` to be written as ``name`` (see :meth:`BoincBackend.stage`).

        Raises:
            SubmissionError: an earlier write failed.
        """
        self._raise_error()
        self._batch.append((name, data, shared))
        if len(self._batch) >= _STAGE_BATCH:
            self._submit_batch()
        if len(self._pending) >= _STAGE_WINDOW:  # bound the bytes held in the queue
            half = _STAGE_WINDOW // 2
            for future in self._pending[:half]:
                future.result()
            del self._pending[:half]

    def _submit_batch(self) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(_STAGE_THREADS, thread_name_prefix="boinc-stage")
        batch, self._batch = self._batch, []
        self._pending.append(self._pool.submit(self._write_all, batch))

    def wait(self) -> None:
        """Return once every file staged so far is written.

        Raises:
            SubmissionError: a write failed.
        """
        if self._batch:
            self._submit_batch()
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()
        self._raise_error()

    def close(self) -> None:
        """Finish the queued writes and stop the threads."""
        if self._batch:
            self._submit_batch()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _write_all(self, batch: list[tuple[str, bytes, bool]]) -> None:
        for name, data, shared in batch:
            self._write(name, data, shared)

    def _write(self, name: str, data: bytes, shared: bool) -> None:
        fanout = self._config.fanout_dir(name)
        directory = os.path.join(self._download, fanout)
        path = os.path.join(directory, name)
        try:
            if fanout not in self._fanout_made:
                os.makedirs(directory, exist_ok=True)
                self._fanout_made.add(fanout)
            try:
                fd = os.open(path, _CREATE_FLAGS, 0o666)
            except FileExistsError:
                if shared or _same_content(path, data):
                    self._written.add(name)
                    return  # immutable names: already staged
                fd = os.open(path, os.O_WRONLY | _CLOEXEC)  # torn by a killed master
                os.ftruncate(fd, len(data))
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
            if self._md5_cache:
                digest = hashlib.md5(data).hexdigest()  # noqa: S324 - BOINC's file checksum
                fd = os.open(path + ".md5", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _CLOEXEC, 0o666)
                try:
                    _write_all(fd, f"{digest} {float(len(data)):.15e}\n".encode())
                finally:
                    os.close(fd)
            self._written.add(name)
        except OSError as exc:
            self._error = SubmissionError(
                f"cannot stage {name} into {directory}: {exc}; the submitting user needs write "
                "access to the project's download directory, and the disk needs room"
            )


_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC | getattr(os, "O_BINARY", 0)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    written = 0
    while written < len(data):
        written += os.write(fd, view[written:])


def _same_content(path: str, data: bytes) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(data) + 1) == data


def create_work(
    root: Path, batch_id: int, jobs: Sequence[JournalEntry], params: JobParams, lock_fd: int
) -> None:
    """Create work units with one ``create_work --stdin`` per chunk, a CPU's worth at a time.

    Work units are independent rows, so chunks may be inserted concurrently;
    create_work spends most of its time on per-job template processing. The
    child processes inherit ``lock_fd`` (see ``BoincBackend._submit_lock``).

    Raises:
        SubmissionError: a create_work run failed (the first failure is raised
            after every run has ended).
    """
    cpus = _usable_cpus()
    size = min(_CREATE_WORK_CHUNK, max(_CREATE_WORK_MIN_CHUNK, -(-len(jobs) // cpus)))
    chunks = [jobs[start : start + size] for start in range(0, len(jobs), size)]
    if len(chunks) == 1:
        _create_work_chunk(root, batch_id, chunks[0], params, lock_fd)
        return
    with ThreadPoolExecutor(min(cpus, len(chunks)), thread_name_prefix="boinc-cw") as pool:
        futures = [
            pool.submit(_create_work_chunk, root, batch_id, c, params, lock_fd) for c in chunks
        ]
    errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error


def _usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _create_work_chunk(
    root: Path, batch_id: int, jobs: Sequence[JournalEntry], params: JobParams, lock_fd: int
) -> None:
    argv = [
        str(root / "bin" / "create_work"),
        "--appname",
        APP_NAME,
        "--batch",
        str(batch_id),
        "--wu_template",
        INPUT_TEMPLATE,
        "--result_template",
        OUTPUT_TEMPLATE,
    ]
    argv += param_options(params)
    argv.append("--stdin")
    lines = "".join([f"--wu_name {j.job} {j.program} {j.data}\n" for j in jobs])
    try:
        done = subprocess.run(
            argv,
            cwd=root,
            input=lines.encode(),
            capture_output=True,
            check=False,
            pass_fds=(lock_fd,),
        )
    except OSError as exc:
        raise SubmissionError(f"cannot run {argv[0]}: {exc}") from exc
    if done.returncode == 0:
        return
    tail = done.stderr.decode(errors="replace").strip()[-_STDERR_TAIL:]
    raise SubmissionError(
        f"bin/create_work failed (exit code {done.returncode}) for {len(jobs)} jobs of "
        f"batch {batch_id}: {tail}"
    )


def cache_md5_info(root: Path) -> bool:
    """Whether config.xml turns on create_work's ``.md5`` cache (``<cache_md5_info>``)."""
    try:
        node = ET.parse(root / "config.xml").getroot().find("config/cache_md5_info")  # noqa: S314
    except (OSError, ET.ParseError):
        return False
    return node is not None and (node.text or "").strip() not in ("", "0")
