"""Failed calls are retried under new job names; every other result is kept."""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import wait
from pathlib import Path

import pytest

from boinc_executor import BoincExecutor, protocol
from boinc_executor.errors import BatchError, BatchNotFoundError
from tests import jobs

N = 6


def _attempts(log: Path) -> Counter[int]:
    return Counter(int(x) for x in log.read_text().split())


@pytest.mark.parametrize("default_dir", [False, True], ids=["batch_dir", "script-batch"])
def test_resume_retry_failed_reruns_exactly_the_failed_calls(
    tmp_path: Path, default_dir: bool
) -> None:
    marker, log = tmp_path / "ready", tmp_path / "log"
    kwargs = {} if default_dir else {"batch_dir": tmp_path / "batch"}
    with BoincExecutor(max_workers=2, **kwargs) as ex:  # type: ignore[arg-type]
        futures = [ex.submit(jobs.flaky, str(marker), str(log), x) for x in range(N)]
        wait(futures)
        batch_id, batch_dir = ex.batch_id, ex.batch_dir
    failed = [x for x, f in enumerate(futures) if f.exception() is not None]
    assert failed == [0, 3]
    assert batch_dir.is_dir(), "a batch with failed calls was removed"

    marker.touch()
    with BoincExecutor.resume(batch_id, max_workers=2, retry_failed=True) as ex:
        assert list(ex.results(timeout=60)) == [x * 10 for x in range(N)]
    assert _attempts(log) == Counter({0: 2, 3: 2, 1: 1, 2: 1, 4: 1, 5: 1})
    if default_dir:  # every call succeeded in the end: the batch is done and removed
        assert not batch_dir.exists()
        return
    journal = [json.loads(line) for line in (batch_dir / protocol.JOURNAL).read_text().splitlines()]
    retried = [e["job"] for e in journal if e["job"].startswith("pybr1_")]
    assert retried == [f"pybr1_{batch_id}_0", f"pybr1_{batch_id}_3"]

    # A later resume follows the retries: nothing runs, every result is there.
    with BoincExecutor.resume(batch_id, max_workers=2) as ex:
        assert list(ex.results(timeout=60)) == [x * 10 for x in range(N)]
    assert sum(_attempts(log).values()) == N + 2


def test_discard_removes_the_batch(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with BoincExecutor(max_workers=1, batch_dir=tmp_path / "batch") as ex:
        ex.submit(jobs.flaky, str(tmp_path / "never"), str(log), 3)
        batch_id = ex.batch_id
    assert BoincExecutor.discard(batch_id) == tmp_path / "batch"
    assert not (tmp_path / "batch").exists()


def test_read_only_state_home_is_no_error_with_an_explicit_batch_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A state home that cannot be created, even by root (the tests may run as root).
    home = tmp_path / "home"
    home.write_text("not a directory")
    monkeypatch.setenv("BOINC_EXECUTOR_HOME", str(home / "state"))
    with BoincExecutor(max_workers=1, batch_dir=tmp_path / "batch") as ex:
        assert ex.submit(jobs.square, 7).result(timeout=60) == 49
        batch_id = ex.batch_id
    with BoincExecutor(max_workers=1, batch_dir=tmp_path / "batch") as ex:
        assert ex.batch_id == batch_id  # the checkpoint, not the registry, ties it
    # Without a batch_dir there is nowhere to put the batch: the message says what to set.
    with pytest.raises(BatchError, match=f"cannot register a batch under {home}"):
        BoincExecutor(max_workers=1)
    with pytest.raises(BatchNotFoundError, match="which has no registry"):
        BoincExecutor.resume(12345)
