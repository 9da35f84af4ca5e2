"""The embedded backend's on-disk layout: input packs, slots rewritten in place, old batches."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from boinc_executor import BoincExecutor, protocol
from boinc_executor.backends.dealing import WorkerSlot
from boinc_executor.backends.local_slot import (
    MAX_LENT,
    MAX_SPARE_BYTES,
    MIN_SPARES,
    SPARE_DIR,
    Slot,
    lent_cap,
)
from boinc_executor.protocol.inputpack import PACK_NAME
from boinc_executor.protocol.pack import RecordPack, handled_records
from tests import jobs

ROOT = str(Path(__file__).resolve().parents[1])


def _journal(batch: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (batch / protocol.JOURNAL).read_text().splitlines()]


def _batch_id(batch: Path) -> int:
    return int(json.loads((batch / protocol.CHECKPOINT).read_text())["batch_id"])


def slot_files(batch_dir: str) -> tuple[int, ...]:
    """Job function: the inodes of the files in the only slot of a one-worker batch."""
    (slot,) = Path(batch_dir, "local", "slots").iterdir()
    names = (protocol.OPEN_PROGRAM, protocol.OPEN_DATA, "init_data.xml", protocol.FINISH_FILE)
    return tuple(os.stat(slot / name).st_ino for name in names)


def test_no_file_per_job_but_the_record(tmp_path: Path) -> None:
    """Invariant: in the steady state a job creates one file (its record in new/, then
    old/); its input is a range of one append-only pack, and the slot's files keep
    their inodes from job to job (rewritten in place, the program file stays linked)."""
    batch = tmp_path / "b"
    with BoincExecutor(max_workers=1, batch_dir=batch) as ex:
        inodes = list(ex.map(slot_files, [str(batch)] * 50))
    assert len(set(inodes)) == 1, "a slot file was re-created between jobs"
    local = batch / "local"
    assert sorted(p.name for p in (local / "download").iterdir()) == [
        _journal(batch)[0]["program"]
    ]  # one program file, no data files
    assert (local / PACK_NAME).is_file()
    assert list((local / "slots").iterdir()) == []  # removed at close
    lines = _journal(batch)
    assert {line["data"] for line in lines} == {PACK_NAME}
    ranges = sorted((int(line["data_offset"]), int(line["data_size"])) for line in lines)  # type: ignore[call-overload]
    assert ranges[0][0] == 0
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(ranges))
    assert (local / PACK_NAME).stat().st_size == ranges[-1][0] + ranges[-1][1]
    assert len(handled_records(batch)) == 50


def output_inode(batch_dir: str, pause: float) -> int:
    """Job function: the inode of the spare the worker will write this job's record over
    (a file it holds open in new/ or the spare directory), or 0 if it holds none."""
    import time

    time.sleep(pause)  # let the master hand a few records back as spares
    places = (os.path.join(batch_dir, protocol.NEW), os.path.join(batch_dir, "local", SPARE_DIR))
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(places):
            return os.fstat(int(fd)).st_ino
    return 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
def test_handled_records_come_back_as_output_files(tmp_path: Path) -> None:
    """Steady state: a job's record is written over a handled record's file where it
    lies, not into a new file; a planted hard link is never written through; no
    spare outlives the run."""
    batch = tmp_path / "b"
    with BoincExecutor(max_workers=1, batch_dir=batch) as ex:
        first = list(ex.map(output_inode, [str(batch)] * 6, [0.3] * 6))
        new = batch / protocol.NEW
        outside = tmp_path / "outside"
        outside.write_bytes(b"not a record")
        os.link(outside, new / "linked")  # the decoder refuses it: not a record name
        rest = list(ex.map(output_inode, [str(batch)] * 20, [0.05] * 20))
    assert first[0] == 0  # nothing to reuse yet: the worker creates its output
    # Spares appear once a sync made records durable, and a worker that found none
    # looks again only after a few jobs: so only some of the 26 outputs are reused.
    assert sum(1 for ino in first + rest if ino) >= 5, "no record file came back for reuse"
    assert outside.read_bytes() == b"not a record"
    assert not (batch / "local" / "spare").exists()
    assert len(handled_records(batch)) == 26


def test_records_are_lent_back_to_the_worker_that_delivered_them(tmp_path: Path) -> None:
    """Each worker reuses its own records only (no two workers race for one file); a
    record of another master run, or one the master wrote, is not lent but deleted."""
    from boinc_executor.backends.local import LocalBackend
    from boinc_executor.backends.local_worker import record_tag, slot_of_tag

    backend = LocalBackend(max_workers=2)
    run = backend._run
    assert slot_of_tag(record_tag(f"{run}-1", 0)) == f"{run}-1"
    assert slot_of_tag("local-0abc-1-x") is None and slot_of_tag("error") is None
    names = [
        protocol.record_file_name("pyb_1_3", record_tag(f"{run}-1", 0)),  # no such worker yet
        protocol.record_file_name("pyb_1_4", record_tag("0abc-1", 0)),  # another run's
        protocol.record_file_name("pyb_1_5", "error"),
    ]
    assert sorted(backend.reuse_records(names)) == sorted(names)
    assert not any(backend.lends(name) for name in names)


def test_batch_in_the_older_format_stays_readable(tmp_path: Path) -> None:
    """Invariant: a batch directory written before input packs (one data file per job in
    local/download/, journal lines without offsets) re-runs: jobs with records replay,
    jobs without one run again from their data files."""
    batch = tmp_path / "b"
    with BoincExecutor(max_workers=2, batch_dir=batch) as ex:
        assert list(ex.map(jobs.square, range(10))) == [i * i for i in range(10)]
    # Rewrite the directory into the older layout.
    pack = (batch / "local" / PACK_NAME).read_bytes()
    old_lines = []
    for line in _journal(batch):
        start, size = int(line.pop("data_offset")), int(line.pop("data_size"))  # type: ignore[call-overload]
        line["data"] = protocol.data_file_name(str(line["job"]))
        (batch / "local" / "download" / str(line["data"])).write_bytes(pack[start : start + size])
        old_lines.append(json.dumps(line) + "\n")
    (batch / protocol.JOURNAL).write_text("".join(old_lines))
    (batch / "local" / PACK_NAME).unlink()
    rerun = {f"pyb_{_batch_id(batch)}_{i}" for i in (3, 7)}
    # ... records as files in old/ (as before the handled-records pack), none for `rerun`.
    (batch / protocol.OLD).mkdir()
    pack = RecordPack(str(batch / protocol.HANDLED_PACK), writable=False)
    for job in pack.index:
        if job not in rerun:
            entry, body = pack.read(job)
            (batch / protocol.OLD / entry.name).write_bytes(body)
    pack.close()
    (batch / protocol.HANDLED_PACK).unlink()
    log = tmp_path / "log"
    with BoincExecutor(max_workers=2, batch_dir=batch) as ex:
        assert list(ex.map(jobs.square, range(10))) == [i * i for i in range(10)]
        ex.submit(jobs.log_and_square, str(log), 11).result(timeout=60)
    assert _journal(batch)[-1]["data"] == PACK_NAME  # new jobs of an old batch are packed
    assert sorted(job for job in handled_records(batch) if job in rerun) == sorted(rerun)


MASTER = """
import sys
from boinc_executor import BoincExecutor
from tests import jobs

batch_dir, gate = sys.argv[1:3]
if __name__ == "__main__":
    ex = BoincExecutor(max_workers=1, batch_dir=batch_dir)
    futures = [ex.submit(jobs.wait_for_file, gate, i) for i in range(6)]
    assert ex.flush(timeout=60)
    print(ex.batch_id, flush=True)
    futures[0].result()
"""


def test_resume_reuses_the_pack(tmp_path: Path) -> None:
    """Invariant: after kill -9 of the master, resume hands the journaled jobs over from
    the pack as it is: nothing is appended, no journal line is added, every call returns."""
    batch, gate = tmp_path / "b", tmp_path / "gate"
    env = dict(os.environ, PYTHONPATH=ROOT)
    master = subprocess.Popen(
        [sys.executable, "-c", MASTER, str(batch), str(gate)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert master.stdout is not None
        batch_id = int(master.stdout.readline())
    finally:
        master.send_signal(signal.SIGKILL)
        master.wait()
        assert master.stdout is not None
        master.stdout.close()
    pack = batch / "local" / PACK_NAME
    size, lines = pack.stat().st_size, len(_journal(batch))
    assert lines == 6
    gate.touch()
    ex = BoincExecutor.resume(batch_id, max_workers=2)  # the kernel released the dead lock
    with ex:
        assert list(ex.results(timeout=60)) == list(range(6))
    assert pack.stat().st_size == size
    assert len(_journal(batch)) == lines
    shutil.rmtree(batch)


def _handled_records(new: Path, first: int, count: int, size: int = 100) -> list[str]:
    """``count`` records of ``size`` bytes in ``new/``, as the worker in slot s0 delivered them."""
    names = []
    for i in range(first, first + count):
        name = protocol.record_file_name(protocol.job_name("wt", 1, i), "local-s0-0")
        with open(new / name, "wb") as fh:
            fh.truncate(size)  # sparse: the size counts, not the disk
        names.append(name)
    return names


def test_a_busy_worker_keeps_twice_its_largest_lend_as_spares_and_the_master_agrees(
    tmp_path: Path,
) -> None:
    """Invariant: records lent in one go are all kept while jobs keep coming (a sync late
    enough to lend more than 256 at once must not cost a file deletion now and a file
    creation per job later), up to MAX_LENT; beyond the cap the oldest go, and the
    master's view of what is lent (which its scans leave alone) names exactly the rest."""
    assert [lent_cap(MIN_SPARES, 100), lent_cap(MIN_SPARES, 300), lent_cap(600, 100)] == [
        MIN_SPARES,
        600,
        600,
    ]
    assert lent_cap(MIN_SPARES, 10 * MAX_LENT) == MAX_LENT
    new = tmp_path / protocol.NEW
    new.mkdir()
    slot, view = Slot(str(tmp_path), "s0"), WorkerSlot("s0")
    for first, count in ((0, 300), (300, 400)):  # a cap of 600, then of 800
        names = _handled_records(new, first, count)
        slot.lend(names)
        view.lend(names)
    assert len(os.listdir(new)) == 700 == len(view.lent)
    fresh_slot, fresh_view = Slot(str(tmp_path), "s1"), WorkerSlot("s1")
    shutil.rmtree(new)
    new.mkdir()
    for first in (0, 100, 200):  # three lends of 100 stay within the 256 of a fresh worker
        names = _handled_records(new, first, 100)
        fresh_slot.lend(names)
        fresh_view.lend(names)
    kept = set(os.listdir(new))
    assert len(kept) == MIN_SPARES and kept == set(fresh_view.lent)
    oldest = protocol.record_file_name(protocol.job_name("wt", 1, 0), "local-s0-0")
    assert names[-1] in kept and oldest not in kept


def test_an_idle_worker_keeps_as_many_spares_as_it_was_lent_within_256_mib(
    tmp_path: Path,
) -> None:
    """Invariant: a worker that goes idle keeps the spares its next burst will need (as
    many as its busiest lend asked for, not a fixed 256, so a loop of maps does not
    re-create them at every map), but never more than 256 MiB of them on disk."""
    new = tmp_path / protocol.NEW
    new.mkdir()
    slot = Slot(str(tmp_path), "s0")
    slot.lend(_handled_records(new, 0, 400))  # small records: a cap of 800
    slot.stash_spares()
    stash = tmp_path / "local" / SPARE_DIR / "s0"
    assert len(os.listdir(stash)) == 400 and not os.listdir(new)
    large = _handled_records(new, 400, 300, size=MAX_SPARE_BYTES)
    slot.lend(large)
    slot.stash_spares()
    kept = set(os.listdir(stash))
    stashed_bytes = sum((stash / name).stat().st_size for name in kept)
    assert stashed_bytes <= MIN_SPARES * MAX_SPARE_BYTES < stashed_bytes + MAX_SPARE_BYTES
    assert not os.listdir(new)  # the rest was deleted


def _record(job: str, value: int) -> bytes:
    return protocol.encode_result(job, [(True, value)])


def test_a_record_is_written_over_a_lent_file_where_it_lies_and_renamed_once(
    tmp_path: Path,
) -> None:
    """Invariant: a lent record's file is reused in new/ itself (one rename per job, no
    file created); once the worker goes idle, the spare it holds open leaves new/ too."""
    new = tmp_path / protocol.NEW
    new.mkdir()
    slot = Slot(str(tmp_path), "s0")
    (lent,) = _handled_records(new, 0, 1, size=4096)
    slot.lend([lent])
    inode = (new / lent).stat().st_ino
    slot.take_spare()
    job = protocol.job_name("wt", 1, 7)
    name = protocol.record_file_name(job, "local-s0-0")
    slot.write_output(_record(job, 7))
    slot.deliver(name, _record(job, 7))
    assert os.listdir(new) == [name] and (new / name).stat().st_ino == inode
    assert (new / name).read_bytes() == _record(job, 7)  # the old, longer bytes are cut off
    assert not os.path.exists(slot.result)
    (second,) = _handled_records(new, 1, 1)
    slot.lend([second])
    slot.take_spare()  # held open for the next job ...
    slot.stash_spares()  # ... and moved out of new/ with the rest when the worker idles
    assert os.listdir(new) == [name]
    assert os.listdir(tmp_path / "local" / SPARE_DIR / "s0") == [second]


def test_a_spare_deleted_under_the_record_costs_a_new_file_not_the_record(
    tmp_path: Path,
) -> None:
    """Regression: the master's scan may delete a lent name once it has fallen out of its
    count of what is lent; the record, still in hand, is then delivered from a new file."""
    new = tmp_path / protocol.NEW
    new.mkdir()
    slot = Slot(str(tmp_path), "s0")
    (lent,) = _handled_records(new, 0, 1)
    slot.lend([lent])
    slot.take_spare()
    job = protocol.job_name("wt", 1, 8)
    name = protocol.record_file_name(job, "local-s0-0")
    slot.write_output(_record(job, 8))
    os.unlink(new / lent)  # the scan's deletion, under the open file
    slot.deliver(name, _record(job, 8))
    assert os.listdir(new) == [name]
    assert (new / name).read_bytes() == _record(job, 8)
    assert not os.path.exists(slot.result)


def test_a_record_that_cannot_be_delivered_leaves_nothing_behind(tmp_path: Path) -> None:
    """Invariant: a failed delivery (here: new/ is gone) removes what was written, so the
    next job's record never lands on a leftover."""
    new = tmp_path / protocol.NEW
    new.mkdir()
    slot = Slot(str(tmp_path), "s0")
    job = protocol.job_name("wt", 1, 9)
    slot.write_output(_record(job, 9))
    shutil.rmtree(new)
    try:
        slot.deliver(protocol.record_file_name(job, "local-s0-0"), _record(job, 9))
    except FileNotFoundError:
        pass
    else:
        raise AssertionError("delivering into a missing new/ succeeded")
    assert not os.path.exists(slot.result)


def test_planted_files_under_lent_names_are_never_written_through(tmp_path: Path) -> None:
    """Hostile case: a directory, a symlink and a second hard link put under lent names
    are not reused (the record goes to a new file); the links' targets are untouched."""
    new = tmp_path / protocol.NEW
    new.mkdir()
    outside = tmp_path / "outside"
    outside.write_bytes(b"secret")
    names = [
        protocol.record_file_name(protocol.job_name("wt", 1, i), "local-s0-0") for i in range(3)
    ]
    (new / names[0]).mkdir()
    (new / names[1]).symlink_to(outside)
    os.link(outside, new / names[2])
    slot = Slot(str(tmp_path), "s0")
    slot.lend(names)
    slot.take_spare()
    job = protocol.job_name("wt", 1, 5)
    name = protocol.record_file_name(job, "local-s0-0")
    slot.write_output(_record(job, 5))
    slot.deliver(name, _record(job, 5))
    assert outside.read_bytes() == b"secret" and outside.stat().st_nlink == 1
    assert sorted(os.listdir(new)) == sorted([names[0], name])  # the directory: for the scan
    assert (new / name).read_bytes() == _record(job, 5)
