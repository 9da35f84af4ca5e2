"""The replay fingerprint covers everything the master controls, and only that.

Unit tests build each kind of change in a fresh namespace; the end-to-end tests
run a script twice on one batch_dir, in new processes with different
``PYTHONHASHSEED`` values and containers built in a different order, then with
one input changed.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boinc_executor import fingerprint
from boinc_executor.batch import Checkpoint, JournalEntry
from boinc_executor.fingerprint import call_digest, function_digest, split_digest
from boinc_executor.replay import mismatch_message

REPO_ROOT = Path(__file__).resolve().parents[1]


def _define(source: str, **env: Any) -> Any:
    namespace: dict[str, Any] = {"__name__": "__main__", **env}
    exec(compile(source, "<job>", "exec"), namespace)
    return namespace["job"]


GLOBAL = "def job(x):\n    return x * SCALE\n"
CLOSURE = "def make(k):\n    def job(x):\n        return x * k\n    return job\njob = make(K)\n"
DEFAULT = "def job(x, k=K):\n    return x * k\n"
KWDEFAULT = "def job(x, *, k=K):\n    return x * k\n"
NESTED = "def helper(x):\n    return x * K\ndef job(x):\n    return helper(x)\n"
INNER = "def job(x):\n    def inner(y):\n        return y * K\n    return inner(x)\n"


@pytest.mark.parametrize(
    "source",
    [GLOBAL, CLOSURE, DEFAULT, KWDEFAULT, NESTED, INNER],
    ids=["global", "closure", "default", "kwdefault", "called-function", "inner-function"],
)
def test_each_captured_value_is_covered(source: str) -> None:
    same = function_digest(_define(source, SCALE=2, K=2))
    assert function_digest(_define(source, SCALE=2, K=2)) == same
    assert function_digest(_define(source, SCALE=3, K=3)) != same


def test_code_change_is_covered() -> None:
    assert function_digest(_define(GLOBAL, SCALE=2)) != function_digest(
        _define("def job(x):\n    return x + SCALE\n", SCALE=2)
    )


class Scaler:
    def __init__(self, k: int) -> None:
        self.k = k

    def run(self, x: int) -> int:
        return x * self.k


def test_partial_and_bound_method_are_covered() -> None:
    base = _define(DEFAULT, K=1)
    assert function_digest(functools.partial(base, k=2)) == function_digest(
        functools.partial(base, k=2)
    )
    assert function_digest(functools.partial(base, k=2)) != function_digest(
        functools.partial(base, k=3)
    )
    assert function_digest(functools.partial(base, 1)) != function_digest(
        functools.partial(base, 2)
    )
    other = _define("def job(x, k=K):\n    return x + k\n", K=1)  # the partial's function
    assert function_digest(functools.partial(base, k=2)) != function_digest(
        functools.partial(other, k=2)
    )
    assert function_digest(Scaler(2).run) == function_digest(Scaler(2).run)
    assert function_digest(Scaler(2).run) != function_digest(Scaler(3).run)


def test_arguments_are_covered_and_order_of_dicts_and_sets_is_not() -> None:
    fn = function_digest(_define(GLOBAL, SCALE=2))
    one, plain = call_digest(fn, [((1, {"a": 1, "b": {2, 3}}), {"k": [1]})])
    assert plain
    assert call_digest(fn, [((1, {"b": {3, 2}, "a": 1}), {"k": [1]})])[0] == one
    assert call_digest(fn, [((2, {"a": 1, "b": {2, 3}}), {"k": [1]})])[0] != one
    assert call_digest(fn, [((1, {"a": 1, "b": {2, 3}}), {"k": [2]})])[0] != one
    assert split_digest(one)[0] == fn


PLAIN = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.complex_numbers(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda inner: st.lists(inner)
    | st.tuples(inner, inner)
    | st.dictionaries(st.integers() | st.text(), inner)
    | st.frozensets(st.integers() | st.text())
    | st.builds(bytearray, st.binary()),
    max_leaves=30,
)


@given(PLAIN)
@settings(max_examples=300, deadline=None)
def test_the_plain_data_fast_path_digests_as_the_general_traversal(value: Any) -> None:
    """Batches journaled by either path replay under the other: the bytes are the same."""
    calls = [((value,), {"k": value})]
    fast = fingerprint._plain(calls, 0)
    assert fast is not None
    assert fast == fingerprint._Digest().digest(calls)


def test_flat_arguments_digest_by_value_and_exact_type_only() -> None:
    """What map is mostly given takes the marshal path: identity, interning and
    construction do not count; every distinct value or type does."""

    def digest(*args: Any) -> str:
        return call_digest("f", [(args, {})])[0]

    built = "".join(["sp", "am"])  # not interned, unlike the literal
    assert fingerprint._flat([((built, [built, 1.5]), {})]) is not None
    assert digest(built, [built, 1.5]) == digest("spam", ["spam", 1.5])
    values = [1, 1.0, True, "1", b"1", (1,), [1], 0.0, -0.0, None, 10**30, 1j, [], ()]
    assert len({digest(v) for v in values}) == len(values)
    assert digest(1, 2) != digest((1, 2)) != digest([1, 2])
    many = [((i,), {}) for i in range(3)]
    assert call_digest("f", many) != call_digest("f", [*many[:2], ((3,), {})])


def test_keywords_and_nested_containers_take_the_plain_path() -> None:
    for calls in ([((1,), {"k": 2})], [(([[1]],), {})], [(({"a": 1},), {})]):
        assert fingerprint._flat(calls) is None
        expected = hashlib.sha256(fingerprint._Digest().digest(calls)).hexdigest()
        assert call_digest("f", calls) == (f"f:{expected}", True)


def test_anything_but_plain_data_takes_the_general_traversal() -> None:
    assert not call_digest("f", [((Scaler(2),), {})])[1]
    deep: list[Any] = [1]
    for _ in range(100):
        deep = [deep]
    assert call_digest("f", [((deep,), {})]) == (
        f"f:{hashlib.sha256(fingerprint._Digest().digest([((deep,), {})])).hexdigest()}",
        False,
    )


def test_unpicklable_module_state_does_not_stop_a_by_reference_function() -> None:
    import threading

    job = _define("def job(x):\n    with LOCK:\n        return x\n", LOCK=threading.Lock())
    job.__module__ = "tests.jobs"  # as if imported: cloudpickle ships it by name
    assert function_digest(job) == function_digest(job)


def test_cycles_and_shared_objects_are_deterministic() -> None:
    shared = [1, 2]
    cyclic: list[Any] = [shared, shared]
    cyclic.append(cyclic)
    again: list[Any] = [[1, 2], [1, 2]]
    again.append(again)
    assert call_digest("f", [((cyclic,), {})]) == call_digest("f", [((again,), {})])
    assert not call_digest("f", [((cyclic,), {})])[1]  # a cycle is not plain data


def test_mismatch_names_the_discard_that_fits_the_backend() -> None:
    fn = _define(GLOBAL, SCALE=2)
    old = JournalEntry("pyb_7_0", 0, 0, 1, call_digest(function_digest(fn), [((1,), {})])[0],
                       "p", "d")
    new = replace(old, digest=call_digest(function_digest(fn), [((2,), {})])[0])
    url = "https://project.example.org/p/"
    remote = mismatch_message(fn, old, new, Checkpoint(7, "remote", project_dir=url), Path("b"))
    assert "its arguments changed" in remote
    assert f"BoincExecutor.discard(7, server={url!r})" in remote
    boinc = mismatch_message(fn, old, new, Checkpoint(7, "boinc", project_dir="/p"), Path("b"))
    assert "BoincExecutor.discard(7, project_dir='/p')" in boinc
    local = mismatch_message(fn, old, new, Checkpoint(7, "local"), Path("b"))
    assert "BoincExecutor.discard(7)" in local and "name=" in local


SCRIPT = """
import json, sys
from boinc_executor import BoincExecutor

batch_dir, log, order, scale, offset = sys.argv[1:6]
SCALE = int(scale)

def work(log, item, opts):
    with open(log, "a") as fh:
        fh.write(f"{item}\\n")
    return [sorted(opts["tags"]), SCALE * item]

if __name__ == "__main__":
    tags = ["a", "b", "c", "d", "e", "f"]
    if order == "reversed":
        tags.reverse()
    opts = {t: t.upper() for t in tags}
    opts["tags"] = set(tags)
    start = int(offset)
    with BoincExecutor(max_workers=2, batch_dir=batch_dir) as ex:
        print(json.dumps(list(ex.map(work, [log] * 4, range(start, start + 4), [opts] * 4))))
"""


def test_unchanged_rerun_replays_in_new_processes_and_changes_are_refused(
    tmp_path: Path,
) -> None:
    script = tmp_path / "master.py"
    script.write_text(SCRIPT)
    batch_dir, log = tmp_path / "batch", tmp_path / "log"

    def run(seed: str, order: str, scale: str, offset: str) -> subprocess.CompletedProcess[str]:
        path = os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)])  # this checkout's code
        env = dict(os.environ, PYTHONPATH=path, PYTHONHASHSEED=seed)
        argv = [sys.executable, str(script), str(batch_dir), str(log), order, scale, offset]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)

    first = run("1", "forward", "2", "0")
    assert first.returncode == 0, first.stderr
    assert len(log.read_text().split()) == 4
    second = run("2", "reversed", "2", "0")
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    assert len(log.read_text().split()) == 4, "the unchanged re-run ran calls again"

    changed_global = run("3", "forward", "3", "0")
    assert changed_global.returncode != 0
    assert "BatchMismatchError" in changed_global.stderr
    assert "the function 'work' changed" in changed_global.stderr
    assert "call 0 (job " in changed_global.stderr
    assert "BoincExecutor.discard(" in changed_global.stderr and "name=" in changed_global.stderr

    changed_args = run("4", "forward", "2", "1")
    assert changed_args.returncode != 0
    assert "its arguments changed" in changed_args.stderr
    assert len(log.read_text().split()) == 4
