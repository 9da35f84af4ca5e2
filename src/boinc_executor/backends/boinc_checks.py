"""What the BOINC backend checks of a project before it submits anything.

Each failure is a :class:`~boinc_executor.errors.ConfigError` that says what to do:
the project root lacks BOINC's tools or this package's templates (run
setup-project), the download directory is not writable, the database lacks the
``pyboinc`` app or the batch table, or the user to submit as does not exist.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from pathlib import Path

from ..config import ProjectConfig
from ..errors import ConfigError
from ..protocol.names import APP_NAME
from .db import BATCH_TABLE, Database
from .workunits import INPUT_TEMPLATE, OUTPUT_TEMPLATE, PARAM_TAGS

__all__ = ["ENV_USER_ID", "check_layout", "check_setup", "resolve_user"]

logger = logging.getLogger("boinc_executor")

ENV_USER_ID = "BOINC_EXECUTOR_USER_ID"


def check_layout(config: ProjectConfig) -> None:
    """The project's files: ``bin/create_work``, our templates, a writable download dir."""
    root = config.root.resolve()
    setup = f"run 'boinc-executor setup-project {root}'"
    create_work = root / "bin" / "create_work"
    if not os.access(create_work, os.X_OK):
        raise ConfigError(
            f"{root} has no executable bin/create_work; point project_dir at the root "
            "of a BOINC server project (make_project installs the tools)"
        )
    for template in (INPUT_TEMPLATE, OUTPUT_TEMPLATE):
        if not (root / template).is_file():
            raise ConfigError(f"{root} has no {template}; {setup}")
    _warn_template_params(root)
    download = config.download_dir
    if not download.is_dir() or not os.access(download, os.W_OK | os.X_OK):
        raise ConfigError(
            f"cannot write into the download directory {download}; run as the project's "
            "user or give your group write access to it (and its fan-out directories)"
        )


def _warn_template_params(root: Path) -> None:
    path = root / INPUT_TEMPLATE
    try:
        workunit = ET.parse(path).getroot().find("workunit")  # noqa: S314 - operator's file
    except (OSError, ET.ParseError) as exc:
        raise ConfigError(f"cannot read the input template {path}: {exc}") from exc
    fixed = [t for t in PARAM_TAGS if workunit is not None and workunit.find(t) is not None]
    if fixed:
        logger.warning(
            "%s sets %s; BOINC lets template values override create_work's options, so "
            "JobParams cannot change them. Remove them from the template to use JobParams",
            path,
            ", ".join(fixed),
        )


def check_setup(db: Database, root: Path) -> int:
    """The ``pyboinc`` app's ID, once setup-project has created it and the batch table."""
    setup = f"run 'boinc-executor setup-project {root}'"
    app_id = db.app_id(APP_NAME)
    if app_id is None:
        raise ConfigError(f"the project at {root} has no app {APP_NAME!r}; {setup}")
    if not db.has_table(BATCH_TABLE):
        raise ConfigError(f"the project at {root} has no {BATCH_TABLE} table; {setup}")
    return app_id


def resolve_user(db: Database, root: Path, user_id: int | None) -> int:
    """The BOINC user to submit as: ``user_id``, else ``$BOINC_EXECUTOR_USER_ID``, else 1 or 0."""
    source = "user_id"
    if user_id is None:
        raw = os.environ.get(ENV_USER_ID)
        if not raw:
            return 1 if db.user_exists(1) else 0
        source = ENV_USER_ID
        try:
            user_id = int(raw)
        except ValueError:
            raise ConfigError(f"{ENV_USER_ID}={raw!r} is not a BOINC user ID") from None
    if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id < 0:
        raise ConfigError(f"{source} must be a BOINC user ID (an integer >= 0)")
    if user_id and not db.user_exists(user_id):
        raise ConfigError(
            f"{source} names BOINC user {user_id}, who does not exist in the project at "
            f"{root}; use an existing user's ID (or 0)"
        )
    return user_id
