"""The original PyBOINC API (``pyboinc_call``, ``pyboinc_master``, ...) on top of ``BoincExecutor``.

Decisions (docs/pyboinc-api.md has the full story):

* **The batch directory is the current directory**, as in the design: ``BoincExecutor``
  keeps ``pyboinc_checkpoint``, ``journal.jsonl``, ``new/`` and ``old/`` there. This
  module adds ``pyboinc_calls``, written once every call is journaled: it is the
  design's checkpoint "written after make_calls()". With it a re-run resumes the batch
  (``BoincExecutor.resume``) without calling ``make_calls()``; without it (a first run
  stopped while submitting) ``make_calls()`` runs again and the journal replay matches
  the calls already created, so none is created twice.
* **make_calls() first, then the batch**: ``pyboinc_call`` only queues; the executor is
  created when the slaves, and so the output classes to trust, are known. A ^C inside
  ``make_calls()`` leaves nothing behind.
* **A slave is a file**, shipped with exactly the sibling modules (``name.py``) it
  imports, transitively. The job is an ordinary executor job: a closure that
  cloudpickle ships *by value* (a volunteer's ``pyboinc.zip`` holds only the runner's
  modules), one per slave so all its calls share one content-addressed program file,
  called with (sources digest, pickled input). On the volunteer it writes the sources to
  a temporary directory first on ``sys.path`` and runs the slave as ``__main__`` with
  the two slave functions in its globals and on the ``boinc_executor`` package.
* **Outputs** are pickled by reference (``app_types.Output``): the shipped modules stay
  in ``sys.modules`` until the runner has encoded the result. The master trusts exactly
  the classes those modules define, for this executor only, after checking it imports
  them from the shipped files; anything else an output names is refused.
* **Order**: completion order (a re-run hands what is in ``old/`` first), as the design
  reads ``new/``. **Failures** are logged and skipped; after every other output was
  handled, ``JobFailedError`` names them.
* **^C** (or an exception from ``handle_result``): locally, jobs not started yet are
  cancelled and running ones finish, so a re-run neither loses nor repeats a job; on a
  BOINC project the jobs keep running and the re-run collects them.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import importlib
import json
import logging
import os
import pickle
import queue
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import interrupts, protocol
from .config import resolve_project_dir
from .errors import BatchError, ConfigError, JobFailedError, SubmissionError

if TYPE_CHECKING:
    from .executor import BoincExecutor

__all__ = ["pyboinc_call", "pyboinc_get_input", "pyboinc_master", "pyboinc_return_output"]

logger = logging.getLogger("boinc_executor")
CALLS_FILE = "pyboinc_calls"
_PREFIX = "pyb"


@dataclass
class _Slave:
    """A slave as shipped: the jobs' callable, its sources' digest, the classes to trust."""

    program: Callable[[str, bytes], Any]
    digest: str
    types: list[type]


@dataclass
class _Calls:
    """What ``make_calls()`` queued: slaves by path, and (slave, pickled input) per call."""

    slaves: dict[Path, _Slave] = field(default_factory=dict)
    calls: list[tuple[_Slave, bytes]] = field(default_factory=list)


_lock = threading.Lock()
_active: list[_Calls] = []  # the calls of the make_calls() running now, if any


def pyboinc_call(slave_filename: str | os.PathLike[str], input: Any) -> None:
    """Queue one run of a slave program on one input; call it from ``make_calls()``.

    Args:
        slave_filename: the slave's Python file, relative to the current directory.
        input: the object ``pyboinc_get_input()`` returns on the volunteer; its classes
            should live in a module next to the slave (like ``app_types.py``).

    Raises:
        RuntimeError: not called from the ``make_calls`` given to ``pyboinc_master``.
        ConfigError: the slave or a module it imports cannot be shipped.
        TypeError: the input cannot be pickled.
    """
    calls = _active[-1] if _active else None
    if calls is None:
        raise RuntimeError(
            "pyboinc_call() queues jobs of a batch: call it from the make_calls function "
            "you pass to pyboinc_master(make_calls, handle_result)"
        )
    path = Path(slave_filename).resolve()
    with _lock:
        slave = calls.slaves.get(path)
        if slave is None:
            slave = calls.slaves[path] = _load_slave(path, str(slave_filename))
    import cloudpickle

    try:
        payload = cloudpickle.dumps(input, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise TypeError(
            f"the input of pyboinc_call({str(slave_filename)!r}, ...) cannot be pickled "
            f"({type(exc).__name__}: {exc}); use plain data or classes from a module like "
            "app_types.py"
        ) from exc
    with _lock:
        calls.calls.append((slave, payload))


def pyboinc_master(
    make_calls: Callable[[], object], handle_result: Callable[[Any], object]
) -> None:
    """Run a batch in the current directory and hand every output to ``handle_result``.

    On the first run ``make_calls()`` queues the calls with :func:`pyboinc_call`. A
    re-run in the same directory creates no job: it hands every output again (those of
    the earlier run first) and waits for the rest. ``PYBOINC_DIR`` names the BOINC
    project; without it the embedded backend runs the jobs.

    Raises:
        JobFailedError: some calls failed (after every other output was handled).
        BatchError, ConfigError: the directory or the configuration cannot be used.
    """
    from .executor import BoincExecutor

    directory = Path.cwd().resolve()
    marker = _restore(directory)
    if marker is None:
        with _lock:
            if _active:
                raise RuntimeError("pyboinc_master() is already running in this process")
            calls = _Calls()
            _active.append(calls)
        try:
            make_calls()
        finally:
            _active.clear()
        trusted = [t for slave in calls.slaves.values() for t in slave.types]
        executor = BoincExecutor(batch_dir=directory, prefix=_PREFIX, trusted_types=trusted)
    else:
        trusted = marker["types"]
        executor = BoincExecutor.resume(marker["batch_id"], trusted_types=trusted)
        if executor.batch_dir != directory:
            executor.shutdown(wait=False)
            raise BatchError(
                f"batch {marker['batch_id']} of {directory} is registered at "
                f"{executor.batch_dir}; re-run the master there, or remove {CALLS_FILE}, "
                f"{protocol.CHECKPOINT}, {protocol.JOURNAL}, new/ and old/ here to start over"
            )
    try:
        if marker is None:
            futures = [executor.submit(s.program, s.digest, p) for s, p in calls.calls]
            calls.calls.clear()  # the executor holds the inputs until they are staged
            _write_marker(executor, futures, trusted)
        else:
            futures = executor.futures
        failures = _hand_results(executor, futures, handle_result)
    except BaseException as exc:
        _stop_interrupted(executor, exc)
        raise
    executor.shutdown(wait=True)
    if failures:
        raise JobFailedError(
            f"{len(failures)} of {len(futures)} PyBOINC calls failed: "
            + "; ".join(text for text, _ in failures[:5])
            + ("; ..." if len(failures) > 5 else "")
            + f". handle_result() got every other output. A re-run in {directory} hands the "
            "same outputs and failures again: fix the slave and run in a fresh directory"
        ) from failures[0][1]


def pyboinc_get_input() -> Any:
    """In a slave program: the input object its ``pyboinc_call`` was given.

    Raises:
        RuntimeError: called outside a slave program run by PyBOINC.
    """
    return _slave_api("pyboinc_get_input")()


def pyboinc_return_output(output: Any) -> None:
    """In a slave program: record its output (once), which reaches ``handle_result``.

    Raises:
        RuntimeError: called outside a slave program, or a second time.
    """
    _slave_api("pyboinc_return_output")(output)


def _slave_api(name: str) -> Callable[..., Any]:
    api = getattr(sys.modules.get("boinc_executor"), "_pyboinc_slave", None)
    if api is None:
        raise RuntimeError(
            f"{name}() only works inside a slave program that PyBOINC runs: queue the slave "
            "with pyboinc_call('app_slave.py', input) from a master's make_calls(), and run "
            "the master (python app_master.py)"
        )
    fn: Callable[..., Any] = api[name]
    return fn


# --------------------------------------------------------------------------- master side


def _load_slave(path: Path, given: str) -> _Slave:
    """Read a slave and the sibling modules it imports (transitively); find their classes."""
    if not path.is_file():
        raise ConfigError(
            f"slave program {given!r} is not a file in {Path.cwd()}; pyboinc_call() takes "
            "the path of a Python file, relative to the directory the master runs in"
        )
    sources: list[tuple[str, bytes]] = []
    types: list[type] = []
    todo, seen = [path], {path.stem}
    while todo:
        current = todo.pop(0)
        sources.append((current.name, current.read_bytes()))
        if current != path:
            types += _module_types(current)
        try:
            tree = ast.parse(sources[-1][1], str(current))
        except SyntaxError as exc:
            raise ConfigError(f"{current} cannot be shipped: {exc}") from exc
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in {n.split(".")[0] for n in names} - seen:
                if (path.parent / f"{name}.py").is_file():
                    seen.add(name)
                    todo.append(path.parent / f"{name}.py")
                elif (path.parent / name / "__init__.py").is_file():
                    raise ConfigError(
                        f"{current.name} imports the package {name}/ next to the slave; PyBOINC "
                        "ships sibling modules (name.py) only: make it one, or install it "
                        "on the volunteers"
                    )
    digest = hashlib.sha256(repr(sources).encode()).hexdigest()
    return _Slave(_slave_program(tuple(sources)), digest, types)


def _module_types(file: Path) -> list[type]:
    """The classes a shipped module defines, from the master's import of that very file."""
    name = file.stem
    try:
        module = importlib.import_module(name)
    except Exception as exc:
        raise ConfigError(
            f"the master cannot import {name} ({type(exc).__name__}: {exc}), which the slave "
            f"imports from {file}; outputs are read back with its classes, so run the master "
            f"in {file.parent} or put that directory on sys.path"
        ) from exc
    origin = getattr(module, "__file__", None)
    if origin is None or not os.path.samefile(origin, file):
        raise ConfigError(
            f"the master imports {name} from {origin}, but the slave ships {file}; run the "
            f"master in {file.parent} so both sides use the same {name}"
        )
    found: list[type] = []
    todo = list(vars(module).values())
    while todo:
        cls = todo.pop()
        top = isinstance(cls, type) and cls.__module__ == name and cls not in found
        if top and "<locals>" not in cls.__qualname__:
            found.append(cls)
            todo += vars(cls).values()  # nested classes
    return found


def _restore(directory: Path) -> dict[str, Any] | None:
    """Move ``old/`` back to ``new/`` (the design's re-run); return ``pyboinc_calls`` if any."""
    if not (directory / protocol.CHECKPOINT).is_file():
        return None
    from .batch import BatchDir

    batch = BatchDir(directory)  # takes the lock: no other master runs here
    try:
        checkpoint = batch.read_checkpoint()
        batch.restore_handled()
    finally:
        batch.close()
    try:
        marker: dict[str, Any] = json.loads((directory / CALLS_FILE).read_text())
        if checkpoint is None or marker["batch_id"] != checkpoint.batch_id:
            raise ValueError(f"it names batch {marker['batch_id']}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BatchError(
            f"{directory / CALLS_FILE} is unreadable or not of this batch ({exc}); remove it "
            "to run make_calls() again (calls already journaled are not repeated)"
        ) from exc
    project = resolve_project_dir(None)
    if checkpoint.backend != ("boinc" if project else "local") or (
        project and checkpoint.project_dir and Path(checkpoint.project_dir) != project
    ):
        fix = (
            f"PYBOINC_DIR={checkpoint.project_dir}" if checkpoint.project_dir else "no PYBOINC_DIR"
        )
        raise ConfigError(
            f"{directory} holds a batch of the {checkpoint.backend} backend, but PYBOINC_DIR "
            f"now selects {project or 'the embedded backend'}; run it again with {fix}"
        )
    try:
        marker["types"] = [_resolve_type(name) for name in marker["trusted_types"]]
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(
            f"the outputs of this batch use classes the master cannot import now ({exc}); "
            f"run the master in {directory}, next to the slave's modules"
        ) from exc
    return marker


def _resolve_type(name: str) -> type:
    """A ``module:QualName`` saved in ``pyboinc_calls``, imported again."""
    module, _, qualname = name.partition(":")
    value = functools.reduce(getattr, qualname.split("."), importlib.import_module(module))
    if not isinstance(value, type):
        raise ValueError(f"{name} is no longer a class")
    return value


def _write_marker(executor: BoincExecutor, futures: list[Future[Any]], types: list[type]) -> None:
    """Write ``pyboinc_calls`` once every call is journaled and handed over.

    A call whose hand-over failed leaves the marker unwritten, so a re-run calls
    ``make_calls()`` again to redo it (calls already journaled are not repeated).
    """
    executor.flush()
    if any(
        f.done() and not f.cancelled() and isinstance(f.exception(), SubmissionError)
        for f in futures
    ):
        return
    marker = {
        "format": 1,
        "batch_id": executor.batch_id,
        "calls": len(futures),
        "trusted_types": [f"{t.__module__}:{t.__qualname__}" for t in types],
    }
    protocol.atomic_write(executor.batch_dir / CALLS_FILE, json.dumps(marker).encode())


def _hand_results(
    executor: BoincExecutor, futures: list[Future[Any]], handle_result: Callable[[Any], object]
) -> list[tuple[str, BaseException]]:
    """Call ``handle_result`` on each output in completion order; return the failures."""
    done: queue.Queue[int] = queue.Queue()
    for index, fut in enumerate(futures):
        fut.add_done_callback(lambda _, i=index: done.put(i))  # type: ignore[misc]
    failures: list[tuple[str, BaseException]] = []
    for _ in futures:
        index = -1
        while index < 0:  # bounded waits, so ^C is seen on every platform
            with contextlib.suppress(queue.Empty):
                index = done.get(timeout=0.5)
        exc = futures[index].exception()
        if exc is None:
            handle_result(futures[index].result())
            continue
        job = protocol.job_name(_PREFIX, executor.batch_id, index)
        failures.append((f"call {index} (job {job}): {type(exc).__name__}: {exc}", exc))
        logger.error("pyboinc: %s", failures[-1][0])
    return failures


def _stop_interrupted(executor: BoincExecutor, exc: BaseException) -> None:
    """Leave the directory replayable: no job lost, none run twice.

    On ^C or SIGTERM nothing is cancelled (the batch is kept as it stands, and
    local workers finish the job they run); when ``handle_result`` raised, jobs
    that have not started are cancelled locally, and a re-run submits them again.
    """
    local = executor.backend == "local"
    if interrupts.is_interrupt(exc) or interrupts.interrupted():
        logger.warning(
            "pyboinc: stopping; nothing is cancelled, %s. Run the master again in %s to "
            "complete the batch",
            "running slaves finish first"
            if local
            else "the jobs keep running on the BOINC project",
            executor.batch_dir,
        )
        executor._keep_interrupted(tell=False)
        return
    logger.warning(
        "pyboinc: stopping; %s. Run the master again in %s to complete the batch",
        "jobs not started yet are cancelled, running ones finish"
        if local
        else "the jobs keep running on the BOINC project",
        executor.batch_dir,
    )
    executor.shutdown(wait=local, cancel_futures=local)


# --------------------------------------------------------------------------- volunteer side


def _slave_program(sources: tuple[tuple[str, bytes], ...]) -> Callable[[str, bytes], Any]:
    """The job's callable for one slave: a closure, so cloudpickle ships it by value.

    It names no global of this module (only builtins and what it imports itself),
    so a volunteer runs it with nothing but the runner's modules. ``sources_digest``
    is unused here: as an argument it makes the journal's input digest follow the
    sources, so a replay with an edited slave is refused instead of mixed.
    """

    def run_slave(sources_digest: str, payload: bytes) -> Any:
        import importlib
        import linecache
        import os
        import pickle
        import runpy
        import sys
        import tempfile

        import boinc_executor

        state: dict[str, Any] = {}

        def get_input() -> Any:
            return state["input"]

        def return_output(output: Any) -> None:
            if "output" in state:
                raise RuntimeError("pyboinc_return_output() was already called by this slave")
            state["output"] = output

        api = {"pyboinc_get_input": get_input, "pyboinc_return_output": return_output}
        package = vars(boinc_executor)
        saved, saved_path = {k: package[k] for k in api if k in package}, list(sys.path)
        area = os.path.join(tempfile.gettempdir(), "pyboinc-")
        for key in [k for k in linecache.cache if k.startswith(area)]:
            del linecache.cache[key]  # sources of slaves this process ran before
        with tempfile.TemporaryDirectory(prefix="pyboinc-") as tmp:
            for name, data in sources:
                path = os.path.join(tmp, name)
                with open(path, "wb") as fh:
                    fh.write(data)
                # Tracebacks are formatted after the directory is gone: keep the lines.
                lines = data.decode("utf-8", "replace").splitlines(True)
                linecache.cache[path] = (len(data), None, lines, path)
            for name, _ in sources[1:]:
                sys.modules.pop(name[:-3], None)  # a module of an earlier job in this process
            sys.path.insert(0, tmp)
            importlib.invalidate_caches()
            package.update(api, _pyboinc_slave=api)
            try:
                state["input"] = pickle.loads(payload)
                main = os.path.join(tmp, sources[0][0])
                try:
                    runpy.run_path(main, init_globals=api, run_name="__main__")
                except SystemExit as exc:  # a script may end with sys.exit()
                    if exc.code not in (None, 0):
                        raise
            finally:
                sys.path[:] = saved_path
                for key in (*api, "_pyboinc_slave"):
                    package.pop(key, None)
                package.update(saved)
        if "output" not in state:
            raise RuntimeError(
                f"{sources[0][0]} finished without calling pyboinc_return_output(output)"
            )
        try:
            pickle.dumps(state["output"], protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise TypeError(
                f"the output of {sources[0][0]} cannot be sent back ({exc}); define its "
                "classes in a module next to the slave, like app_types.py, and import it there"
            ) from None
        return state["output"]

    return run_slave
