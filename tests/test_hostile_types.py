"""Hostile class references, crafted by hand: they name classes outside the trusted set,
or trusted classes with state that would run their code, and nothing of theirs runs.

``tests.script_types.Trap`` and ``Reducing`` append to a marker file whenever any of
their code runs (``__init__``, ``__setattr__``, a descriptor's ``__set__``, ``append``,
``__setitem__``, ``__reduce__``'s constructor); every test checks the file stays absent.
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from boinc_executor import RemoteError, ResultDecodeError, UnsafeResultError, protocol
from boinc_executor.errors import rebuild_exception
from boinc_executor.protocol import classref
from boinc_executor.protocol.decoding import TypePolicy, safe_loads
from tests import script_types as st

MODULE = "tests.script_types"


class Forge:
    """Pickles as whatever reduce tuple it is given: how a hostile volunteer writes opcodes."""

    def __init__(self, *reduce: Any) -> None:
        self.reduce = reduce

    def __reduce__(self) -> tuple[Any, ...]:
        return self.reduce


def ref(kind: str, qualname: str, data: Any = None, module: str = MODULE, *more: Any) -> Forge:
    return Forge(classref.classref_new, (kind, module, qualname, data), *more)


def filled(kind: str, qualname: str, state: Any, data: Any = None) -> Forge:
    return ref(kind, qualname, data, MODULE, state, None, None, classref.classref_fill)


@pytest.fixture
def marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "ran"
    monkeypatch.setattr(st, "MARKER", str(path))
    yield path
    assert not path.exists(), f"code of a hostile record ran: {path.read_text()}"


@pytest.fixture
def policy() -> TypePolicy:
    shipped = TypePolicy()
    shipped.ship(MODULE)  # as when a function of tests.script_types is pickled
    return shipped


def load(value: Any, policy: TypePolicy) -> Any:
    return safe_loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), policy)


def test_honest_reference_to_a_trusted_class_is_built(policy: TypePolicy, marker: Path) -> None:
    point = load([filled("object", "Point", ({"x": 1, "y": 2}, None))], policy)[0]
    assert point == st.Point(1, 2) and type(point) is st.Point


def test_class_outside_the_trusted_set_is_refused(policy: TypePolicy) -> None:
    with pytest.raises(UnsafeResultError, match=r"subprocess\.Popen.*trusted_types"):
        load(ref("object", "Popen", None, "subprocess"), policy)
    with pytest.raises(UnsafeResultError, match=r"os\.system"):
        load(ref("class", "system", None, "os"), policy)
    # Without ship(), even the function module's classes are not trusted.
    with pytest.raises(UnsafeResultError, match=r"tests\.script_types\.Point"):
        load(filled("object", "Point", ({"x": 1}, None)), TypePolicy())


def test_reference_never_imports_a_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: TypePolicy
) -> None:
    (tmp_path / "evilmod.py").write_text(
        f"open({str(tmp_path / 'imported')!r}, 'w').close()\nclass Thing:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    policy.ship("evilmod")  # even a shipped module name is only looked up, never imported
    with pytest.raises(UnsafeResultError, match=r"evilmod\.Thing"):
        load(ref("object", "Thing", None, "evilmod"), policy)
    assert "evilmod" not in sys.modules and not (tmp_path / "imported").exists()


def test_hostile_state_runs_no_setattr_descriptor_or_init(
    policy: TypePolicy, marker: Path
) -> None:
    trap = load(filled("object", "Trap", ({"guarded": 5, "x": [1]}, None)), policy)
    assert type(trap) is st.Trap
    assert vars(trap) == {"guarded": 5, "x": [1]}  # plain assignment, descriptor untouched
    assert trap.guarded == "descriptor"


def test_state_for_a_name_that_is_no_slot_is_refused(policy: TypePolicy, marker: Path) -> None:
    with pytest.raises(UnsafeResultError, match="neither one of its slots"):
        load(filled("object", "Slotted", (None, {"hidden": 1})), policy)
    slotted = load(filled("object", "Slotted", (None, {"a": 1, "_Slotted__hidden": 2})), policy)
    assert (slotted.a, slotted.hidden()) == (1, 2)


@pytest.mark.parametrize(
    "forged",
    [
        # BUILD on the placeholder (pickle would call __setstate__ or setattr).
        ref("object", "Trap", None, MODULE, {"guarded": 1}),
        # APPENDS and SETITEMS on the placeholder (pickle would call append / __setitem__).
        ref("object", "Trap", None, MODULE, None, iter([1, 2])),
        ref("object", "Trap", None, MODULE, None, None, iter([("k", "v")])),
        # Filling something that is not a placeholder, or filling twice.
        Forge(classref.classref_fill, ([], ({"a": 1}, None))),
        [
            p := filled("object", "Trap", ({"a": 1}, None)),
            Forge(classref.classref_fill, (p, ({"b": 1}, None))),
        ],
        # Malformed references and state.
        ref("nonsense", "Trap"),
        filled("object", "Trap", ({1: "not a str key"}, None)),
        filled("object", "Trap", "not a tuple"),
        ref("namedtuple", "Pair", (1,)),
        ref("enum", "Color", "RED"),
    ],
    ids=[
        "build",
        "appends",
        "setitems",
        "fill-other",
        "fill-twice",
        "bad-kind",
        "bad-key",
        "bad-state",
        "bad-fields",
        "bad-member",
    ],
)
def test_hostile_opcodes_on_references_are_refused(
    forged: Any, policy: TypePolicy, marker: Path
) -> None:
    with pytest.raises(ResultDecodeError):
        load(forged, policy)


def test_class_called_directly_is_refused(policy: TypePolicy, marker: Path) -> None:
    # pickle's own protocol naming a shipped class: GLOBAL + REDUCE would call Trap().
    with pytest.raises(UnsafeResultError, match=r"tests\.script_types\.Trap"):
        load(Forge(st.Trap, ()), policy)
    # A class reference used as a callable (REDUCE) or for NEWOBJ is an inert placeholder.
    reference = (
        b"\x80\x04cboinc_executor.protocol.classref\nclassref_new\n"
        b"(Vclass\nVtests.script_types\nVTrap\nNtR"
    )
    for use in (b")R.", b")\x81."):  # REDUCE: Trap(); NEWOBJ: Trap.__new__(Trap)
        with pytest.raises(UnsafeResultError, match=r"Trap.*trusted_types"):
            safe_loads(reference + use, policy)


def test_own_reduce_or_wrong_kind_is_refused(policy: TypePolicy, marker: Path) -> None:
    with pytest.raises(UnsafeResultError, match=r"Reducing, which defines its own __reduce__"):
        load(filled("object", "Reducing", ({"value": 1}, None)), policy)
    with pytest.raises(UnsafeResultError, match="as a enum, but that class is not one"):
        load(ref("enum", "Point", ("RED", 1)), policy)
    with pytest.raises(UnsafeResultError, match="as a object"):
        load(ref("object", "Color"), policy)


def test_class_sent_by_value_is_refused_with_the_fix(policy: TypePolicy) -> None:
    class Local:
        pass

    payload = cloudpickle.dumps(Local())
    with pytest.raises(UnsafeResultError, match="sent by value"):
        safe_loads(payload, policy)


def test_exception_of_an_untrusted_class_is_a_remote_error(
    policy: TypePolicy, marker: Path
) -> None:
    info = protocol.error_info(st.AppError("m", 1))
    info["module"], info["type"] = "evil", "Boom"
    info["instance"] = pickle.dumps(ref("exception", "Boom", ("m",), "evil"))
    info["exception"] = "injected by the volunteer"
    record = protocol.encode_result("pyb_1_0", [(False, info)])
    decoded = protocol.decode_result(record, policy, expect_job="pyb_1_0", expect_calls=1)
    failure = decoded.outcomes[0][1]
    assert "exception" not in failure
    assert isinstance(rebuild_exception(failure), RemoteError)


def test_exception_of_a_trusted_class_is_itself(policy: TypePolicy) -> None:
    try:
        st.raise_app_error(4)
    except st.AppError as exc:
        info = protocol.error_info(exc)
        blob = classref.exception_blob(exc)
    assert blob is not None
    record = protocol.encode_result("pyb_1_0", [(False, {**info, "instance": blob})])
    decoded = protocol.decode_result(record, policy, expect_job="pyb_1_0", expect_calls=1)
    exc = rebuild_exception(decoded.outcomes[0][1])
    assert type(exc) is st.AppError and exc.code == 4
    assert "raise_app_error" in str(exc.__cause__)
