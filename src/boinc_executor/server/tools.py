"""Running the project's own ``bin/`` tools (xadd, update_versions, start, stop)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ..errors import ConfigError

__all__ = ["run_tool"]

_TOOL_TIMEOUT = 600.0  # update_versions on a big project takes minutes


def run_tool(
    root: Path, tool: str, *args: str, timeout: float = _TOOL_TIMEOUT, hint: str = ""
) -> str:
    """Run ``bin/<tool>`` in the project root; its combined output.

    No descriptor of ours is inherited (``bin/start`` would pass it on to every
    daemon, boinc-facts §9.4), and stdin is /dev/null.

    Raises:
        ConfigError: it could not run, timed out, or failed (with ``hint`` appended).
    """
    try:
        done = subprocess.run(
            [str(root / "bin" / tool), *args],
            cwd=root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            close_fds=True,
            check=False,
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"cannot run {root / 'bin' / tool}: {exc}") from exc
    output = (done.stdout + done.stderr).strip()
    if done.returncode:
        raise ConfigError(
            f"bin/{tool} failed with exit code {done.returncode}:\n{output}"
            + (f"\n{hint}" if hint else "")
        )
    return output
