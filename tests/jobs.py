"""Module-level job functions for the tests: picklable by reference for every executor."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any


def square(x: int) -> int:
    return x * x


def add(a: int, b: int = 0) -> int:
    return a + b


def identity(x: Any) -> Any:
    return x


def length(data: bytes) -> int:
    return len(data)


def make_bytes(n: int) -> bytes:
    return b"x" * n


def sleep_and_return(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def wait_for_file(path: str, value: Any = None, timeout: float = 60.0) -> Any:
    """Block until ``path`` exists: lets a test hold a worker busy for as long as it needs."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.01)
    return value


def touch_then_wait(started: str, gate: str, value: Any = None) -> Any:
    """Create ``started``, then wait for ``gate``: the test knows the call is running."""
    with open(started, "w"):
        pass
    return wait_for_file(gate, value)


def raise_value_error(message: str) -> None:
    raise ValueError(message)


def raise_key_error(key: str) -> None:
    raise KeyError(key)


class CustomError(Exception):
    """An exception type that is not a built-in."""


def raise_custom(message: str) -> None:
    raise CustomError(message)


def return_lock() -> Any:
    return threading.Lock()


def kill_self() -> None:
    os.kill(os.getpid(), 9)


def kill_self_once(marker: str) -> str:
    """Die on the first attempt, succeed on the retry."""
    path = Path(marker)
    if not path.exists():
        path.write_text("died once")
        os.kill(os.getpid(), 9)
    return "survived"


def log_and_square(log: str, x: int, delay: float = 0.0) -> int:
    """Append the call to ``log`` (one line per execution) so tests can count executions."""
    time.sleep(delay)
    with open(log, "a") as fh:
        fh.write(f"{x}\n")
    return x * x


def print_and_return(x: int) -> int:
    print(f"hello from {x}")
    return x


def flaky(marker: str, log: str, x: int) -> int:
    """Log every attempt; calls with ``x % 3 == 0`` raise until ``marker`` exists."""
    with open(log, "a") as fh:
        fh.write(f"{x}\n")
    if x % 3 == 0 and not os.path.exists(marker):
        raise ValueError(f"call {x} is not ready")
    return x * 10
