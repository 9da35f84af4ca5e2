"""One behaviour suite for every executor: what "drop-in for ProcessPoolExecutor" means.

Each test takes ``make_executor`` and runs the same assertions against
``ProcessPoolExecutor`` (the reference) and ``BoincExecutor`` on each backend.
Where the reference cannot do something the contract asks of us (lambdas; the
3.14 ``buffersize`` on older Pythons), the reference's case is an explicit
strict xfail, never a silent skip.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    ProcessPoolExecutor,
    TimeoutError,
    as_completed,
    wait,
)
from pathlib import Path

import pytest

from boinc_executor import BoincExecutor
from tests import jobs

MakeExecutor = Callable[..., Executor]

KINDS = ["process", "local"]
if "boinc_executor_factory" in dir(sys.modules.get("tests.conftest")):
    from boinc_executor.backends.boinc import BoincBackend

    KINDS.append("boinc")
if "remote_executor_factory" in dir(sys.modules.get("tests.conftest")):
    KINDS.append("remote")

_NO_BUFFERSIZE = sys.version_info < (3, 14)
_LAMBDA_XFAIL = pytest.mark.xfail(strict=True, reason="ProcessPoolExecutor cannot pickle lambdas")


@pytest.fixture(params=KINDS)
def make_executor(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeExecutor]:
    created: list[Executor] = []

    def make(max_workers: int = 2) -> Executor:
        ex: Executor
        if request.param == "process":
            ex = ProcessPoolExecutor(max_workers=max_workers)
        elif request.param == "local":
            ex = BoincExecutor(max_workers=max_workers, batch_dir=tmp_path / f"batch{len(created)}")
        else:
            factory = request.getfixturevalue(f"{request.param}_executor_factory")
            ex = factory(max_workers=max_workers)
        created.append(ex)
        return ex

    make.kind = request.param  # type: ignore[attr-defined]
    # Calls per job when map() is given no chunksize: BOINC packs several into a work unit.
    make.chunksize = (  # type: ignore[attr-defined]
        BoincBackend.default_chunksize if request.param in ("boinc", "remote") else 1
    )
    yield make
    for ex in created:
        ex.shutdown(wait=True, cancel_futures=True)


def test_submit_returns_result(make_executor: MakeExecutor) -> None:
    with make_executor() as ex:
        assert ex.submit(jobs.add, 2, b=5).result(timeout=60) == 7


@pytest.mark.parametrize("chunksize", [1, 7])
def test_map_is_ordered(make_executor: MakeExecutor, chunksize: int) -> None:
    n = 12 if chunksize == 1 else 40  # 12 jobs, or 6 chunks (the last one short)
    with make_executor() as ex:
        assert list(ex.map(jobs.square, range(n), chunksize=chunksize)) == [
            x * x for x in range(n)
        ]


def test_map_zips_iterables_to_the_shortest(make_executor: MakeExecutor) -> None:
    with make_executor() as ex:
        assert list(ex.map(jobs.add, [1, 2, 3], [10, 20])) == [11, 22]


def test_map_of_nothing(make_executor: MakeExecutor) -> None:
    with make_executor() as ex:
        assert list(ex.map(jobs.square, [])) == []


def test_map_timeout(make_executor: MakeExecutor) -> None:
    with make_executor() as ex:
        results = ex.map(jobs.sleep_and_return, [0.0, 1.5], [1, 2], timeout=0.5)
        with pytest.raises(TimeoutError):
            list(results)


def test_map_raises_at_the_failing_item(make_executor: MakeExecutor) -> None:
    with make_executor() as ex:
        results = ex.map(jobs.raise_value_error, ["boom"])
        with pytest.raises(ValueError, match="boom"):
            next(results)


def test_buffersize_bounds_work_in_flight(
    make_executor: MakeExecutor, request: pytest.FixtureRequest
) -> None:
    if make_executor.kind == "process" and _NO_BUFFERSIZE:  # type: ignore[attr-defined]
        request.applymarker(
            pytest.mark.xfail(strict=True, reason="buffersize is new in Python 3.14")
        )
    pulled = 0

    def numbers() -> Iterator[int]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i

    with make_executor() as ex:
        results = ex.map(jobs.square, numbers(), buffersize=4)
        taken = list(itertools.islice(results, 20))
        assert taken == [x * x for x in range(20)]
        # buffersize counts jobs: 20 results consumed, 4 jobs in flight, 1 being pulled.
        chunk = make_executor.chunksize  # type: ignore[attr-defined]
        assert pulled <= chunk * (-(-20 // chunk) + 4 + 1)
        results.close()


def test_builtin_exception_keeps_type_and_remote_traceback(make_executor: MakeExecutor) -> None:
    with make_executor() as ex:
        future = ex.submit(jobs.raise_key_error, "missing")
        with pytest.raises(KeyError) as info:
            future.result(timeout=60)
        assert info.value.args == ("missing",)
        assert "raise_key_error" in str(info.value.__cause__)


def test_cancel_queued_future(make_executor: MakeExecutor, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with make_executor(max_workers=1) as ex:
        blocker = ex.submit(jobs.wait_for_file, str(gate), "done")
        queued = [ex.submit(jobs.square, i) for i in range(6)]
        deadline = time.monotonic() + 30
        while not blocker.running() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert blocker.running()
        assert not blocker.cancel()
        assert queued[-1].cancel()
        assert queued[-1].cancelled()
        gate.touch()
        _, not_done = wait([*queued, blocker], timeout=60)
        assert not not_done
        assert blocker.result() == "done"
        assert [f.result() for f in queued[:-1]] == [i * i for i in range(5)]


def test_shutdown_cancel_futures(make_executor: MakeExecutor, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    ex = make_executor(max_workers=1)
    blocker = ex.submit(jobs.wait_for_file, str(gate), "done")
    rest = [ex.submit(jobs.square, i) for i in range(10)]
    deadline = time.monotonic() + 30
    while not blocker.running() and time.monotonic() < deadline:
        time.sleep(0.01)
    gate.touch()
    ex.shutdown(wait=True, cancel_futures=True)
    assert blocker.result() == "done"
    assert all(f.done() for f in rest)
    assert any(f.cancelled() for f in rest)
    for f in rest:
        if not f.cancelled():
            assert f.result() is not None


def test_submit_after_shutdown_is_refused(make_executor: MakeExecutor) -> None:
    ex = make_executor()
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.submit(jobs.square, 1)


def test_as_completed_and_wait(make_executor: MakeExecutor) -> None:
    with make_executor() as ex:
        futures = [ex.submit(jobs.sleep_and_return, d, d) for d in (0.6, 0.0, 0.3)]
        done, _ = wait(futures, timeout=60, return_when=FIRST_COMPLETED)
        assert done
        assert sorted(f.result() for f in as_completed(futures, timeout=60)) == [0.0, 0.3, 0.6]


def test_lambdas_and_closures(make_executor: MakeExecutor, request: pytest.FixtureRequest) -> None:
    if make_executor.kind == "process":  # type: ignore[attr-defined]
        request.applymarker(_LAMBDA_XFAIL)
    offset = 10

    def closure(x: int) -> int:
        return x + offset

    with make_executor() as ex:
        assert ex.submit(lambda: 42).result(timeout=60) == 42
        assert list(ex.map(closure, [1, 2])) == [11, 12]


def test_large_arguments_and_results(
    make_executor: MakeExecutor, request: pytest.FixtureRequest
) -> None:
    if make_executor.kind == "remote":  # type: ignore[attr-defined]
        # job_file.php takes at most 2 MB per file (PHP upload_max_filesize, facts §10.1.10):
        # a 10 MB argument is refused with a SubmissionError that says so.
        from boinc_executor.errors import SubmissionError

        request.applymarker(pytest.mark.xfail(strict=True, raises=SubmissionError))
    payload = b"\x01" * 10_000_000
    with make_executor() as ex:
        assert ex.submit(jobs.length, payload).result(timeout=120) == 10_000_000
        assert ex.submit(jobs.make_bytes, 10_000_000).result(timeout=120) == b"x" * 10_000_000


def test_closing_map_iterator_cancels_pending(make_executor: MakeExecutor, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with make_executor(max_workers=1) as ex:
        results = ex.map(jobs.wait_for_file, [str(gate)] * 8, range(8))
        gate.touch()
        assert next(results) == 0
        results.close()
