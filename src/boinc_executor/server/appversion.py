"""The volunteer side of a BOINC project: the ``pyboinc`` app version's files.

An app version (boinc-facts §6) is a directory ``apps/pyboinc/<version>/<platform>/``
holding a ``version.xml`` and its files; ``bin/update_versions`` signs them, copies
them flat into ``download/`` and registers the version. This module builds what goes
into that directory, for every platform we serve:

* the **launcher**, the main program: a ``/bin/sh`` script (Linux, macOS) or a ``.bat``
  file (Windows) that finds a Python interpreter and runs ``<python> pyboinc.zip``
  with cwd = the slot directory, so the runner's exit code is the task's exit code;
* ``pyboinc.zip`` (logical name, ``<copy_file/>``; built by ``runnerzip.py``): the
  runner, the modules it imports, the ``cloudpickle`` package and a ``__main__.py``.
  Nothing server-side: a volunteer needs no ``MySQLdb``;
* optionally a relocatable interpreter the operator supplies for a platform, as an
  archive the launcher unpacks into the slot (the design's "what if the Windows box
  has no Python").

BOINC files are immutable (update_versions dies on a different file with the same
name), so every physical name carries the release and a short hash of the content:
a changed runner always gets a new name, and the same release always the same bytes.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import ConfigError
from ..protocol.names import APP_NAME

__all__ = [
    "ALL_PLATFORMS",
    "POSIX_PLATFORMS",
    "WINDOWS_PLATFORM",
    "ZIP_LOGICAL_NAME",
    "AppFile",
    "Interpreter",
    "version_dir_name",
    "version_files",
    "version_num",
    "version_xml",
]

POSIX_PLATFORMS = (
    "x86_64-pc-linux-gnu",
    "x86_64-apple-darwin",
    "arm64-apple-darwin",
    "aarch64-unknown-linux-gnu",
)
WINDOWS_PLATFORM = "windows_x86_64"
ALL_PLATFORMS = (*POSIX_PLATFORMS, WINDOWS_PLATFORM)
ZIP_LOGICAL_NAME = "pyboinc.zip"  # the runner zip's open name in the slot (runnerzip.py)
EXIT_NO_PYTHON = 127  # the shell's "command not found"
EXIT_BROKEN = 126  # the app version itself is unusable on this host

_HASH_CHARS = 10
_RELEASE_RE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2", ".tar")


def version_num(release: str) -> int:
    """BOINC ``version_num`` of a boinc-executor release: ``M.m.p`` -> ``M*10000 + m*100 + p``.

    BOINC compares versions as one integer and the feeder sends only the newest, so
    every release must map to a larger number than the one before; ``0.1.0`` is 100.

    Raises:
        ConfigError: the release is not ``major.minor[.patch]`` with minor and patch below 100.
    """
    match = _RELEASE_RE.match(release)
    if not match:
        raise ConfigError(f"release {release!r} is not of the form major.minor[.patch]")
    major, minor, patch = int(match[1]), int(match[2]), int(match[3] or 0)
    if minor > 99 or patch > 99:
        raise ConfigError(
            f"release {release!r} cannot be a BOINC app version: minor and patch must be below 100"
        )
    return major * 10000 + minor * 100 + patch


def version_dir_name(num: int) -> str:
    """The ``apps/<app>/<dir>`` name update_versions reads as ``num`` ("1.05" -> 105)."""
    return f"{num // 100}.{num % 100:02d}"


def _name_part(release: str) -> str:
    """The release as it may appear in a BOINC file name."""
    return re.sub(r"[^A-Za-z0-9.]+", "_", release).strip("_") or "0"


def _short_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:_HASH_CHARS]


@dataclass(frozen=True)
class AppFile:
    """One file of an app version, as version.xml describes it.

    Attributes:
        physical_name: the unique, immutable name BOINC stores and downloads it under.
        data: its content, or None when it is copied from ``source``.
        source: a file to copy (large operator-supplied archives are not read into memory).
        logical_name: the name the app opens in the slot ('' = the physical name).
        main_program: the file the client runs.
        copy_file: the client copies it into the slot instead of writing a link file.
    """

    physical_name: str
    data: bytes | None = None
    source: Path | None = None
    logical_name: str = ""
    main_program: bool = False
    copy_file: bool = False


@dataclass(frozen=True)
class Interpreter:
    """A relocatable Python for one platform, shipped as an app-version file.

    The operator supplies an archive (for example a python-build-standalone
    ``install_only`` tarball, or the Windows "embeddable" zip); the launcher unpacks it
    into the slot and runs ``executable`` from it. Linux and macOS launchers unpack with
    ``tar``, so those archives must be tar files; Windows' ``tar.exe`` reads zip too.

    Attributes:
        platform: the BOINC platform it is for.
        archive: the archive on the server.
        executable: the interpreter's path inside the archive.
        digest: hash of the archive's content (part of its physical name).
    """

    platform: str
    archive: Path
    executable: str
    digest: str

    @classmethod
    def from_archive(cls, platform: str, archive: Path) -> Interpreter:
        """Inspect ``archive`` and find the interpreter in it.

        Raises:
            ConfigError: unknown platform, unreadable or unsuitable archive, or no
                (or more than one equally likely) interpreter inside.
        """
        if platform not in ALL_PLATFORMS:
            raise ConfigError(
                f"no pyboinc app version for platform {platform!r}; "
                f"choose one of {', '.join(ALL_PLATFORMS)}"
            )
        archive = Path(archive).expanduser().resolve()
        windows = platform == WINDOWS_PLATFORM
        is_tar = archive.name.lower().endswith(_TAR_SUFFIXES)
        is_zip = archive.name.lower().endswith(".zip")
        if not (is_tar or (windows and is_zip)):
            kinds = "a .zip or tar archive" if windows else "a tar archive (.tar.gz, .tar.xz, ...)"
            raise ConfigError(
                f"the interpreter for {platform} must be {kinds}, not {archive.name}: "
                "its launcher unpacks it with tar"
            )
        try:
            names = _archive_members(archive, is_zip)
            digest = _file_hash(archive)
        except (OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
            raise ConfigError(f"cannot read the interpreter archive {archive}: {exc}") from exc
        wanted = re.compile(r"(^|.*/)python\.exe$" if windows else r"(^|.*/)bin/python3$")
        found = sorted((n for n in names if wanted.fullmatch(n)), key=lambda n: (n.count("/"), n))
        if not found:
            what = "python.exe" if windows else "bin/python3"
            raise ConfigError(f"{archive} holds no {what}; is it a relocatable Python build?")
        if len(found) > 1 and found[0].count("/") == found[1].count("/"):
            raise ConfigError(
                f"{archive} holds several interpreters ({', '.join(found[:3])}); "
                "repack it with one Python"
            )
        return cls(platform=platform, archive=archive, executable=found[0], digest=digest)

    @property
    def physical_name(self) -> str:
        """Unique download name: platform and content hash, keeping the archive's suffix."""
        lower = self.archive.name.lower()
        suffix = next((s for s in (*_TAR_SUFFIXES, ".zip") if lower.endswith(s)), "")
        return f"{APP_NAME}_python_{self.platform}_{self.digest}{suffix}"


def _archive_members(archive: Path, is_zip: bool) -> list[str]:
    if is_zip:
        with zipfile.ZipFile(archive) as zf:
            return [n.rstrip("/") for n in zf.namelist()]
    with tarfile.open(archive) as tf:
        return [str(PurePosixPath(m.name)) for m in tf.getmembers()]


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:_HASH_CHARS]


# --------------------------------------------------------------------------- launchers

_SH_HEADER = """#!/bin/sh
# boinc-executor {release}: main program of the BOINC app "pyboinc" ({platform}).
# The client runs it with cwd = the slot directory; it runs the job there with
#     <python> pyboinc.zip
# The runner writes result.pkl and boinc_finish_called and exits 0. A non-zero exit is a
# client error, and what this script writes to stderr reaches the project in stderr_out.
if [ ! -f pyboinc.zip ]; then
    echo "boinc-executor launcher: pyboinc.zip is missing from the slot $(pwd);" \\
        "this app version is broken, please tell the project" >&2
    exit {broken}
fi
"""

_SH_SYSTEM_PYTHON = """# The job's Python major.minor is in the program file's JSON header (line 2):
# prefer that interpreter when the host has several. The runner refuses a mismatch.
resolve() {{
    if head -c 11 "$1" 2>/dev/null | grep -q '^<soft_link>'; then
        sed -n 's:^<soft_link>\\(.*\\)</soft_link>$:\\1:p' "$1"
    else
        printf '%s\\n' "$1"
    fi
}}
want=$(head -n 2 "$(resolve program.pkl)" 2>/dev/null | tail -n 1 |
    sed -n 's/^.*"python": *"\\([0-9][0-9]*\\.[0-9][0-9]*\\)".*$/\\1/p')
for candidate in ${{want:+python$want}} python3; do
    if command -v "$candidate" >/dev/null 2>&1; then
        exec "$candidate" pyboinc.zip
    fi
done
echo "boinc-executor launcher: no Python interpreter found: python3${{want:+ (or python$want)}}" \\
    "is not on this host's PATH ($PATH). Install Python ${{want:-3}} to run this project's" \\
    "pyboinc jobs." >&2
exit {no_python}
"""

_SH_SHIPPED_PYTHON = """# This app version ships its own Python, {archive}:
# unpack it into the slot.
archive="$(dirname "$0")/{archive}"
rm -rf pyboinc_python
if ! mkdir pyboinc_python || ! tar -xf "$archive" -C pyboinc_python; then
    echo "boinc-executor launcher: cannot unpack the shipped Python $archive into" \\
        "$(pwd)/pyboinc_python" >&2
    exit {broken}
fi
if [ ! -x "pyboinc_python/{executable}" ]; then
    echo "boinc-executor launcher: the shipped Python has no executable {executable}" >&2
    exit {no_python}
fi
exec "pyboinc_python/{executable}" pyboinc.zip
"""

_BAT_HEADER = r"""@echo off
rem boinc-executor {release}: main program of the BOINC app "pyboinc" ({platform}).
rem The client runs it with cwd = the slot directory; it runs the job there with
rem     <python> pyboinc.zip
rem A non-zero exit is a client error; stderr reaches the project in stderr_out.
setlocal
if not exist pyboinc.zip goto nozip
"""

_BAT_SYSTEM_PYTHON = r"""where py >nul 2>nul
if errorlevel 1 goto trypython
py -3 pyboinc.zip
exit /b %ERRORLEVEL%
:trypython
where python >nul 2>nul
if errorlevel 1 goto nopython
python pyboinc.zip
exit /b %ERRORLEVEL%
:nopython
echo boinc-executor launcher: no Python interpreter found: neither py nor python ^
is on PATH. Install Python 3 to run this project's pyboinc jobs. 1>&2
exit /b {no_python}
"""

_BAT_SHIPPED_PYTHON = r"""rem This app version ships its own Python, {archive}:
rem unpack it into the slot.
if exist pyboinc_python rmdir /s /q pyboinc_python
mkdir pyboinc_python
tar -xf "%~dp0{archive}" -C pyboinc_python
if errorlevel 1 goto nounpack
if not exist "pyboinc_python\{executable}" goto nopython
"pyboinc_python\{executable}" pyboinc.zip
exit /b %ERRORLEVEL%
:nounpack
echo boinc-executor launcher: cannot unpack the shipped Python %~dp0{archive} 1>&2
exit /b {broken}
:nopython
echo boinc-executor launcher: the shipped Python has no {executable} 1>&2
exit /b {no_python}
"""

_BAT_FOOTER = r""":nozip
echo boinc-executor launcher: pyboinc.zip is missing from the slot %CD%; ^
this app version is broken, please tell the project 1>&2
exit /b {broken}
"""


def launcher(platform: str, release: str, interpreter: Interpreter | None = None) -> bytes:
    """The main program for ``platform``: a ``/bin/sh`` script, or a ``.bat`` on Windows."""
    values = {
        "release": release,
        "platform": platform,
        "broken": EXIT_BROKEN,
        "no_python": EXIT_NO_PYTHON,
        "archive": interpreter.physical_name if interpreter else "",
        "executable": interpreter.executable if interpreter else "",
    }
    if platform == WINDOWS_PLATFORM:
        if interpreter is not None:
            values["executable"] = interpreter.executable.replace("/", "\\")
        body = _BAT_SHIPPED_PYTHON if interpreter else _BAT_SYSTEM_PYTHON
        text = (_BAT_HEADER + body + _BAT_FOOTER).format(**values)
        return text.replace("\n", "\r\n").encode()
    body = _SH_SHIPPED_PYTHON if interpreter else _SH_SYSTEM_PYTHON
    return (_SH_HEADER + body).format(**values).encode()


def version_files(
    platform: str, release: str, runner_zip: bytes, interpreter: Interpreter | None = None
) -> list[AppFile]:
    """The files of the app version for ``platform``, launcher first."""
    name = _name_part(release)
    main = launcher(platform, release, interpreter)
    suffix = ".bat" if platform == WINDOWS_PLATFORM else ".sh"
    files = [
        AppFile(f"{APP_NAME}_launcher_{name}_{_short_hash(main)}{suffix}", main, main_program=True),
        AppFile(
            f"{APP_NAME}_runner_{name}_{_short_hash(runner_zip)}.zip",
            runner_zip,
            logical_name=ZIP_LOGICAL_NAME,
            copy_file=True,
        ),
    ]
    if interpreter is not None:
        # No copy_file: the launcher unpacks it straight from the project directory.
        files.append(AppFile(interpreter.physical_name, source=interpreter.archive))
    return files


def version_xml(files: Iterable[AppFile]) -> bytes:
    """``version.xml`` describing ``files`` (boinc-facts §6)."""
    parts = ["<version>\n"]
    for f in files:
        parts.append("    <file>\n")
        parts.append(f"        <physical_name>{f.physical_name}</physical_name>\n")
        if f.logical_name:
            parts.append(f"        <logical_name>{f.logical_name}</logical_name>\n")
        if f.main_program:
            parts.append("        <main_program/>\n")
        if f.copy_file:
            parts.append("        <copy_file/>\n")
        parts.append("    </file>\n")
    parts.append("</version>\n")
    return "".join(parts).encode()
