"""TEST STAND-IN for ``crontab -l [-u USER]`` (cron is not installed here). Not product code.

Reads ``$BOINC_HARNESS_CRONTABS/<user>``; like the real one, a user without a crontab
gets "no crontab for USER" on stderr and exit status 1. ``install(bin_dir)`` writes the
stand-in as ``bin_dir/crontab``; a test puts ``bin_dir`` first on PATH.
"""

from __future__ import annotations

import os
import pwd
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def install(bin_dir: Path) -> Path:
    """Write the stand-in ``crontab`` into ``bin_dir``; returns its path."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "crontab"
    path.write_text(
        f"#!{sys.executable}\n"
        '"""TEST STAND-IN for crontab (tests/boinc_harness/crontab.py)."""\n'
        "import sys\n"
        f"sys.path.insert(0, {str(REPO_ROOT)!r})\n"
        "from tests.boinc_harness.crontab import main\n"
        "sys.exit(main(sys.argv))\n"
    )
    path.chmod(0o755)
    return path


def main(argv: list[str]) -> int:
    args = argv[1:]
    if "-l" not in args:
        print("crontab: TEST STAND-IN supports only -l [-u USER]", file=sys.stderr)
        return 2
    user = pwd.getpwuid(os.geteuid()).pw_name
    if "-u" in args:
        user = args[args.index("-u") + 1]
    path = Path(os.environ.get("BOINC_HARNESS_CRONTABS", "/nonexistent")) / user
    if not path.is_file():
        print(f"no crontab for {user}", file=sys.stderr)
        return 1
    sys.stdout.write(path.read_text())
    return 0
