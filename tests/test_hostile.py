"""Hostile files in BATCH_DIR/new/: no code runs, the collector survives, futures fail clearly."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import pytest

from boinc_executor import BoincExecutor, ResultDecodeError, protocol
from boinc_executor.protocol.pack import handled_records
from tests import jobs


class _Exploit:
    """Unpickling this runs ``touch <marker>``: what a hostile volunteer would upload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _record(job: str, payload: bytes) -> bytes:
    header = {
        "job": job,
        "status": "ok",
        "calls": 1,
        "host": "evil",
        "python": "3",
        "stdout": "",
        "stderr": "",
        "error": None,
    }
    return protocol.encode_frame(protocol.KIND_RESULT, header, payload)


@pytest.fixture
def blocked_executor(tmp_path: Path):
    """An executor whose only worker is held busy, so queued jobs stay unstarted."""
    gate = tmp_path / "gate"
    ex = BoincExecutor(max_workers=1, batch_dir=tmp_path / "batch", max_result_bytes=10_000)
    blocker = ex.submit(jobs.wait_for_file, str(gate), "released")
    yield ex, gate
    gate.touch()
    assert blocker.result(timeout=60) == "released"
    ex.shutdown(wait=True)


def test_malicious_pickle_is_refused_without_running(blocked_executor, tmp_path: Path) -> None:
    """Invariants: no code from a record runs (``os.system`` through ``__reduce__``); the
    future resolves once, with the refusal; the collector survives."""
    ex, gate = blocked_executor
    marker = tmp_path / "pwned"
    victim = ex.submit(jobs.square, 3)
    job = protocol.job_name("pyb", ex.batch_id, 1)
    payload = pickle.dumps([(True, _Exploit(marker))])
    protocol.deliver_record(ex.batch_dir, job, "evil", _record(job, payload))
    with pytest.raises(ResultDecodeError, match=r"posix\.system|not an allowed result type"):
        victim.result(timeout=30)
    assert not marker.exists()
    assert handled_records(ex.batch_dir)[job].name == protocol.record_file_name(job, "evil")
    gate.touch()
    assert ex.submit(jobs.square, 4).result(timeout=60) == 16  # the collector survived


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage", b"BOINC-EXECUTOR/result/1\n{not json}\n", b"BOINC-EXECUTOR/result/9\n{}\n"],
    ids=["empty", "garbage", "bad-header", "future-version"],
)
def test_corrupt_records_fail_the_future(blocked_executor, content: bytes) -> None:
    """Invariant: each future resolves exactly once, even from bytes that are no record."""
    ex, _ = blocked_executor
    victim = ex.submit(jobs.square, 3)
    job = protocol.job_name("pyb", ex.batch_id, 1)
    protocol.deliver_record(ex.batch_dir, job, "bad", content)
    with pytest.raises(ResultDecodeError, match="refused"):
        victim.result(timeout=30)


def test_truncated_payload(blocked_executor) -> None:
    """Invariant: each future resolves exactly once (a cut payload is corrupt, not a hang)."""
    ex, _ = blocked_executor
    victim = ex.submit(jobs.square, 3)
    job = protocol.job_name("pyb", ex.batch_id, 1)
    whole = _record(job, pickle.dumps([(True, 9)]))
    protocol.deliver_record(ex.batch_dir, job, "cut", whole[:-3])
    with pytest.raises(ResultDecodeError, match="corrupt"):
        victim.result(timeout=30)


def test_record_claiming_another_job(blocked_executor) -> None:
    """Invariant: no finished result is replaced: a record naming another job is refused."""
    ex, _ = blocked_executor
    victim = ex.submit(jobs.square, 3)
    job = protocol.job_name("pyb", ex.batch_id, 1)
    other = protocol.job_name("pyb", ex.batch_id, 0)
    protocol.deliver_record(ex.batch_dir, job, "swap", _record(other, pickle.dumps([(True, 1)])))
    with pytest.raises(ResultDecodeError, match="names job"):
        victim.result(timeout=30)


def test_oversize_record_is_not_read(blocked_executor) -> None:
    """Invariant: memory stays bounded: a record over max_result_bytes is refused unread."""
    ex, _ = blocked_executor
    victim = ex.submit(jobs.square, 3)
    job = protocol.job_name("pyb", ex.batch_id, 1)
    protocol.deliver_record(
        ex.batch_dir, job, "big", _record(job, pickle.dumps([(True, b"x" * 20_000)]))
    )
    with pytest.raises(ResultDecodeError, match="limit"):
        victim.result(timeout=30)


def test_symlink_fifo_and_strangers_are_quarantined(blocked_executor, tmp_path: Path) -> None:
    """Invariants: nothing hangs (a FIFO is never opened); no file outside the batch is read
    or changed through a symlink; files that are not this batch's records resolve nothing,
    so the job's real result still arrives."""
    ex, gate = blocked_executor
    victim = ex.submit(jobs.square, 3)
    job = protocol.job_name("pyb", ex.batch_id, 1)
    secret = tmp_path / "secret"
    secret.write_text("outside the batch directory")
    new = ex.batch_dir / "new"
    (new / protocol.record_file_name(job, "link")).symlink_to(secret)
    os.mkfifo(new / protocol.record_file_name(job, "fifo"))
    (new / "not-a-record.txt").write_text("hello")
    stranger = protocol.job_name("pyb", ex.batch_id + 1000, 0)
    protocol.deliver_record(
        ex.batch_dir, stranger, "x", _record(stranger, pickle.dumps([(True, 1)]))
    )
    future_job = protocol.job_name("pyb", ex.batch_id, 999)
    protocol.deliver_record(
        ex.batch_dir, future_job, "x", _record(future_job, pickle.dumps([(True, 1)]))
    )

    deadline = time.monotonic() + 30
    while any(new.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(new.iterdir())
    quarantined = {
        p.name.split("-", 1)[1]
        for p in (ex.batch_dir / "quarantine").iterdir()
        if not p.name.endswith(".why")
    }
    assert quarantined == {
        protocol.record_file_name(job, "link"),
        protocol.record_file_name(job, "fifo"),
        "not-a-record.txt",
        protocol.record_file_name(stranger, "x"),
        protocol.record_file_name(future_job, "x"),
    }
    assert secret.read_text() == "outside the batch directory"
    assert not victim.done()  # refused files resolve nothing: the real result still counts
    gate.touch()
    assert victim.result(timeout=60) == 9
