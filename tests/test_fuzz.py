"""Bounded fuzzing of the record decoder and of the collector's handling of new/.

hypothesis drives both (tests/fuzzing.py says why hypothesis and not atheris). Both run
derandomized, with no example database and a fixed example count, so CI sees the same
inputs on every run and the whole module takes a few seconds. Inputs that once broke
something are kept in tests/corpus/ and replayed here as ordinary tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import pickletools
import resource
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boinc_executor import BoincExecutor, protocol
from boinc_executor.protocol import bounded
from tests import fuzzing, jobs

SEEDS = fuzzing.seed_records()
EDIT = st.tuples(st.integers(0, 4), st.floats(0, 1), st.integers(1, 64), st.integers(0, 255))
BOUNDED = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@settings(BOUNDED, max_examples=400)
@given(seed=st.sampled_from(SEEDS), edits=st.lists(EDIT, max_size=6), calls=st.integers(0, 3))
def test_mutated_records_decode_or_are_refused(seed: bytes, edits: Any, calls: int) -> None:
    """Invariants: no code from a record runs (only allow-listed types); the decoder never
    dies (only ProtocolError escapes); memory and CPU stay bounded (each input in well
    under a second); every error description rebuilds into an exception."""
    data = fuzzing.mutate(seed, edits)
    start = time.perf_counter()
    fuzzing.check_decoder_contract(data, calls)
    assert time.perf_counter() - start < 2


# Opcodes the C unpickler may never see, in any payload; and those it may see only
# in a payload of at most FAST_PATH_BYTES (hashing into a dict or set, decimal text).
_NEVER_ON_C = {"PUT", "LONG_BINPUT", "BINBYTES8", "BINUNICODE8", "BYTEARRAY8"}
_SMALL_ON_C = {"DICT", "SETITEM", "SETITEMS", "ADDITEMS", "FROZENSET"} | {
    "INT", "LONG", "FLOAT", "STRING", "UNICODE", "GET", "GLOBAL", "INST"
}  # fmt: skip


def _opcodes(data: bytes) -> set[str]:
    """The opcodes pickletools reads up to STOP (those before a malformed spot)."""
    names = set()
    with contextlib.suppress(ValueError):
        for op, _, _ in pickletools.genops(data):
            names.add(op.name)
    return names


@settings(BOUNDED, max_examples=400)
@given(seed=st.sampled_from(SEEDS), edits=st.lists(EDIT, max_size=6), pad=st.booleans())
def test_the_c_unpickler_sees_only_what_it_can_be_trusted_with(
    seed: bytes, edits: Any, pad: bool
) -> None:
    """Whatever the bytes, a payload that bounded.fast_path_ok passes to the C unpickler
    holds none of the opcodes that size its memo or allocate before reading, and, when
    large, none that hashes keys (a hash flood) or parses decimal text."""
    payload = fuzzing.mutate(seed.split(b"\n", 2)[2], edits)
    if pad:  # the same opcodes in a payload too large for the unscanned shortcut
        filler = (pickle.NONE + pickle.POP) * bounded.FAST_PATH_BYTES
        payload = payload[:2] + filler + payload[2:]
    if not bounded.fast_path_ok(payload):
        return
    seen = _opcodes(payload)
    assert not seen & _NEVER_ON_C
    if len(payload) > bounded.FAST_PATH_BYTES:
        assert not seen & _SMALL_ON_C


@pytest.mark.parametrize(
    "value",
    [list(range(0x70, 0x7000, 7)), [(True, -i) for i in range(1000)], "pr" * 5000, [1.5] * 900],
    ids=["ints holding p and r bytes", "a chunk of outcomes", "a long str", "floats"],
)
def test_honest_payloads_take_the_c_unpickler(value: Any) -> None:
    """Data bytes that merely equal an unsafe opcode no longer force the slow reader."""
    data = pickle.dumps(value, protocol=5)
    assert bounded._C_UNSAFE_BYTES.search(data) is not None or len(data) > bounded.FAST_PATH_BYTES
    assert bounded.fast_path_ok(data)


DECODER_CORPUS = sorted((fuzzing.CORPUS / "decoder").glob("*.bin"))


@pytest.mark.parametrize("path", DECODER_CORPUS, ids=[p.stem for p in DECODER_CORPUS])
def test_decoder_corpus(path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Replays of inputs that once broke the decoder (found by the fuzzer or by hand).

    Invariants: memory stays bounded (the master grows by far less than the gigabytes
    these once cost); the decoder only raises ProtocolError; nothing is printed by the
    interpreter (the C unpickler once reported a freed bytearray with live views).
    """
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for calls in (1, 0):
        fuzzing.check_decoder_contract(path.read_bytes(), calls)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024
    assert "Error" not in capfd.readouterr().err


# ------------------------------------------------------------------ new/ entries

_NAME_CHARS = st.sampled_from("abcxyz019._-~ é")
KINDS = ("file", "fifo", "symlink", "dir", "dotfile")


def _entry(batch_id: int) -> st.SearchStrategy[tuple[str, str]]:
    """(kind, name): random names, and names of records this batch or another could have.

    Regular files are never named as a record of one of this batch's jobs: such a file
    *is* that job's record (first come wins), which is not what these tests look at.
    """
    random_name = st.text(_NAME_CHARS, min_size=1, max_size=200).filter(
        lambda n: n not in (".", "..")
    )

    def record_name(batch: int) -> st.SearchStrategy[str]:
        return st.builds(
            lambda i, tag: protocol.record_file_name(f"pyb_{batch}_{i}", tag),
            st.integers(0, 5),
            st.sampled_from(["x", "local-0", "error", "planted"]),
        )

    return st.one_of(
        st.tuples(st.sampled_from(KINDS), random_name),
        st.tuples(st.sampled_from(KINDS), record_name(batch_id + 1000)),
        st.tuples(st.sampled_from(("fifo", "symlink", "dir", "dotfile")), record_name(batch_id)),
    )


def _plant(new: Path, kind: str, name: str, secret: Path) -> Path | None:
    """Create one entry in new/; returns its path, or None if the name is taken."""
    if kind == "dotfile":
        name = "." + name
    path = new / name
    if os.path.lexists(path):
        return None
    if kind in ("file", "dotfile"):
        path.write_bytes(b"\x00garbage" * 3)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        path.symlink_to(secret)
    else:
        path.mkdir()
        (path / "inside").write_text("x")
    return path


def _run_new_dir_case(
    ex: BoincExecutor, entries: list[tuple[str, str]], secret: Path, value: int
) -> None:
    """Plant ``entries``, run a real job, and check the collector handled both."""
    new = ex.batch_dir / protocol.NEW
    planted = [p for kind, name in entries if (p := _plant(new, kind, name, secret))]
    assert ex.submit(jobs.square, value).result(timeout=30) == value * value
    deadline = time.monotonic() + 10
    visible = [p for p in planted if not p.name.startswith(".")]
    while any(os.path.lexists(p) for p in visible) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [p.name for p in visible if os.path.lexists(p)]
    assert not left, f"never handled: {left}"
    assert secret.read_text() == "secret"
    names = {t.name for t in threading.enumerate()}
    for role in ("collector", "decoder"):
        assert f"boinc-executor-{role}-{ex.batch_id}" in names, f"the {role} thread died"


@pytest.fixture
def executor(tmp_path: Path) -> Any:
    secret = tmp_path / "secret"
    secret.write_text("secret")
    ex = BoincExecutor(max_workers=1, batch_dir=tmp_path / "batch")
    yield ex, secret
    ex.shutdown(wait=True)


def test_random_entries_in_new_never_stop_collection(executor: Any) -> None:
    """Invariants: the collector and decoder threads never die or spin; nothing hangs;
    no code from a record runs; each real job still gets its own result. Random names
    (dot-names, unicode, up to 200 characters) and file types (FIFO, symlink, directory,
    garbage files) are planted in new/ while a job runs."""
    ex, secret = executor
    counter = iter(range(10**6))

    @settings(BOUNDED, max_examples=12)
    @given(entries=st.lists(_entry(ex.batch_id), min_size=1, max_size=6))
    def case(entries: list[tuple[str, str]]) -> None:
        _run_new_dir_case(ex, entries, secret, next(counter))

    case()


NEW_DIR_CORPUS = sorted((fuzzing.CORPUS / "new_dir").glob("*.json"))


def _corpus_case(path: Path) -> Any:
    spec = json.loads(path.read_text())
    marks = [pytest.mark.xfail(reason=spec["xfail"], strict=False)] if "xfail" in spec else []
    return pytest.param(spec, id=path.stem, marks=marks)


@pytest.mark.parametrize("spec", [_corpus_case(p) for p in NEW_DIR_CORPUS])
def test_new_dir_corpus(executor: Any, spec: dict[str, Any]) -> None:
    """Replays of new/ layouts that once stopped collection. Invariants as in
    test_random_entries_in_new_never_stop_collection; ``{batch}`` in a name stands for
    the executor's batch ID."""
    ex, secret = executor
    entries = [(kind, name.format(batch=ex.batch_id)) for kind, name in spec["entries"]]
    _run_new_dir_case(ex, entries, secret, 3)
