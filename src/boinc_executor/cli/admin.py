"""``boinc-executor setup-project``: configure a BOINC project for boinc-executor jobs."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from .. import __version__
from ..server.appversion import ALL_PLATFORMS
from .common import EXIT_OK, EXIT_USAGE, emit, fail, guarded

__all__ = ["register"]

_log = logging.getLogger("boinc_executor.cli")


def _interpreter(value: str) -> tuple[str, str]:
    platform, sep, archive = value.partition("=")
    if not sep or not archive:
        raise argparse.ArgumentTypeError(
            f"expected PLATFORM=ARCHIVE (e.g. windows_x86_64=python-3.12-embed-amd64.zip), "
            f"got {value!r}"
        )
    if platform not in ALL_PLATFORMS:
        raise argparse.ArgumentTypeError(
            f"unknown platform {platform!r}; choose one of {', '.join(ALL_PLATFORMS)}"
        )
    return platform, archive


def register(sub: Any) -> None:
    """Add ``setup-project`` to the command line."""
    setup = sub.add_parser(
        "setup-project",
        help="configure a BOINC project to run boinc-executor jobs (idempotent)",
        description=(
            "Add the pyboinc app, its templates, app versions for "
            f"{', '.join(ALL_PLATFORMS)}, the pyboinc_batch table, the daemon scripts "
            "and the assimilator/validator daemons to an existing BOINC project. Run it "
            "as the project's owner on the BOINC server; run it again after upgrading "
            "boinc-executor. It never starts or stops the project. "
            "Exit status: 0 done, 1 refused (the message says why), 2 bad usage."
        ),
    )
    setup.add_argument("project_dir", metavar="PROJECT_DIR", help="the BOINC project root")
    setup.add_argument(
        "--python",
        metavar="PLATFORM=ARCHIVE",
        type=_interpreter,
        action="append",
        default=[],
        help=(
            "ship a relocatable Python for PLATFORM (a tar archive with bin/python3, or "
            "for windows_x86_64 also a zip with python.exe) instead of relying on the "
            "volunteer's python3; repeat per platform"
        ),
    )
    setup.add_argument(
        "--float-validator",
        action="store_true",
        help=(
            "validate replicated results with script_validator + pyboinc_compare "
            "(floats equal within a tolerance) instead of sample_bitwise_validator"
        ),
    )
    setup.add_argument(
        "--release",
        metavar="X.Y.Z",
        help=(
            f"number the app version as this release (default {__version__}); a higher "
            "one registers a new app version, e.g. to ship a changed runner"
        ),
    )
    setup.add_argument(
        "--remote",
        action="store_true",
        help=(
            "also prepare remote submission over the web RPCs: group-writable download "
            "directories, the pyboinc_remote_* templates, a PHP limits check "
            "(docs/remote.md)"
        ),
    )
    setup.add_argument("--json", action="store_true", help="print the report as JSON")
    setup.set_defaults(run=_setup_project)
    grant = sub.add_parser(
        "grant-submit",
        help="let a BOINC user submit pyboinc jobs remotely (user_submit, user_submit_app)",
        description="Exit status: 0 granted (or already held), 1 refused (no such user).",
    )
    grant.add_argument("project_dir", metavar="PROJECT_DIR", help="the BOINC project root")
    grant.add_argument("user", metavar="USER", help="the user's ID or e-mail address")
    grant.set_defaults(run=_grant_submit)
    purge = sub.add_parser(
        "purge-remote-outputs",
        help="delete the outputs kept for remote batches that were retired (run from cron)",
        description="Exit status: 0 done, 1 refused (the message says why).",
    )
    purge.add_argument("project_dir", metavar="PROJECT_DIR", help="the BOINC project root")
    purge.set_defaults(run=_purge_remote_outputs)


@guarded
def _setup_project(args: argparse.Namespace) -> int:
    from ..server.project import setup_project

    interpreters = dict(args.python)
    if len(interpreters) != len(args.python):
        return fail(args.command, "--python given twice for one platform", EXIT_USAGE)
    report = setup_project(
        args.project_dir,
        interpreters=interpreters,
        float_validator=args.float_validator,
        release=args.release,
        log=lambda step: _log.info("setting up: %s", step),
    )
    data = {
        "project": str(report.root),
        "version_num": report.version_num,
        "changes": report.changes,
        "todo": report.todo,
    }
    text = report.render()
    if args.remote:
        from ..server.remote import setup_remote

        remote = setup_remote(args.project_dir, log=lambda step: _log.info("remote: %s", step))
        data["remote"] = {"changes": remote.changes, "todo": remote.todo}
        text += "\nRemote submission:\n" + (
            "\n".join(f"  - {c}" for c in remote.changes) or "  - nothing to change"
        )
        if remote.todo:
            text += "\nStill to do for remote submission:\n" + "\n".join(
                f"  - {t}" for t in remote.todo
            )
    emit(args, data, text)
    return EXIT_OK


@guarded
def _grant_submit(args: argparse.Namespace) -> int:
    from ..server.remote import grant_submit

    print(grant_submit(args.project_dir, args.user))
    return EXIT_OK


@guarded
def _purge_remote_outputs(args: argparse.Namespace) -> int:
    from ..server.remote import purge_retired_outputs

    count = purge_retired_outputs(args.project_dir)
    print(f"deleted {count} outputs of retired remote batches")
    return EXIT_OK
