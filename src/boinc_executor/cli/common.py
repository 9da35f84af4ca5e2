"""What every command shares: exit codes, ``--json`` output, confirmation, error reporting."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from ..errors import BatchNotFoundError, BoincExecutorError
from .locate import MissingDependencyError

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_MISSING_DEPENDENCY",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "Command",
    "batch_options",
    "confirm",
    "emit",
    "fail",
    "guarded",
]

EXIT_OK = 0  #: the command did what was asked (wait: every call is done)
EXIT_FAILED = 1  #: refused or failed (wait: a call failed or was cancelled)
EXIT_USAGE = 2  #: bad command line (argparse's own code)
EXIT_TIMEOUT = 2  #: wait only: the timeout passed first
EXIT_NOT_FOUND = 3  #: no such batch, or its directory is gone
EXIT_MISSING_DEPENDENCY = 4  #: the BOINC database is needed and mysqlclient is missing
EXIT_INTERRUPTED = 130  #: ^C (the batch is left as it is)

Command = Callable[[argparse.Namespace], int]


def batch_options(parser: argparse.ArgumentParser, *, batch_id: bool = True) -> None:
    """The options every batch command takes: which batch, where, and ``--json``."""
    if batch_id:
        parser.add_argument("batch_id", metavar="ID", type=int, help="the batch ID")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    where = parser.add_argument_group("where the batch is")
    where.add_argument(
        "--project",
        metavar="PROJECT_DIR",
        help="a BOINC project root: the batch is one of its batches (default: $PYBOINC_DIR)",
    )
    where.add_argument(
        "--local",
        action="store_true",
        help="a batch of the embedded backend, even when PYBOINC_DIR is set",
    )
    if batch_id:
        where.add_argument(
            "--server",
            metavar="URL",
            help="a remote batch submitted to this master URL from this machine (default: "
            "$BOINC_EXECUTOR_SERVER, when no project is given); the key comes from "
            "$BOINC_EXECUTOR_AUTHENTICATOR or $BOINC_EXECUTOR_AUTHENTICATOR_FILE",
        )
        where.add_argument(
            "--batch-dir",
            metavar="DIR",
            help="read the batch from its directory (no database needed for what is on disk)",
        )


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print ``data`` as JSON with ``--json``, else ``text``."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=1, sort_keys=True, default=str))
    elif text:
        print(text)


def fail(command: str, message: str, code: int = EXIT_FAILED) -> int:
    """Say what went wrong (and what to do) on stderr; returns the exit status."""
    print(f"boinc-executor {command}: {message}", file=sys.stderr)
    return code


def confirm(args: argparse.Namespace, question: str) -> bool:
    """Ask on a terminal; without one, go ahead only with ``--yes``."""
    if getattr(args, "yes", False):
        return True
    if not sys.stdin.isatty():
        print(
            f"boinc-executor {args.command}: {question} Not asked: stdin is not a terminal; "
            "pass --yes to go ahead",
            file=sys.stderr,
        )
        return False
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def guarded(run: Command) -> Command:
    """Turn the errors a user can cause into a message and an exit status."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except MissingDependencyError as exc:
            return fail(args.command, str(exc), EXIT_MISSING_DEPENDENCY)
        except BatchNotFoundError as exc:
            return fail(args.command, str(exc), EXIT_NOT_FOUND)
        except BoincExecutorError as exc:
            return fail(args.command, str(exc))
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return fail(args.command, "interrupted; the batch is left as it is", EXIT_INTERRUPTED)

    wrapper.__name__ = run.__name__
    wrapper.__doc__ = run.__doc__
    return wrapper
