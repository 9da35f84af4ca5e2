"""Which batch belongs to which script: the default batch of ``BoincExecutor()``.

Design note. ``pyboinc_master`` ties a batch to the directory it runs in; the
Executor API ties its default batch (no ``batch_dir``) to the running script
instead, so that running an interrupted script again replays its batch:

* the *owner* of a batch is ``(absolute script path, name, ordinal)``; the
  ordinal counts the executors a process has created for that script and name,
  so a script that creates two executors gets the same two batches back, in
  order, when it runs again;
* a *claim* file ``<backend batch root>/by-script/<sha256(owner)[:24]>.json``
  names the owner's current batch (ID and directory). It is written when the
  batch is created and removed when the batch completes and its executor is shut
  down normally, so the next run starts fresh;
* interactive sessions (the REPL, ``python -c``, notebooks) have no script: they
  get a fresh, unclaimed batch unless ``name=`` is given, which makes the name
  alone the owner.

A claim whose batch is locked by another live process (the same script running
twice at once) is not shared: that run gets a fresh, unclaimed batch.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from . import protocol

__all__ = ["Claim", "Owner", "owner_for", "release_batch", "running_script"]

_CLAIMS_DIR = "by-script"
_lock = threading.Lock()
_ordinals: Counter[tuple[str | None, str]] = Counter()


def running_script() -> str | None:
    """The absolute path of the script this process runs, or None when interactive.

    ``python script.py`` and ``python -m module`` have a ``__main__.__file__``; the
    REPL, ``python -c`` and Jupyter kernels do not (IPython's launcher script is
    not the user's program either).
    """
    main = sys.modules.get("__main__")
    file = getattr(main, "__file__", None)
    if not isinstance(file, str) or not file or "ipykernel" in sys.modules:
        return None
    return str(Path(file).resolve())


@dataclass(frozen=True)
class Owner:
    """Who a default batch belongs to.

    Attributes:
        script: the script's absolute path ("" when only ``name`` identifies it).
        name: the executor's ``name`` argument ("" when not given).
        ordinal: which of this process's executors for (script, name) it is.
    """

    script: str
    name: str
    ordinal: int

    @property
    def key(self) -> str:
        """The claim's file stem: a digest of the owner."""
        text = json.dumps([self.script, self.name, self.ordinal])
        return hashlib.sha256(text.encode()).hexdigest()[:24]


def owner_for(name: str | None) -> Owner | None:
    """The owner of the next default batch this process opens; None for a fresh batch."""
    script = running_script()
    if script is None and not name:
        return None
    ident = (script, name or "")
    with _lock:
        ordinal = _ordinals[ident]
        _ordinals[ident] += 1
    return Owner(script or "", name or "", ordinal)


@dataclass(frozen=True)
class Claim:
    """An owner's claim on its current batch, stored under a backend's batch root.

    Attributes:
        root: the backend's batch root (the claims live in ``by-script/`` below it).
        owner: whose claim it is.
    """

    root: Path
    owner: Owner

    @property
    def path(self) -> Path:
        """The claim file."""
        return self.root / _CLAIMS_DIR / f"{self.owner.key}.json"

    def read(self) -> tuple[int, Path] | None:
        """The claimed (batch ID, directory), or None if there is no usable claim."""
        try:
            data = json.loads(self.path.read_text())
            return int(data["batch_id"]), Path(data["batch_dir"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, batch_id: int, batch_dir: Path) -> None:
        """Claim ``batch_id`` for the owner (atomically replacing an older claim)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "batch_id": batch_id,
            "batch_dir": str(batch_dir),
            "script": self.owner.script,
            "name": self.owner.name,
            "ordinal": self.owner.ordinal,
        }
        protocol.atomic_write(self.path, json.dumps(record).encode())

    def release(self, batch_id: int) -> None:
        """Drop the claim if it still names ``batch_id`` (the next run starts fresh)."""
        current = self.read()
        if current is not None and current[0] == batch_id:
            self.path.unlink(missing_ok=True)


def release_batch(root: Path, batch_id: int) -> None:
    """Drop every claim on ``batch_id`` under ``root`` (used when a batch is discarded)."""
    try:
        claims = list((root / _CLAIMS_DIR).glob("*.json"))
    except OSError:
        return
    for path in claims:
        try:
            if int(json.loads(path.read_text())["batch_id"]) == batch_id:
                path.unlink(missing_ok=True)
        except (OSError, ValueError, KeyError, TypeError):
            continue
