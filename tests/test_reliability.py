"""Issue 11: no record, fault or full disk hangs a future, kills a thread or loses a result.

Every test runs the real executor on the embedded backend (real worker processes,
real files in BATCH_DIR/new/), and plants records the way a hostile volunteer would
write them (tests/hostile_records.py: raw bytes, no pickler). Each docstring names
the invariant it checks, from this list:

- each future resolves exactly once;
- no finished result is lost or replaced;
- no code from a record runs;
- the collector and decoder threads never die or spin;
- nothing hangs;
- memory and CPU stay bounded.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from boinc_executor import (
    BatchError,
    BoincExecutor,
    JobFailedError,
    RemoteError,
    ResultDecodeError,
    WorkunitError,
    protocol,
)
from boinc_executor.backends.local import LocalBackend
from boinc_executor.protocol.pack import handled_records
from tests import hostile_records as hostile
from tests import jobs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def blocked(tmp_path: Path) -> Iterator[tuple[BoincExecutor, Path]]:
    """An executor whose only worker is held busy, so a planted record answers job 1."""
    gate = tmp_path / "gate"
    ex = BoincExecutor(max_workers=1, batch_dir=tmp_path / "batch", max_result_bytes=10_000_000)
    blocker = ex.submit(jobs.wait_for_file, str(gate), "released")
    yield ex, gate
    gate.touch()
    assert blocker.result(timeout=60) == "released"
    ex.shutdown(wait=True)


def _plant(ex: BoincExecutor, data: bytes, tag: str = "evil") -> str:
    """Plant ``data`` in new/ as a record of job 1 (which waits behind the blocker)."""
    job = protocol.job_name("pyb", ex.batch_id, 1)
    protocol.deliver_record(ex.batch_dir, job, tag, data)
    return job


def _still_collecting(ex: BoincExecutor, gate: Path) -> None:
    """The collector and decoder survived: a fresh job still gets its real result."""
    gate.touch()
    assert ex.submit(jobs.square, 7).result(timeout=60) == 49


def _new_is_empty(ex: BoincExecutor, timeout: float = 30) -> bool:
    """new/ drains: the record was handled once, not retried forever."""
    deadline = time.monotonic() + timeout
    while any((ex.batch_dir / protocol.NEW).iterdir()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# ----------------------------------------------------------------- hostile records


def test_deeply_nested_header_fails_the_future_once(blocked) -> None:
    """Item 1. Invariants: each future resolves exactly once; the decoder never spins.

    A header nested 200,000 deep made json raise RecursionError past decode_frame;
    the record stayed in new/ and was retried at 100% CPU forever.
    """
    ex, gate = blocked
    victim = ex.submit(jobs.square, 3)
    job = _plant(ex, hostile.frame(b'{"job":' + hostile.deep_json(200_000) + b"}"))
    with pytest.raises(ResultDecodeError, match="nested too deeply"):
        victim.result(timeout=30)
    assert _new_is_empty(ex)
    packed = handled_records(ex.batch_dir)  # refused, and kept in the pack for inspection
    assert packed[job].name == protocol.record_file_name(job, "evil")
    _still_collecting(ex, gate)


@pytest.mark.parametrize("mask", [b'"zz"', b"1e400", b"[1]", b"true", b"-1e999"])
def test_malformed_error_fields_still_resolve(blocked, mask: bytes) -> None:
    """Item 2. Invariants: each future resolves exactly once; the decoder never spins.

    An error record's error_mask of the wrong type made int() raise in rebuild_exception.
    """
    ex, gate = blocked
    victim = ex.submit(jobs.square, 3)
    job = protocol.job_name("pyb", ex.batch_id, 1)
    error = (
        b'{"type":"WorkunitError","module":"boinc_executor","message":"gave up",'
        b'"error_mask":' + mask + b',"exit_status":"x","stderr_tail":[1]}'
    )
    line = hostile.header_bytes(job, status="error", calls=0)
    line = line.replace(b'"error":null', b'"error":' + error)
    _plant(ex, hostile.frame(line))
    with pytest.raises(WorkunitError, match="gave up") as caught:
        victim.result(timeout=30)
    assert caught.value.error_mask == 0 and caught.value.exit_status is None
    assert caught.value.stderr_tail == "<malformed stderr_tail: list>"
    assert _new_is_empty(ex)
    _still_collecting(ex, gate)


@pytest.mark.parametrize("field", ["message", "type", "args", "traceback", "host"])
def test_deep_per_call_error_fields_resolve_the_future(blocked, field: str) -> None:
    """Item 3. Invariant: each future resolves exactly once (it never stays RUNNING).

    A per-call error field nested 200,000 deep raised RecursionError in _resolve after
    the record had moved to old/, so nothing ever retried it.
    """
    ex, gate = blocked
    victim = ex.submit(jobs.square, 3)
    fields = {"type": "ValueError", "module": "builtins", "message": "bad"}
    fields.pop(field, None)
    payload = hostile.failed_call_payload(fields, field, 200_000)
    _plant(ex, hostile.ok_record(protocol.job_name("pyb", ex.batch_id, 1), payload))
    expected = {"message": "<malformed message: list>", "type": "<malformed type: list>"}
    with pytest.raises(RemoteError if field == "type" else ValueError) as caught:
        victim.result(timeout=30)
    assert expected.get(field, "bad") in str(caught.value)
    assert _new_is_empty(ex)
    _still_collecting(ex, gate)


@pytest.mark.parametrize(
    "payload",
    [
        hostile.huge_bytearray_payload(2**31),
        hostile.memo_bomb_payload(1 << 27),
        b"".join(  # bytearray(2**20) over and over through the memo: the sum counts
            [
                b"\x80\x04\x8c\x08builtins\x8c\tbytearray\x93\x94\x8a\x03\x00\x00\x10\x94(",
                b"h\x00h\x01\x85R0" * 20_000,
                b"N.",
            ]
        ),
    ],
    ids=["bytearray-2**31", "memo-index-2**27", "memoised-reduce"],
)
def test_small_payload_cannot_allocate_gigabytes(blocked, payload: bytes) -> None:
    """Item 5. Invariant: memory stays bounded by the record's size.

    A 54-byte payload grew the master by 2 GB in 1.5 s (bytearray via REDUCE with
    2**31); LONG_BINPUT 2**27 makes the C unpickler allocate a 2 GB memo table.
    """
    ex, gate = blocked
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    victim = ex.submit(jobs.square, 3)
    _plant(ex, hostile.ok_record(protocol.job_name("pyb", ex.batch_id, 1), payload))
    with pytest.raises(ResultDecodeError, match="refused"):
        victim.result(timeout=30)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < 200 * 1024, f"the master grew by {grown} KiB"
    _still_collecting(ex, gate)


def test_numpy_object_array_with_short_state_is_refused(blocked) -> None:
    """Item 5 (numpy shapes). Invariants: no code from a record runs; the master survives.

    numpy's ndarray.__setstate__ reads past an object list shorter than the shape:
    garbage pointers, then a segfault of the whole master.
    """
    pytest.importorskip("numpy")
    ex, gate = blocked
    victim = ex.submit(jobs.square, 3)
    payload = hostile.short_object_array_payload(1000)
    _plant(ex, hostile.ok_record(protocol.job_name("pyb", ex.batch_id, 1), payload))
    with pytest.raises(ResultDecodeError, match="wrong size"):
        victim.result(timeout=30)
    _still_collecting(ex, gate)


def test_hash_flood_is_refused_in_linear_time(blocked) -> None:
    """Item 6. Invariants: CPU stays bounded; the master never freezes.

    A 1.4 MB record of 100,000 int keys of equal hash froze the master for more than
    15 s while the C unpickler built the dict. A thread that counts while the record is
    decoded must keep getting the GIL.
    """
    ex, gate = blocked
    ticks = 0
    stop = threading.Event()

    def tick() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.01)

    ticker = threading.Thread(target=tick)
    ticker.start()
    victim = ex.submit(jobs.square, 3)
    payload = hostile.colliding_dict_payload(100_000)
    assert len(payload) > 1_000_000
    start = time.monotonic()
    _plant(ex, hostile.ok_record(protocol.job_name("pyb", ex.batch_id, 1), payload))
    with pytest.raises(ResultDecodeError, match="equal hash"):
        victim.result(timeout=30)
    elapsed = time.monotonic() - start
    stop.set()
    ticker.join()
    assert elapsed < 10, f"refusing the flood took {elapsed:.1f} s"
    assert ticks > elapsed * 10, "another thread was starved while the record was decoded"
    _still_collecting(ex, gate)


# ----------------------------------------------------------------- faults


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted for the test and unmounted after it (root only, as in CI)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root (CI runs as root); not root here")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (no CAP_SYS_ADMIN?): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_result_that_overflows_the_disk_is_a_clear_job_failure(small_tmpfs: Path) -> None:
    """Item 12. Invariants: each future resolves exactly once, with the documented error;
    no finished result is lost (the small job's result still arrives).

    A result larger than the free space surfaced as RemoteError "runner exited with
    code 1 without a result record".
    """
    with BoincExecutor(max_workers=1, batch_dir=small_tmpfs / "batch") as ex:
        big = ex.submit(jobs.make_bytes, 8 * 1024 * 1024)
        small = ex.submit(jobs.square, 5)
        with pytest.raises(JobFailedError, match="disk is full") as caught:
            big.result(timeout=60)
        assert type(caught.value) is JobFailedError
        assert "free space" in str(caught.value)
        assert small.result(timeout=60) == 25


def test_callback_calling_shutdown_wait_does_not_deadlock(tmp_path: Path) -> None:
    """Item 14. Invariant: nothing hangs, whichever executor API a callback calls.

    A done-callback runs on the thread that handles the record (the decoder's, or a
    worker's report reader); shutdown(wait=True) there joined the collector, which was
    joining the decoder. The script below does it with a second job
    still running and then exits, as a user's script would.
    """
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, threading
            sys.path.insert(0, {str(REPO)!r})
            from boinc_executor import BoincExecutor
            from tests import jobs

            gate = {str(tmp_path / "gate")!r}
            ex = BoincExecutor(max_workers=2, batch_dir={str(tmp_path / "batch")!r})
            seen = []
            def callback(fut):
                ex.flush()
                ex.shutdown(wait=True)
                seen.append((threading.current_thread().name, fut.result()))
            first = ex.submit(jobs.wait_for_file, gate, 9)
            second = ex.submit(jobs.sleep_and_return, 2.0, "late")
            first.add_done_callback(callback)
            open(gate, "w").close()
            assert second.result(timeout=60) == "late"
            assert first.result() == 9 and seen and seen[0][1] == 9, seen
            print("ok", seen[0][0])
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=90, check=False
    )
    assert done.returncode == 0, done.stderr
    # It ran on one of our threads: the decoder, or the thread that read the worker's
    # report and handled the record at once (the decoder being idle).
    assert done.stdout.startswith(("ok boinc-executor-decoder-", "ok boinc-executor-worker"))


def test_flush_in_a_collector_thread_callback_does_not_deadlock(tmp_path: Path) -> None:
    """Item 14. Invariant: nothing hangs. A callback that the collector thread runs (a
    submission failure resolves there) may call flush() and shutdown(wait=True)."""
    ex = BoincExecutor(max_workers=1, batch_dir=tmp_path / "batch")
    returned = threading.Event()

    def callback(_fut: Any) -> None:
        ex.flush(timeout=30)
        ex.shutdown(wait=True)
        returned.set()

    shutil.rmtree(ex.batch_dir / "local" / "download")
    (ex.batch_dir / "local" / "download").write_text("staging fails: not a directory")
    fut = ex.submit(jobs.square, 2)
    fut.add_done_callback(callback)
    assert returned.wait(30), "the callback never returned"
    with pytest.raises(Exception, match="could not hand the job"):
        fut.result(timeout=5)
    ex.shutdown(wait=True)


def test_callback_raising_system_exit_does_not_kill_the_decoder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 14. Invariants: the decoder thread never dies; nothing hangs; each future
    resolves exactly once.

    ``Future`` logs an Exception from a done-callback but lets SystemExit (a callback
    calling ``sys.exit()``) escape ``set_result``: on the decoder thread that ended the
    thread, and every later future stayed RUNNING forever (and so did shutdown).
    """

    def leave(_fut: Any) -> None:
        raise SystemExit("a callback calls sys.exit()")

    with BoincExecutor(max_workers=1, batch_dir=tmp_path / "batch") as ex:
        first = ex.submit(jobs.square, 2)
        first.add_done_callback(leave)
        assert first.result(timeout=60) == 4
        assert ex.submit(jobs.square, 3).result(timeout=60) == 9
        decoder = f"boinc-executor-decoder-{ex.batch_id}"
        assert decoder in {t.name for t in threading.enumerate()}
    assert any("raised SystemExit" in r.getMessage() for r in caplog.records)


class _HeldHandOver(LocalBackend):
    """The embedded backend, with ``submit_delay`` left to the test: while it is long, a
    submitted job stays in the collector's buffer, as jobs do on BOINC between passes."""

    def wants_jobs_now(self) -> bool:
        return self.submit_delay == 0 and super().wants_jobs_now()


def test_flush_in_a_callback_does_not_deadlock_an_interrupted_executor(tmp_path: Path) -> None:
    """Item 14. Invariant: nothing hangs, whichever executor API a callback calls.

    A done-callback (on the decoder thread) calls flush() while a later job is still
    buffered, and then the master is interrupted (^C inside ``with``). The buffered job
    is never handed over, so flush() waited for ever; the collector, finishing, joined
    the decoder that waited in it, and the batch directory stayed locked. Now flush()
    returns False and the batch is kept, unlocked, for a re-run.
    """
    gate = tmp_path / "gate"
    backend = _HeldHandOver(max_workers=1)
    flushed: list[bool] = []
    with pytest.raises(KeyboardInterrupt):
        with BoincExecutor(batch_dir=tmp_path / "batch", _backend=backend) as ex:
            first = ex.submit(jobs.wait_for_file, str(gate), 1)
            assert ex.flush(timeout=30)
            backend.submit_delay = 600.0
            ex.submit(jobs.square, 2)  # buffered for the next ten minutes
            first.add_done_callback(lambda _f: flushed.append(ex.flush()))
            gate.touch()
            assert first.result(timeout=30) == 1
            raise KeyboardInterrupt
    assert flushed == [False]
    with BoincExecutor(max_workers=1, batch_dir=tmp_path / "batch") as again:  # not locked
        replayed = again.submit(jobs.wait_for_file, str(gate), 1)
        assert again.submit(jobs.square, 2).result(timeout=60) == 4  # never handed over
        assert replayed.result(timeout=60) == 1


def _tamper(field: str, value: Any) -> Any:
    """An edit of one journal entry: ``field`` set to ``value``, or removed for ``...``."""

    def edit(entry: dict[str, Any]) -> str:
        if value is ...:
            del entry[field]
        else:
            entry[field] = value
        return json.dumps(entry)

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_tamper("i", "1"), r"line 2: field 'i' is '1', not an integer"),
        (_tamper("n", True), r"line 2: field 'n' is True, not an integer"),
        (_tamper("call", -3), r"line 2: field 'call' is negative"),
        (_tamper("job", [1]), r"line 2: field 'job' is \[1\], not text"),
        (_tamper("digest", ...), r"line 2 must be an object with exactly the fields"),
        (lambda _entry: '{"i": 1,', r"line 2 is not valid JSON"),
        (lambda _entry: "[" * 100_000 + "]" * 100_000, r"line 2 is not valid JSON"),
    ],
    ids=["i-as-text", "n-as-bool", "negative-call", "job-as-list", "missing-field", "not-json",
         "deep-json"],
)
def test_tampered_journal_line_is_a_clear_batch_error(
    tmp_path: Path, edit: Any, message: str
) -> None:
    """Item 15. Invariant: no finished result is lost (the journal is left as it is, and the
    error names the line to repair), whether the batch is run again or resumed.

    ``"i": "1"`` made resume fail with a bare TypeError.
    """
    batch_dir = tmp_path / "batch"
    with BoincExecutor(max_workers=1, batch_dir=batch_dir) as ex:
        futures = [ex.submit(jobs.square, i) for i in range(2)]
        assert [f.result(timeout=60) for f in futures] == [0, 1]
        batch_id = ex.batch_id
    journal = batch_dir / protocol.JOURNAL
    lines = journal.read_text().splitlines()
    lines[1] = edit(json.loads(lines[1]))
    journal.write_text("\n".join(lines) + "\n")
    with pytest.raises(BatchError, match=message):
        BoincExecutor(max_workers=1, batch_dir=batch_dir)
    with pytest.raises(BatchError, match=message):
        BoincExecutor.resume(batch_id, max_workers=1)
    assert journal.read_text().splitlines()[1] == lines[1]
