"""The collector's intake and the handled-records pack, with real files and processes.

Each test names the invariant it checks (issue 11): each future resolves exactly
once; no finished result is lost or replaced; no code from a record runs; the
collector and decoder threads never die or spin; nothing hangs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from boinc_executor import BoincExecutor, protocol
from boinc_executor.backends.local import LocalBackend
from boinc_executor.protocol.pack import RecordPack, handled_records
from tests import jobs


def _wait_for(what: str, condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def _ok(job: str, value: Any) -> bytes:
    return protocol.encode_result(job, [(True, value)])


@pytest.fixture
def blocked(tmp_path: Path) -> Iterator[tuple[BoincExecutor, Path]]:
    """An executor whose only worker is held busy, so queued jobs stay unstarted."""
    gate = tmp_path / "gate"
    ex = BoincExecutor(max_workers=1, batch_dir=tmp_path / "batch")
    blocker = ex.submit(jobs.wait_for_file, str(gate), "released")
    yield ex, gate
    gate.touch()
    assert blocker.result(timeout=60) == "released"
    ex.shutdown(wait=True)


# --------------------------------------------------------------------------- the pack


def test_pack_torn_tail_is_dropped_and_first_frame_wins(tmp_path: Path) -> None:
    """Invariant: no finished result is lost or replaced.

    A kill mid-append leaves a torn last frame: reopening drops exactly it (its
    record is still in new/, since files leave new/ only after a sync), keeps
    every complete frame, and a later frame for a packed job is never written.
    """
    path = str(tmp_path / protocol.HANDLED_PACK)
    pack = RecordPack(path)
    names = [protocol.record_file_name(f"pyb_1_{i}", "local-0") for i in range(3)]
    assert pack.append([(names[0], b"zero", 0), (names[1], b"one", 0)]) == 2
    assert pack.append([(protocol.record_file_name("pyb_1_0", "late"), b"other", 0)]) == 0
    pack.append([(names[2], b"two" * 100, 0)])
    pack.close()
    size = os.path.getsize(path)
    os.truncate(path, size - 7)  # the kill: the last frame's tail never reached the disk

    pack = RecordPack(path)
    assert sorted(pack.index) == ["pyb_1_0", "pyb_1_1"]
    assert pack.read("pyb_1_0")[1] == b"zero" and pack.read("pyb_1_1")[1] == b"one"
    assert pack.holds("pyb_1_1") and not pack.holds("pyb_1_2")
    assert pack.append([(names[2], b"two again", 0)]) == 1  # the record was still in new/
    pack.close()
    with open(path, "r+b") as fh:  # a flipped byte in the last frame fails its checksum
        fh.seek(-6, os.SEEK_END)
        byte = fh.read(1)
        fh.seek(-6, os.SEEK_END)
        fh.write(bytes([byte[0] ^ 0xFF]))
    assert sorted(handled_records(tmp_path)) == ["pyb_1_0", "pyb_1_1"]


def test_late_duplicates_never_replace_handled_records(tmp_path: Path) -> None:
    """Invariant: no finished result is replaced; a re-run replays the first run's values.

    Same-named and other-tagged duplicates with other values arrive while the
    executor runs and after it stopped; the first record of each job wins, and a
    re-run of the same script gets exactly the values the first run got.
    """
    batch_dir = tmp_path / "batch"
    with BoincExecutor(max_workers=2, batch_dir=batch_dir) as ex:
        first = list(ex.map(jobs.square, range(20)))
        batch_id = ex.batch_id
        for i in range(20):
            job = protocol.job_name("pyb", batch_id, i)
            protocol.deliver_record(batch_dir, job, "local-0", _ok(job, -1))  # same name
            protocol.deliver_record(batch_dir, job, "aaa", _ok(job, -2))  # sorts first
        _wait_for("the duplicates to be dropped", lambda: not os.listdir(batch_dir / "new"))
    for i in range(20):
        job = protocol.job_name("pyb", batch_id, i)
        protocol.deliver_record(batch_dir, job, "zzz", _ok(job, -3))
    with BoincExecutor(max_workers=2, batch_dir=batch_dir) as ex:
        again = list(ex.map(jobs.square, range(20)))
    assert first == again == [x * x for x in range(20)]
    packed = handled_records(batch_dir)
    tags = {r.name.split(".")[1] for r in packed.values()}
    assert tags and all(tag.startswith("local-") for tag in tags - {"local-0"}), tags
    assert tags.isdisjoint({"aaa", "zzz"}), tags
    assert os.listdir(batch_dir / "new") == []


def test_legacy_old_dir_stays_readable(tmp_path: Path) -> None:
    """Invariant: no finished result is lost; a re-run replays the first values.

    A batch directory in the format before the pack (each handled record a file
    in old/) is adopted on open: the oldest record of each job wins, the files
    leave old/, and the re-run runs nothing again.
    """
    batch_dir = tmp_path / "batch"
    log = tmp_path / "log"
    with BoincExecutor(max_workers=2, batch_dir=batch_dir) as ex:
        first = list(ex.map(jobs.log_and_square, [str(log)] * 6, range(6)))
    old = batch_dir / protocol.OLD
    old.mkdir()
    for entry, body in RecordPack(str(batch_dir / protocol.HANDLED_PACK)).records():
        (old / entry.name).write_bytes(body)
        job = entry.name.split(".")[0]
        late = old / protocol.record_file_name(job, "late")
        late.write_bytes(_ok(job, -1))
        os.utime(late, (time.time() + 60, time.time() + 60))  # handled after the first
    os.unlink(batch_dir / protocol.HANDLED_PACK)
    with BoincExecutor(max_workers=2, batch_dir=batch_dir) as ex:
        again = list(ex.map(jobs.log_and_square, [str(log)] * 6, range(6)))
    assert first == again == [x * x for x in range(6)]
    assert len(log.read_text().split()) == 6  # nothing ran twice
    assert not old.exists()
    assert len(handled_records(batch_dir)) == 6


# --------------------------------------------------------------------------- intake


class _SilentBackend(LocalBackend):
    """The embedded backend, with workers that never run: only the benchmark's records."""

    poll_interval = 600.0  # no periodic scan within the test: only the event can find it

    def attach(self, batch: Any, checkpoint: Any, events: Any) -> None:
        super().attach(batch, checkpoint, events)
        self.events = events

    def submit(self, jobs: Any, params: Any) -> None:
        pass


def test_record_delivered_resolves_without_a_scan(tmp_path: Path) -> None:
    """Invariant: each future resolves exactly once, from the record its event names.

    With the periodic scan out of reach, naming the record through
    ``BackendEvents.record_delivered`` is enough; announcing it twice, or a name
    of no job, changes nothing.
    """
    backend = _SilentBackend(max_workers=1)
    ex = BoincExecutor(batch_dir=tmp_path / "batch", _backend=backend)
    fut = ex.submit(jobs.square, 7)
    assert ex.flush(timeout=30)
    time.sleep(0.3)  # the first scan (at start-up) is over
    job = protocol.job_name("pyb", ex.batch_id, 0)
    name = protocol.record_file_name(job, "local-0").rsplit("/", 1)[-1]
    protocol.deliver_record(ex.batch_dir, job, "local-0", _ok(job, 49))
    backend.events.record_delivered(name)
    backend.events.record_delivered(name)
    backend.events.record_delivered("not-a-record")
    assert fut.result(timeout=10) == 49
    ex.shutdown(wait=True)
    assert handled_records(ex.batch_dir)[job].name == name


class _AssimilatedBackend(_SilentBackend):
    """As a BOINC project: records only land in new/ (the assimilator), nobody names them."""

    announces_records = False


def test_records_that_land_in_new_resolve_without_a_scan(tmp_path: Path) -> None:
    """Invariant: each future resolves exactly once, from a regular file named as its record.

    With the periodic scan out of reach, the watch on new/ finds records renamed
    in (as the assimilator delivers them) and written in place. A symlink or a FIFO
    under a job's record name is left to the scan, which refuses it, and the job
    waits for its real record.
    """
    backend = _AssimilatedBackend(max_workers=1)
    ex = BoincExecutor(batch_dir=tmp_path / "batch", _backend=backend)
    futures = [ex.submit(jobs.square, i) for i in range(3)]
    assert ex.flush(timeout=30)
    time.sleep(0.3)  # the first scan (at start-up) is over
    new = ex.batch_dir / protocol.NEW
    names = [protocol.job_name("pyb", ex.batch_id, i) for i in range(3)]
    protocol.deliver_record(ex.batch_dir, names[0], "assim", _ok(names[0], 0))
    (new / protocol.record_file_name(names[1], "inplace")).write_bytes(_ok(names[1], 1))
    outside = tmp_path / "outside"
    outside.write_bytes(_ok(names[2], -1))
    (new / protocol.record_file_name(names[2], "link")).symlink_to(outside)
    os.mkfifo(new / protocol.record_file_name(names[2], "fifo"))
    assert [f.result(timeout=10) for f in futures[:2]] == [0, 1]
    time.sleep(0.5)
    assert not futures[2].done()  # neither the symlink nor the FIFO counted
    protocol.deliver_record(ex.batch_dir, names[2], "assim", _ok(names[2], 4))
    assert futures[2].result(timeout=10) == 4
    ex.shutdown(wait=True)
    assert sorted(handled_records(ex.batch_dir)) == sorted(names)


def test_the_watch_names_landed_records_only_and_stops_at_once(tmp_path: Path) -> None:
    """The inotify watch itself: record names of regular files, in batches; temp files,
    strangers and directories are not named; close() returns promptly; a directory
    that cannot be watched says so instead of failing."""
    from boinc_executor.watch import NewRecordWatch

    landed: list[tuple[str, str]] = []
    watch = NewRecordWatch(str(tmp_path), landed.extend, lambda: None, name="test-watch")
    assert watch.start(), "inotify is available on Linux"
    record = protocol.record_file_name("pyb_1_0", "a")
    (tmp_path / ".tmp-pyb_1_1.a.result").write_bytes(b"x")  # a writer's temp file
    os.rename(tmp_path / ".tmp-pyb_1_1.a.result", tmp_path / record)
    (tmp_path / "stranger").write_bytes(b"x")
    (tmp_path / protocol.record_file_name("pyb_1_2", "dir")).mkdir()
    _wait_for("the record to be named", lambda: landed == [("pyb_1_0", record)], timeout=10)
    start = time.monotonic()
    watch.close()
    assert time.monotonic() - start < 5
    assert landed == [("pyb_1_0", record)]
    missing = NewRecordWatch(str(tmp_path / "gone"), landed.extend, lambda: None, name="x")
    assert not missing.start()


def test_long_names_never_stop_the_scan(blocked: tuple[BoincExecutor, Path]) -> None:
    """Invariant: the collector never dies or stops collecting; names stay within NAME_MAX.

    Files named up to 255 characters sit in new/ before a valid record; they are
    quarantined under short names with a note, and the record behind them resolves
    its future.
    """
    ex, _ = blocked
    new = ex.batch_dir / protocol.NEW
    victim = ex.submit(jobs.square, 3)
    for length in (250, 255):
        (new / ("x" * (length - 7) + ".result")).write_bytes(b"junk")
    (new / ("é" * 120)).write_bytes(b"junk")  # 240 bytes of UTF-8
    job = protocol.job_name("pyb", ex.batch_id, 1)
    protocol.deliver_record(ex.batch_dir, job, "hand", _ok(job, 9))
    assert victim.result(timeout=30) == 9
    quarantine = ex.batch_dir / protocol.QUARANTINE
    _wait_for("the long names to be refused", lambda: len(os.listdir(quarantine)) == 6)
    assert all(len(os.fsencode(n)) <= 255 for n in os.listdir(quarantine))
    notes = [p.read_text() for p in quarantine.glob("*.why")]
    assert any("x" * 243 in note for note in notes)
    _wait_for("the handled record to leave new/", lambda: os.listdir(new) == [])


def test_dot_files_and_dead_temp_files_are_cleaned(blocked: tuple[BoincExecutor, Path]) -> None:
    """Invariant: memory and disk stay bounded; no code from a record runs; nothing hangs.

    A killed writer's temp file older than the bound is removed, a young one (a
    write in progress) is left alone, and other dot-named leftovers, a FIFO among
    them, are quarantined without being opened.
    """
    ex, _ = blocked
    new = ex.batch_dir / protocol.NEW
    job = protocol.job_name("pyb", ex.batch_id, 5)
    dead = new / f".{protocol.record_file_name(job, 'r1')}.0123456789ab.tmp"
    dead.write_bytes(b"\0" * 1_000_000)
    young = new / f".{protocol.record_file_name(job, 'r2')}.ba9876543210.tmp"
    young.write_bytes(b"partial")
    hidden = new / ".hidden"
    hidden.write_bytes(b"who knows")
    fifo = new / ".fifo.tmp"
    os.mkfifo(fifo)
    old = time.time() - 2 * 3600
    for path in (dead, hidden, fifo):
        os.utime(path, (old, old), follow_symlinks=False)
    _wait_for("the dead files to go", lambda: sorted(os.listdir(new)) == [young.name], 10)
    quarantined = sorted(p.name.split("-", 1)[1] for p in (ex.batch_dir / "quarantine").iterdir())
    assert quarantined == [".fifo.tmp", ".fifo.tmp.why", ".hidden", ".hidden.why"]
    assert ex.submit(jobs.square, 4).done() is False  # the collector still takes work


SCRIPT = """
import json, sys
from boinc_executor import BoincExecutor
from tests import jobs

log, batch_dir, out = sys.argv[1:4]
if __name__ == "__main__":
    with BoincExecutor(max_workers=1, batch_dir=batch_dir) as ex:
        results = list(ex.map(jobs.log_and_square, [log] * 12, range(12), [0.1] * 12))
    with open(out, "w") as fh:
        json.dump(results, fh)
"""


def test_planted_non_files_under_pending_record_names_do_not_count(tmp_path: Path) -> None:
    """Invariant: each future resolves exactly once; nothing hangs; nothing from a plant runs.

    After a kill -9 of the master, a FIFO, a symlink and a directory are planted in
    new/ under the record names of jobs that had not finished. The re-run does not
    take them for those jobs' records: it runs the jobs again and gets their
    results, and the plants end in quarantine unopened.
    """
    script = tmp_path / "master.py"
    script.write_text(SCRIPT)
    log, batch_dir, out = tmp_path / "log", tmp_path / "batch", tmp_path / "out.json"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent))
    argv = [sys.executable, str(script), str(log), str(batch_dir), str(out)]
    first = subprocess.Popen(argv, env=env, start_new_session=True)
    _wait_for("three jobs to finish", lambda: log.exists() and len(log.read_text().split()) >= 3)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    journal = [json.loads(line) for line in (batch_dir / protocol.JOURNAL).read_text().split()]
    done = set(handled_records(batch_dir)) | {
        n.split(".")[0] for n in os.listdir(batch_dir / protocol.NEW)
    }
    pending = [e["job"] for e in journal if e["job"] not in done]
    assert len(pending) >= 3, "the kill came too late"
    new = batch_dir / protocol.NEW
    os.mkfifo(new / protocol.record_file_name(pending[0], "local-0"))
    os.symlink(tmp_path / "log", new / protocol.record_file_name(pending[1], "local-0"))
    (new / protocol.record_file_name(pending[2], "local-0")).mkdir()

    second = subprocess.run(argv, env=env, timeout=90, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert json.loads(out.read_text()) == [x * x for x in range(12)]
    ran = [int(x) for x in log.read_text().split()]
    for job in pending[:3]:
        assert int(job.rsplit("_", 1)[1]) in ran
    refused = [p.name for p in (batch_dir / protocol.QUARANTINE).iterdir()]
    assert len([n for n in refused if not n.endswith(".why")]) == 3
