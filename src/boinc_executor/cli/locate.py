"""Finding batches for the command line: the local registry and a BOINC project's database.

Local batches are found through the embedded backend's registry
(``<state home>/registry/<id>.json``, see :mod:`boinc_executor.backends.registry`);
BOINC batches through the project's ``pyboinc_batch`` table; remote batches through
the remote backend's registry of this machine (``<state home>/remote/<server key>/``,
see :mod:`boinc_executor.backends.remote_state`). Only the BOINC side
needs ``mysqlclient``, and only when the database is really read: everything in a
batch directory (journal, records, captured output) is read from the files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import protocol
from ..backends.registry import registry_dir
from ..batchview import BatchView
from ..config import ProjectConfig, resolve_project_dir
from ..errors import BatchNotFoundError, BoincExecutorError

if TYPE_CHECKING:
    from ..backends.db import Database

__all__ = [
    "BatchRef",
    "JobStates",
    "MissingDependencyError",
    "boinc_database",
    "boinc_job_states",
    "find_batch",
    "local_batches",
    "local_running_jobs",
    "registry_dir",
    "remote_batch",
]

_WU_NAME = re.compile(r"<wu_name>([^<]*)</wu_name>")
_BOINC_STATES = {0: "init", 1: "in progress", 2: "complete", 3: "aborted", 4: "retired"}


class MissingDependencyError(BoincExecutorError):
    """Reading a BOINC project's database needs mysqlclient, which is not installed."""


@dataclass(frozen=True)
class BatchRef:
    """Where a batch is and what is known about it before its directory is read.

    Attributes:
        batch_id: the batch ID.
        backend: ``"local"``, ``"boinc"`` or ``"remote"``.
        path: the batch directory (it may no longer exist).
        name: the batch's name ("" if unknown).
        script: the script that created it ("" if unknown).
        created: Unix time of creation (0 if unknown).
        project: the BOINC project root, for BOINC batches.
        registry_file: the registry entry, for local and remote batches.
        state: BOINC's ``batch.state`` in words, for BOINC batches.
        server: the master URL, for remote batches.
    """

    batch_id: int
    backend: str
    path: Path
    name: str = ""
    script: str = ""
    created: float = 0.0
    project: Path | None = None
    registry_file: Path | None = None
    state: str = ""
    server: str = ""

    @property
    def exists(self) -> bool:
        """Whether the directory still holds the batch's checkpoint."""
        return (self.path / protocol.CHECKPOINT).is_file()

    def view(self) -> BatchView:
        """A read-only view of the directory, with name/script from the checkpoint if set.

        Raises:
            BatchNotFoundError: the directory is gone.
        """
        return BatchView(self.path)


@dataclass(frozen=True)
class JobStates:
    """Where BOINC has a batch's work units, by name (one query)."""

    running: frozenset[str]
    failed: frozenset[str]
    cancelled: frozenset[str]
    unsent: frozenset[str]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _with_checkpoint(ref: BatchRef) -> BatchRef:
    """Fill name, script and creation time from the checkpoint where it has them."""
    data = _read_json(ref.path / protocol.CHECKPOINT) or {}
    return BatchRef(
        batch_id=ref.batch_id,
        backend=str(data.get("backend", ref.backend)),
        path=ref.path,
        name=str(data.get("name") or ref.name),
        script=str(data.get("script") or ref.script),
        created=float(data.get("created") or ref.created or 0.0),
        project=ref.project,
        registry_file=ref.registry_file,
        state=ref.state,
        server=ref.server,
    )


def local_batches() -> list[BatchRef]:
    """Every batch in the local registry, by ID."""
    refs = []
    try:
        names = os.listdir(registry_dir())
    except FileNotFoundError:
        return []
    for name in names:
        stem, _, suffix = name.partition(".")
        if suffix != "json" or not stem.isdigit():
            continue
        entry = registry_dir() / name
        data = _read_json(entry)
        if data is None or "batch_dir" not in data:
            continue
        ref = BatchRef(
            batch_id=int(stem),
            backend="local",
            path=Path(str(data["batch_dir"])),
            name=str(data.get("name", "")),
            script=str(data.get("script", "")),
            created=float(data.get("created", 0.0) or 0.0),
            registry_file=entry,
        )
        refs.append(_with_checkpoint(ref))
    return sorted(refs, key=lambda r: r.batch_id)


def project_root(project: str | None, *, local: bool) -> Path | None:
    """The BOINC project the command is about: ``--project``, else ``$PYBOINC_DIR``."""
    if local:
        return None
    return resolve_project_dir(project)


@contextmanager
def boinc_database(root: Path) -> Iterator[Database]:
    """An open connection to the project's database.

    Raises:
        MissingDependencyError: mysqlclient is not installed.
        ConfigError: not a BOINC project.
        DatabaseError: the database cannot be reached.
    """
    try:
        from ..backends.db import Database
    except ImportError as exc:
        raise MissingDependencyError(
            f"reading the BOINC database of {root} needs mysqlclient ({exc}); install it "
            "(pip install mysqlclient, or the package's [boinc] extra), or read the batch "
            "directory alone with --batch-dir DIR"
        ) from exc
    with Database(ProjectConfig.load(root)) as db:
        yield db


def boinc_batches(root: Path, batch_id: int | None = None) -> list[BatchRef]:
    """Batches of the project's ``pyboinc_batch`` table (all, or the one asked for)."""
    where = "WHERE p.batch_id=%s" if batch_id is not None else ""
    with boinc_database(root) as db:
        rows = db.query(
            "SELECT p.batch_id, p.batch_dir, p.create_time, b.name, b.state "  # noqa: S608
            "FROM pyboinc_batch p LEFT JOIN batch b ON b.id=p.batch_id "
            f"{where} ORDER BY p.batch_id",
            () if batch_id is None else (batch_id,),
            doing="listing batches",
        )
    refs = []
    for bid, path, created, name, state in rows:
        ref = BatchRef(
            batch_id=int(bid),
            backend="boinc",
            path=Path(_text(path)),
            name=_text(name),
            created=float(created or 0),
            project=root,
            state=_BOINC_STATES.get(int(state), str(state)) if state is not None else "",
        )
        refs.append(_with_checkpoint(ref))
    return refs


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def remote_batch(batch_id: int, server: str) -> BatchRef:
    """Remote batch ``batch_id`` of ``server``, through this machine's remote registry.

    Raises:
        BatchNotFoundError: not registered here, or its directory is gone.
        ConfigError: ``server`` is not an http(s) URL.
    """
    from ..backends.remote_state import locate, registry_entry
    from ..backends.remote_wire import normalise_server

    url = normalise_server(server)
    path = locate(url, batch_id)
    return _with_checkpoint(
        BatchRef(batch_id, "remote", path, registry_file=registry_entry(url, batch_id), server=url)
    )


def find_batch(
    batch_id: int,
    *,
    project: str | None,
    local: bool,
    batch_dir: str | None,
    server: str | None = None,
) -> BatchRef:
    """The batch a command names: by directory, remote, on the BOINC project, or local.

    ``server`` (``--server``) names a remote batch's master URL. Without it and
    without a project, ``$BOINC_EXECUTOR_SERVER`` is tried as the executor would
    (a batch not registered for it is looked for in the local registry).

    Raises:
        BatchNotFoundError: no such batch.
        MissingDependencyError: it is on BOINC and mysqlclient is missing.
    """
    if batch_dir is not None:
        path = Path(batch_dir).expanduser().resolve()
        data = _read_json(path / protocol.CHECKPOINT)
        if data is None:
            raise BatchNotFoundError(f"{path} holds no batch checkpoint")
        if int(data.get("batch_id", -1)) != batch_id:
            raise BatchNotFoundError(f"{path} holds batch {data.get('batch_id')}, not {batch_id}")
        backend = str(data.get("backend", "local"))
        # A remote batch's checkpoint keeps the master URL where a project root would be.
        root = data.get("project_dir")
        return _with_checkpoint(
            BatchRef(
                batch_id,
                backend,
                path,
                project=Path(root) if root and backend != "remote" else None,
                server=str(root or "") if backend == "remote" else "",
            )
        )
    if server:
        return remote_batch(batch_id, server)
    root = project_root(project, local=local)
    env_server = os.environ.get("BOINC_EXECUTOR_SERVER") if root is None and not local else None
    if env_server:
        try:
            return remote_batch(batch_id, env_server)
        except BatchNotFoundError:
            pass  # not a remote batch of that server: a local one, then
    if root is not None:
        found = boinc_batches(root, batch_id)
        if not found:
            raise BatchNotFoundError(
                f"batch {batch_id} is not a boinc-executor batch of the project at {root}; "
                "check the ID (boinc-executor list), or pass --local for a local batch"
            )
        return found[0]
    for ref in local_batches():
        if ref.batch_id == batch_id:
            return ref
    raise BatchNotFoundError(
        f"no local batch {batch_id} in the registry at {registry_dir()}; see "
        "boinc-executor list, set BOINC_EXECUTOR_HOME to the registry it was created under, "
        "or pass --project for a BOINC batch"
    )


def boinc_job_states(root: Path, batch_id: int) -> JobStates:
    """The batch's work units that are running, failed, cancelled or unsent, by name."""
    with boinc_database(root) as db:
        rows = db.query(
            "SELECT w.name, w.error_mask, w.canonical_resultid, EXISTS ("
            "SELECT 1 FROM result r WHERE r.workunitid=w.id AND r.sent_time>0) "
            "FROM workunit w WHERE w.batch=%s",
            (batch_id,),
            doing="reading the batch's jobs",
        )
    running: set[str] = set()
    failed: set[str] = set()
    cancelled: set[str] = set()
    unsent: set[str] = set()
    for name, mask, canonical, sent in rows:
        job = _text(name)
        if int(mask) & 16:
            cancelled.add(job)
        elif int(mask):
            failed.add(job)
        elif int(canonical):
            continue
        elif int(sent):
            running.add(job)
        else:
            unsent.add(job)
    return JobStates(frozenset(running), frozenset(failed), frozenset(cancelled), frozenset(unsent))


def local_running_jobs(path: Path) -> set[str]:
    """Jobs the embedded backend's workers have laid out in their slots right now."""
    running: set[str] = set()
    try:
        slots = os.listdir(path / "local" / "slots")
    except FileNotFoundError:
        return running
    for slot in slots:
        try:
            text = (path / "local" / "slots" / slot / "init_data.xml").read_text()
        except OSError:
            continue
        match = _WU_NAME.search(text)
        if match:
            running.add(match.group(1))
    return running


def remove_directory(path: Path) -> None:
    """Delete a batch directory (what ``retire``, ``remove`` and ``clean`` do)."""
    if path.is_dir():
        shutil.rmtree(path)
