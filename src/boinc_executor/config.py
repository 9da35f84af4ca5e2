"""Settings: where things live and how jobs are parameterised.

Precedence, everywhere: explicit constructor arguments, then environment
variables (``PYBOINC_DIR``, ``BOINC_EXECUTOR_*``), then the BOINC project's own
``config.xml``. Nothing is read at import time.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["JobParams", "ProjectConfig", "resolve_project_dir", "state_home"]

ENV_PROJECT = "PYBOINC_DIR"
ENV_HOME = "BOINC_EXECUTOR_HOME"


def resolve_project_dir(project_dir: str | os.PathLike[str] | None) -> Path | None:
    """The BOINC project root to use, or None for the embedded local backend.

    Raises:
        ConfigError: the named directory does not exist.
    """
    raw: str | os.PathLike[str] | None = project_dir
    source = "project_dir"
    if raw is None:
        raw = os.environ.get(ENV_PROJECT) or None
        source = ENV_PROJECT
    if raw is None:
        return None
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"{source} names {path}, which is not a directory; point it at the root of a "
            f"BOINC project (the directory holding config.xml), or unset it to run locally"
        )
    return path.resolve()


def state_home() -> Path:
    """Where the embedded backend keeps its batch registry and default batch directories.

    ``$BOINC_EXECUTOR_HOME``, else ``$XDG_STATE_HOME/boinc-executor``, else
    ``~/.local/state/boinc-executor``.
    """
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
    return base / "boinc-executor"


@dataclass(frozen=True)
class JobParams:
    """BOINC work-unit parameters (``create_work`` options) for the jobs of a batch.

    The defaults differ from BOINC's built-in 1/1 limits on purpose: with those,
    one failed or late result makes a work unit fail for good (boinc-facts §8.4).
    Ours give each job up to three tries on different hosts.

    Attributes:
        rsc_fpops_est: estimated floating-point operations per job.
        rsc_fpops_bound: the client aborts a job that exceeds this.
        rsc_memory_bound: bytes of memory a job may use.
        rsc_disk_bound: bytes of disk a job may use.
        delay_bound: seconds a host has to return a job before it is sent elsewhere.
        priority: higher is sent first.
        min_quorum: matching results needed for a canonical result.
        target_nresults: results created at first.
        max_error_results: errors tolerated before the job fails.
        max_total_results: results created at most.
        max_success_results: successful results tolerated without a quorum.
    """

    rsc_fpops_est: float = 1e10
    rsc_fpops_bound: float = 1e14
    rsc_memory_bound: float = 5e8
    rsc_disk_bound: float = 1e9
    delay_bound: int = 86400
    priority: int = 0
    min_quorum: int = 1
    target_nresults: int = 1
    max_error_results: int = 3
    max_total_results: int = 4
    max_success_results: int = 2

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "priority" and not value > 0:
                raise ConfigError(f"JobParams.{f.name} must be positive, got {value!r}")
        if self.target_nresults < self.min_quorum:
            raise ConfigError("JobParams.target_nresults must be at least min_quorum")
        if self.max_error_results > self.max_total_results:
            raise ConfigError("JobParams.max_error_results must not exceed max_total_results")
        if self.max_success_results > self.max_total_results:
            raise ConfigError("JobParams.max_success_results must not exceed max_total_results")

    def replace(self, **changes: Any) -> JobParams:
        """A copy with some fields changed (validated like the original)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(f"unknown job parameter(s): {', '.join(sorted(unknown))}")
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return JobParams(**values)


@dataclass(frozen=True)
class ProjectConfig:
    """What boinc-executor needs from a BOINC project's ``config.xml``.

    Attributes:
        root: the project root (the directory holding ``config.xml``).
        db_host: database host; ``<db_host>`` may carry ``:port``.
        db_port: database port (``<db_port>``, an addition some installations use; default 3306).
        db_name: database name.
        db_user: database user.
        db_passwd: database password.
        download_dir: where input files are staged (``<download_dir>``).
        download_url: URL of ``download_dir`` as volunteers see it.
        upload_dir: where volunteers' outputs arrive.
        upload_url: URL volunteers upload to.
        fanout: ``<uldl_dir_fanout>``, the number of hashed sub-directories.
        host: ``<host>``, the host the daemons run on.
    """

    root: Path
    db_host: str
    db_port: int
    db_name: str
    db_user: str
    db_passwd: str
    download_dir: Path
    download_url: str
    upload_dir: Path
    upload_url: str
    fanout: int
    host: str

    @classmethod
    def load(cls, root: Path) -> ProjectConfig:
        """Read ``<root>/config.xml``.

        Raises:
            ConfigError: the file is missing, unreadable, not XML, or lacks a needed element.
        """
        import xml.etree.ElementTree as ET

        path = root / "config.xml"
        try:
            tree = ET.parse(path)  # noqa: S314
        except FileNotFoundError:
            raise ConfigError(
                f"{root} is not a BOINC project: it has no config.xml. Point project_dir or "
                "PYBOINC_DIR at the project root that make_project created"
            ) from None
        except (OSError, ET.ParseError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        config = tree.getroot().find("config")
        if config is None:
            raise ConfigError(
                f"{path} has no <config> section; is it a BOINC project's config.xml?"
            )

        def text(tag: str, default: str | None = None) -> str:
            node = config.find(tag)
            if node is None or node.text is None:
                if default is None:
                    raise ConfigError(f"{path} lacks <{tag}>, which boinc-executor needs")
                return default
            return node.text.strip()

        host, _, port_text = text("db_host", "localhost").partition(":")
        port_text = text("db_port", port_text or "3306")
        try:
            port = int(port_text)
            fanout = int(text("uldl_dir_fanout", "1024"))
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        return cls(
            root=root,
            db_host=host or "localhost",
            db_port=port,
            db_name=text("db_name"),
            db_user=text("db_user", ""),
            db_passwd=text("db_passwd", ""),
            download_dir=Path(text("download_dir", str(root / "download"))),
            download_url=text("download_url").rstrip("/"),
            upload_dir=Path(text("upload_dir", str(root / "upload"))),
            upload_url=text("upload_url", ""),
            fanout=fanout,
            host=text("host", ""),
        )

    def fanout_dir(self, name: str) -> str:
        """BOINC's hashed sub-directory for a file name (boinc-facts §3)."""
        return format(int(hashlib.md5(name.encode()).hexdigest()[1:8], 16) % self.fanout, "x")  # noqa: S324
