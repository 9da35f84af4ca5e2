"""The script's own classes and exceptions come back as themselves; task output is visible.

Round trips run for real: a script run as ``python script.py`` (classes in ``__main__``),
a function module (``tests.script_types``) on the embedded backend, and the runner from
``pyboinc.zip`` under ``python -S``. Hostile records are crafted by hand and must run
nothing: the classes they name leave a marker file whenever any of their code runs.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from boinc_executor import (
    BoincExecutor,
    RemoteError,
    TaskOutput,
    UnsafeResultError,
    protocol,
    task_output,
)
from boinc_executor.errors import RemoteTraceback, rebuild_exception
from boinc_executor.protocol.decoding import TypePolicy
from boinc_executor.protocol.taskoutput import fit_outputs
from tests import jobs
from tests import script_types as st
from tests.test_launcher import lay_out, run

REPO_ROOT = Path(__file__).resolve().parents[1]

MAIN_SCRIPT = '''\
import collections, dataclasses, enum, sys, typing
from boinc_executor import BoincExecutor, RemoteError, UnsafeResultError
from boinc_executor.errors import RemoteTraceback
from mypkg.models import Measurement


@dataclasses.dataclass(frozen=True)
class Point:
    x: float
    y: float


class Color(enum.Enum):
    RED = 1
    BLUE = 2


Pair = collections.namedtuple("Pair", "a b")


class Typed(typing.NamedTuple):
    a: int


class Plain:
    def __init__(self, v):
        self.v = v


class Slotted:
    __slots__ = ("a",)


class MyError(Exception):
    def __init__(self, msg, code):
        super().__init__(msg, code)
        self.code = code


class Opaque(Exception):
    def __reduce__(self):
        return (Opaque, self.args)


def work(n):
    print(f"task-out {n}")
    print(f"task-err {n}", file=sys.stderr)
    s = Slotted()
    s.a = n
    return {"p": [Point(n, 2.0)], "c": (Color.BLUE,), "pair": Pair(Typed(n), Plain([n])),
            "s": s, "m": Measurement(n), "cls": Point, "e": MyError("kept", n)}


def fail(code):
    raise MyError("boom", code)


def opaque():
    raise Opaque("x")


def measure(n):
    return Measurement(n)


if __name__ == "__main__":
    # The user guide's own example.
    with BoincExecutor(max_workers=1, batch_dir=sys.argv[1],
                       trusted_types=[Point, "mypkg.models.Measurement"]) as ex:
        fut = ex.submit(work, 3)
        r = fut.result(timeout=120)
        assert type(r["p"][0]) is Point and r["p"][0] == Point(3, 2.0), r
        assert r["c"] == (Color.BLUE,) and r["c"][0] is Color.BLUE
        assert type(r["pair"]) is Pair and type(r["pair"].a) is Typed and r["pair"].a == Typed(3)
        assert type(r["pair"].b) is Plain and r["pair"].b.v == [3]
        assert type(r["s"]) is Slotted and r["s"].a == 3
        assert type(r["m"]) is Measurement and r["m"] == Measurement(3)
        assert r["cls"] is Point
        assert type(r["e"]) is MyError and r["e"].code == 3 and r["e"].args == ("kept", 3)
        try:
            ex.submit(fail, 9).result(timeout=120)
        except MyError as exc:
            assert exc.code == 9 and exc.args == ("boom", 9)
            assert isinstance(exc.__cause__, RemoteTraceback), exc.__cause__
            assert "in fail" in str(exc.__cause__) and "MyError: ('boom', 9)" in str(exc.__cause__)
        else:
            raise AssertionError("MyError was not raised")
        try:
            ex.submit(opaque).result(timeout=120)
        except RemoteError as exc:
            assert exc.type_name == "__main__.Opaque", exc.type_name
        out = ex.output(fut)
        assert (out.stdout, out.stderr) == ("task-out 3\\n", "task-err 3\\n"), out
        assert [v["p"][0].x for v in ex.map(work, range(4, 7))] == [4, 5, 6]
    with BoincExecutor(max_workers=1, batch_dir=sys.argv[2]) as ex:
        try:
            ex.submit(measure, 1).result(timeout=120)
        except UnsafeResultError as exc:
            assert "mypkg.models.Measurement" in str(exc) and "trusted_types" in str(exc), exc
        else:
            raise AssertionError("an untrusted type was accepted")
    print("SCRIPT-OK")
'''


def test_main_script_classes_exceptions_and_output(tmp_path: Path) -> None:
    """``python script.py``: __main__ classes come back as themselves; output reaches our stdio."""
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg/__init__.py").write_text("")
    (tmp_path / "mypkg/models.py").write_text(
        "import dataclasses\n\n\n@dataclasses.dataclass\nclass Measurement:\n    value: int\n"
    )
    script = tmp_path / "script.py"
    script.write_text(MAIN_SCRIPT)
    env = dict(os.environ, BOINC_EXECUTOR_HOME=str(tmp_path / "home"))
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "b1"), str(tmp_path / "b2")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "SCRIPT-OK" in done.stdout
    # What the tasks print reaches the master's own streams, each to its own.
    for n in (3, 4, 5, 6):
        assert f"task-out {n}" in done.stdout and f"task-out {n}" not in done.stderr
        assert f"task-err {n}" in done.stderr and f"task-err {n}" not in done.stdout


def test_function_module_classes_come_back_in_containers(tmp_path: Path) -> None:
    with BoincExecutor(max_workers=1, batch_dir=tmp_path / "b") as ex:
        value = ex.submit(st.every_kind, 4).result(timeout=60)
    assert value["point"] == st.Point(4, -4) and type(value["point"]) is st.Point
    assert value["frozen"] == st.Frozen("f", ("a", "b"))
    assert value["enums"] == [st.Color.RED, st.Color.GREEN, st.Perm.READ | st.Perm.WRITE]
    assert value["enums"][0] is st.Color.RED
    pair, typed = value["tuples"]
    assert type(pair) is st.Pair and pair == st.Pair(1, st.Point(2))
    assert type(typed) is st.Typed and typed == st.Typed(3)
    plain = value["plain"]
    assert type(plain) is st.Plain and plain.me is plain
    assert plain.value == {"inner": {st.Color.RED}}
    slotted = value["slotted"]
    assert type(slotted) is st.Slotted and slotted.a == [4] and slotted.hidden() == "secret"
    error = value["error"]
    assert type(error) is st.AppError and error.args == ("value", 7) and error.code == 7
    assert value["class"] is st.Point


def test_custom_exceptions_are_raised_as_themselves(tmp_path: Path) -> None:
    with BoincExecutor(max_workers=1, batch_dir=tmp_path / "b") as ex:
        with pytest.raises(st.AppError) as info:
            ex.submit(st.raise_app_error, 5).result(timeout=60)
        assert info.value.code == 5 and str(info.value) == "('bad input', 5)"
        cause = info.value.__cause__
        assert isinstance(cause, RemoteTraceback) and "raise_app_error" in str(cause)
        # A class with its own __reduce__ is not rebuilt without explicit trust.
        with pytest.raises(RemoteError) as remote:
            ex.submit(st.raise_reducing_error).result(timeout=60)
        assert remote.value.type_name == "tests.script_types.ReducingError"
        # map raises the same way at the failing item.
        with pytest.raises(st.AppError):
            list(ex.map(st.raise_app_error, [1, 2], chunksize=2))


def test_own_reduce_or_setstate_needs_explicit_trust(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "ran"
    monkeypatch.setattr(st, "MARKER", str(marker))
    with BoincExecutor(max_workers=1, batch_dir=tmp_path / "a") as ex:
        for fn, name in ((st.return_reducing, "Reducing"), (st.return_stateful, "Stateful")):
            refused = rf"tests\.script_types\.{name}.*trusted_types"
            with pytest.raises(UnsafeResultError, match=refused):
                ex.submit(fn).result(timeout=60)
    assert not marker.exists(), marker.read_text()  # refused unbuilt: none of their code ran
    trusted = [st.Reducing, st.Stateful]
    with BoincExecutor(max_workers=1, batch_dir=tmp_path / "b", trusted_types=trusted) as ex:
        assert ex.submit(st.return_reducing).result(timeout=60).value == 1
        stateful = ex.submit(st.return_stateful).result(timeout=60)
        assert type(stateful) is st.Stateful and stateful.value == 2
    assert "Stateful.__setstate__" in marker.read_text()  # explicit trust: pickle's own protocol


def test_output_api_per_call_and_bounded(tmp_path: Path) -> None:
    with BoincExecutor(max_workers=1, batch_dir=tmp_path / "b") as ex:
        first = ex.submit(st.chatty, 1)
        big = ex.submit(st.chatty, 2, protocol.OUTPUT_CHARS + 1000)
        flag = tmp_path / "flag"
        waiting = ex.submit(jobs.wait_for_file, str(flag))
        queued = [ex.submit(st.chatty, n) for n in range(3, 9)]  # behind `waiting`
        with pytest.raises(ValueError, match="not done"):
            ex.output(waiting)
        # While the call has no record yet, the batch directory says so with None.
        assert ex.flush(timeout=60)
        assert task_output(ex.batch_dir, 2) is None
        assert queued[-1].cancel()  # one worker: the last cannot have been dealt to it
        with pytest.raises(ValueError, match="cancelled"):
            ex.output(queued[-1])
        with BoincExecutor(max_workers=1, batch_dir=tmp_path / "other") as other:
            theirs = other.submit(st.chatty, 4)
            assert theirs.result(timeout=60) == 4
            with pytest.raises(ValueError, match="another executor"):
                ex.output(theirs)
        flag.write_text("")
        waiting.result(timeout=60)
        assert first.result(timeout=60) == 1
        assert ex.output(first) == TaskOutput("out 1\n", "err 1\n")
        big.result(timeout=60)
        out = ex.output(big)
        assert len(out.stdout) == protocol.OUTPUT_CHARS and out.stdout_truncated
        assert out.stdout.endswith("x" * 100) and out.stderr == "err 2\n"
        assert not out.stderr_truncated
        assert list(ex.map(st.chatty, [10, 11, 12], chunksize=3)) == [10, 11, 12]
        batch_dir = ex.batch_dir
    # Without an executor, by call index (calls 0-8 were the submits).
    assert task_output(batch_dir, 0) == TaskOutput("out 1\n", "err 1\n")
    assert task_output(batch_dir, 3) == TaskOutput("out 3\n", "err 3\n")
    assert [task_output(batch_dir, c) for c in (9, 10, 11)] == [
        TaskOutput(f"out {n}\n", f"err {n}\n") for n in (10, 11, 12)
    ]
    with pytest.raises(ValueError, match="not in the journal"):
        task_output(batch_dir, 99)


def test_runner_from_the_zip_sends_script_classes_by_reference(tmp_path: Path) -> None:
    """Under ``python -S`` from pyboinc.zip (classes shipped by value in the program file)."""

    @dataclasses.dataclass
    class Local:
        x: int

    class LocalError(Exception):
        pass

    def fn(x: int) -> list[Local]:
        print(f"zip out {x}")
        if x < 0:
            raise LocalError("negative")
        return [Local(x)]

    slot, launcher = lay_out(tmp_path, fn, [((1,), {}), ((-1,), {})], soft_links=False)
    done = run(slot, launcher)
    assert done.returncode == 0, done.stderr
    policy = TypePolicy()
    protocol.encode_program(fn, policy)  # the master learns the classes the program carries
    record = protocol.decode_result((slot / protocol.OPEN_RESULT).read_bytes(), policy,
                                    expect_job="pyb_3_1", expect_calls=2)
    (ok, value), (failed, info) = record.outcomes
    assert ok and value == [Local(1)] and type(value[0]) is Local
    assert not failed and type(rebuild_exception(info)) is LocalError
    assert record.outputs == [TaskOutput("zip out 1\n"), TaskOutput("zip out -1\n")]
    # The runner's own payload never names cloudpickle: nothing travels by value.
    _, payload = protocol.decode_frame(
        (slot / protocol.OPEN_RESULT).read_bytes(), protocol.KIND_RESULT
    )
    assert b"cloudpickle" not in payload
    with pytest.raises(UnsafeResultError, match="Local"):
        protocol.decode_result((slot / protocol.OPEN_RESULT).read_bytes(), TypePolicy(),
                               expect_job="pyb_3_1", expect_calls=2)


def test_job_output_budget_is_shared_among_its_calls() -> None:
    texts = ["a" * 10, "b" * 600_000, "c" * 900_000]
    fitted = fit_outputs(texts, 1_000_000)
    assert fitted[0] == texts[0]  # a call that printed little keeps everything
    assert len(fitted[1]) == len(fitted[2]) == 499_995
    assert fitted[2] == texts[2][-499_995:]  # the rest keep their last characters
    assert fit_outputs(texts[:1], 5) == ["aaaaa"]
