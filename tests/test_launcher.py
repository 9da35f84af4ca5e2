"""The app version's pieces on their own, without BOINC: pyboinc.zip and the launchers.

No database is needed (this runs in the ``nomysql`` environment too): a slot directory is
laid out by hand as the BOINC client lays it out (boinc-facts §6) and the launcher is run
the way the client runs it, ``../../projects/<proj>/<physical name>`` with cwd = the slot.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from boinc_executor import protocol
from boinc_executor.errors import ConfigError
from boinc_executor.protocol.decoding import TypePolicy
from boinc_executor.server import appversion, runnerzip

LINUX = "x86_64-pc-linux-gnu"

PACKAGE = Path(appversion.__file__).resolve().parents[1]


def lay_out(tmp_path: Path, fn, calls, *, soft_links: bool, job: str = "pyb_3_1",
            interpreter: appversion.Interpreter | None = None) -> tuple[Path, str]:
    """A client data dir with the app version's files and one job's slot; returns
    (slot, path of the launcher relative to the slot)."""
    proj = tmp_path / "client/projects/127.0.0.1_boinctest"
    slot = tmp_path / "client/slots/0"
    proj.mkdir(parents=True)
    slot.mkdir(parents=True)
    files = appversion.version_files(LINUX, "0.1.0", runnerzip.build_runner_zip("0.1.0"),
                                     interpreter)
    for f in files:
        if f.data is not None:
            (proj / f.physical_name).write_bytes(f.data)
        else:
            assert f.source is not None
            shutil.copyfile(f.source, proj / f.physical_name)
        (proj / f.physical_name).chmod(0o755 if f.main_program else 0o644)
        if f.copy_file:
            shutil.copyfile(proj / f.physical_name, slot / (f.logical_name or f.physical_name))
        else:
            (slot / (f.logical_name or f.physical_name)).write_text(
                f"<soft_link>../../projects/127.0.0.1_boinctest/{f.physical_name}</soft_link>\n")
    inputs = {protocol.OPEN_PROGRAM: protocol.encode_program(fn),
              protocol.OPEN_DATA: protocol.encode_data(job, calls)}
    for open_name, data in inputs.items():
        physical = f"phys_{open_name}"
        (proj / physical).write_bytes(data)
        if soft_links:
            (slot / open_name).write_text(
                f"<soft_link>../../projects/127.0.0.1_boinctest/{physical}</soft_link>\n")
        else:
            (slot / open_name).write_bytes(data)
    if soft_links:
        (slot / protocol.OPEN_RESULT).write_text(
            "<soft_link>../../projects/127.0.0.1_boinctest/out_0</soft_link>\n")
    main = next(f for f in files if f.main_program)
    return slot, f"../../projects/127.0.0.1_boinctest/{main.physical_name}"


def run(slot: Path, launcher: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=path if path is not None else os.environ["PATH"])
    return subprocess.run([launcher], cwd=slot, env=env, capture_output=True, text=True,
                          timeout=60)


def no_python_path(tmp_path: Path) -> str:
    """A PATH with the shell tools the launcher uses but no Python."""
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in ("head", "tail", "sed", "grep", "dirname", "rm", "mkdir", "tar", "gzip"):
        found = shutil.which(tool)
        assert found, tool
        (tools / tool).symlink_to(found)
    return str(tools)


@pytest.mark.parametrize("soft_links", [False, True], ids=["copy_file", "soft_links"])
def test_launcher_runs_the_job(tmp_path: Path, soft_links: bool) -> None:
    slot, launcher = lay_out(tmp_path, lambda x: x + 1, [((1,), {}), ((2,), {})],
                             soft_links=soft_links)
    done = run(slot, launcher)
    assert done.returncode == 0, done.stderr
    assert (slot / protocol.FINISH_FILE).read_text() == "0\n"
    out = (tmp_path / "client/projects/127.0.0.1_boinctest/out_0" if soft_links
           else slot / protocol.OPEN_RESULT)
    record = protocol.decode_result(out.read_bytes(), TypePolicy(), expect_job="pyb_3_1",
                                    expect_calls=2)
    assert record.outcomes == [(True, 2), (True, 3)]


def test_launcher_without_python_exits_127_with_a_message(tmp_path: Path) -> None:
    slot, launcher = lay_out(tmp_path, abs, [((1,), {})], soft_links=True)
    done = run(slot, launcher, no_python_path(tmp_path))
    assert done.returncode == appversion.EXIT_NO_PYTHON == 127
    tag = protocol.python_tag()
    assert f"no Python interpreter found: python3 (or python{tag}) is not on this host's PATH" \
        in done.stderr
    assert f"Install Python {tag} to run" in done.stderr
    assert not (slot / protocol.FINISH_FILE).exists()


def test_launcher_without_the_zip_is_a_broken_app_version(tmp_path: Path) -> None:
    slot, launcher = lay_out(tmp_path, abs, [((1,), {})], soft_links=False)
    (slot / "pyboinc.zip").unlink()
    done = run(slot, launcher)
    assert done.returncode == appversion.EXIT_BROKEN
    assert "pyboinc.zip is missing from the slot" in done.stderr


def test_runner_zip_is_self_contained(tmp_path: Path) -> None:
    """With no site-packages at all (-I -S), the zip alone runs the job, and the runner
    loads only the shipped modules: no MySQLdb, no executor, no backend."""
    data = runnerzip.build_runner_zip("0.1.0")
    assert data == runnerzip.build_runner_zip("0.1.0"), "deterministic bytes"
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert "__main__.py" in names and "cloudpickle/__init__.py" in names
    assert any(n.startswith("cloudpickle-LICENSE") for n in names)
    assert {n for n in names if n.startswith("boinc_executor/")} == {
        "boinc_executor/__init__.py",
        *(f"boinc_executor/{runnerzip.runner_module_path(m).relative_to(PACKAGE).as_posix()}"
          for m in runnerzip.RUNNER_MODULES)}
    slot = tmp_path / "slot"
    slot.mkdir()
    (slot / "pyboinc.zip").write_bytes(data)
    # A lambda is pickled by value: it needs nothing from this test module on the volunteer.
    probe = lambda: (  # noqa: E731
        sorted(n for n in sys.modules if n.split(".")[0] in {"boinc_executor", "MySQLdb"}),
        sys.modules["cloudpickle"].__file__,
    )
    (slot / protocol.OPEN_PROGRAM).write_bytes(protocol.encode_program(probe))
    (slot / protocol.OPEN_DATA).write_bytes(protocol.encode_data("pyb_3_1", [((), {})]))
    done = subprocess.run([sys.executable, "-I", "-S", "pyboinc.zip"], cwd=slot,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    record = protocol.decode_result((slot / protocol.OPEN_RESULT).read_bytes(), TypePolicy(),
                                    expect_job="pyb_3_1", expect_calls=1)
    ((ok, (modules, cloudpickle_file)),) = record.outcomes
    assert ok, record
    assert modules == sorted(["boinc_executor", *(f"boinc_executor.{m}" for m in
                                                   runnerzip.RUNNER_MODULES)])
    assert cloudpickle_file.startswith(str(slot / "pyboinc.zip"))


def test_version_numbers() -> None:
    assert appversion.version_num("0.1.0") == 100
    assert appversion.version_num("0.2") == 200
    assert appversion.version_num("1.2.3.dev4") == 10203
    assert [appversion.version_dir_name(n) for n in (100, 10203, 5)] == ["1.00", "102.03",
                                                                         "0.05"]
    for bad in ("x", "1.100.0", "1.2.100"):
        with pytest.raises(ConfigError):
            appversion.version_num(bad)


def test_physical_names_change_with_the_content() -> None:
    a = appversion.version_files(LINUX, "0.1.0", b"zip one")
    b = appversion.version_files(LINUX, "0.1.0", b"zip two")
    assert a[0].physical_name == b[0].physical_name  # same launcher
    assert a[1].physical_name != b[1].physical_name
    assert appversion.version_files(LINUX, "0.1.0", b"zip one") == a
    win = appversion.version_files(appversion.WINDOWS_PLATFORM, "0.1.0", b"zip one")
    assert win[0].physical_name.endswith(".bat") and win[1] == a[1]


def make_tarball(tmp_path: Path, members: list[str], name: str = "py.tar.gz") -> Path:
    stage = tmp_path / "stage"
    for member in members:
        path = stage / member
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
    archive = tmp_path / name
    with tarfile.open(archive, "w:gz") as tf:
        for top in sorted({m.split("/")[0] for m in members}):
            tf.add(stage / top, arcname=top)
    return archive


def test_interpreter_archives_are_inspected(tmp_path: Path) -> None:
    good = make_tarball(tmp_path, ["python/bin/python3", "python/lib/x.py"])
    interp = appversion.Interpreter.from_archive(LINUX, good)
    assert interp.executable == "python/bin/python3"
    assert interp.physical_name.startswith(f"pyboinc_python_{LINUX}_")
    assert interp.physical_name.endswith(".tar.gz")
    with pytest.raises(ConfigError, match="holds no bin/python3"):
        appversion.Interpreter.from_archive(LINUX, make_tarball(tmp_path / "a", ["lib/x.py"]))
    with pytest.raises(ConfigError, match="must be a tar archive"):
        appversion.Interpreter.from_archive(LINUX, tmp_path / "python.zip")
    with pytest.raises(ConfigError, match="no pyboinc app version for platform"):
        appversion.Interpreter.from_archive("beos", good)
    with pytest.raises(ConfigError, match="cannot read the interpreter archive"):
        appversion.Interpreter.from_archive(LINUX, tmp_path / "missing.tar.gz")
    embed = tmp_path / "python-3.11-embed-amd64.zip"
    with zipfile.ZipFile(embed, "w") as zf:
        zf.writestr("python.exe", b"MZ")
        zf.writestr("python311.zip", b"")
    win = appversion.Interpreter.from_archive(appversion.WINDOWS_PLATFORM, embed)
    assert win.executable == "python.exe"
    bat = appversion.launcher(appversion.WINDOWS_PLATFORM, "0.1.0", win).decode()
    assert f'tar -xf "%~dp0{win.physical_name}" -C pyboinc_python' in bat
    assert '"pyboinc_python\\python.exe" pyboinc.zip' in bat


def test_shipped_interpreter_runs_the_job(tmp_path: Path) -> None:
    stage = tmp_path / "pystage" / "python" / "bin"
    stage.mkdir(parents=True)
    (stage / "python3").write_text(
        f"#!/bin/sh\necho shipped-python-used >&2\nexec {sys.executable} \"$@\"\n")
    (stage / "python3").chmod(0o755)
    archive = tmp_path / "cpython.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tmp_path / "pystage" / "python", arcname="python")
    interp = appversion.Interpreter.from_archive(LINUX, archive)
    slot, launcher = lay_out(tmp_path, abs, [((-2,), {})], soft_links=False, interpreter=interp)
    done = run(slot, launcher, no_python_path(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "shipped-python-used" in done.stderr
    record = protocol.decode_result((slot / protocol.OPEN_RESULT).read_bytes(), TypePolicy(),
                                    expect_job="pyb_3_1", expect_calls=1)
    assert record.outcomes == [(True, 2)]
