"""TEST STAND-IN for BOINC's ``bin/update_versions`` (PHP). Not product code.

Run in the project root. Scans ``apps/<app>/<version>/<platform>[__<plan_class>]/``
("1.0" -> 100, "1.2" -> 102, "3" -> 3), reads an optional version.xml, "signs" each file
(a dummy signature unless ``<file>.sig`` exists), copies the files FLAT into download/
and refuses to replace a different file of the same name (BOINC files are immutable),
skips versions that already exist, inserts the app_version row with BOINC's xml_doc,
and touches reread_db.

One deliberate difference: PHP's ``die("...")`` exits with status 0; this stand-in exits
with 1 after printing the same message, so a caller must not rely on the status alone.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import ConfigError, read_config
from .templates import md5_file

VERSION_FLAGS = ("is_wrapper", "dont_throttle", "needs_network")


class Die(Exception):
    """PHP die(): print the message and stop."""


@dataclass
class FileDesc:
    physical_name: str
    logical_name: str = ""
    main_program: bool = False
    copy_file: bool = False
    present: bool = False
    executable: bool = False
    nbytes: int = 0
    signature: str = ""
    url: str = ""


def parse_version(v: str) -> int:
    """"1.0" -> 100, "1.2" -> 102, "3" -> 3, anything else -> -1."""
    parts = v.split(".")
    if not parts[0].isdigit() or (len(parts) > 1 and not parts[1].isdigit()):
        return -1
    return int(parts[1]) + 100 * int(parts[0]) if len(parts) > 1 else int(parts[0])


def _flag(el: ET.Element, tag: str) -> bool:
    for x in el.iterfind(tag):
        text = (x.text or "").strip()
        if text == "" or (text.isdigit() and int(text) > 0):
            return True
    return False


def _read_version_xml(path: Path) -> tuple[list[FileDesc], str]:
    """The files described in version.xml and the extra ``<app_version>`` XML it asks for."""
    try:
        doc = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        raise Die(f"Can't load XML file {path.parent}.  "
                  "Check that it exists and is valid.") from None
    fds = [
        FileDesc(physical_name=(fx.findtext("physical_name") or "").strip(),
                 logical_name=(fx.findtext("logical_name") or "").strip(),
                 main_program=_flag(fx, "main_program"), copy_file=_flag(fx, "copy_file"))
        for fx in doc.iterfind("file")
    ]
    extra = "".join(f"    <{t}/>\n" for t in VERSION_FLAGS if doc.find(t) is not None)
    api = doc.findtext("api_version")
    if api:
        extra += f"    <api_version>{api.strip()}</api_version>\n"
    return fds, extra


def _signature(path: Path, key: Path) -> str:
    """BOINC's sign_executable output, faked: a hex digest line and the "." terminator."""
    sig = Path(f"{path}.sig")
    if sig.is_file():
        return sig.read_text()
    if not key.is_file():
        raise Die(f"   Error: no .sig file for {path.name}, and no code signing private key\n")
    digest = hashlib.sha256(key.read_bytes() + path.read_bytes()).hexdigest()
    return f"{digest}\n.\n"


def _stage(path: Path, download_dir: Path) -> None:
    dl_path = download_dir / path.name
    if dl_path.is_file():
        if md5_file(path)[0] != md5_file(dl_path)[0]:
            raise Die(f"Error: files {path} and {dl_path} differ.\nBOINC files are immutable.\n"
                      "If you change a file, you must give it a new name.\n")
    else:
        print(f"cp {path} {dl_path}")
        shutil.copy(path, dl_path)


def _file_xml(fd: FileDesc) -> str:
    executable = "    <executable/>\n" if fd.executable or fd.main_program else ""
    return (f"<file_info>\n    <name>{fd.physical_name}</name>\n    <url>{fd.url}</url>\n"
            f"{executable}    <file_signature>\n{fd.signature}    </file_signature>\n"
            f"    <nbytes>{fd.nbytes}</nbytes>\n</file_info>\n")


def _ref_xml(fd: FileDesc) -> str:
    out = f"<file_ref>\n    <file_name>{fd.physical_name}</file_name>\n"
    if fd.logical_name:
        out += f"    <open_name>{fd.logical_name}</open_name>\n"
    if fd.copy_file:
        out += "    <copy_file/>\n"
    if fd.main_program:
        out += "    <main_program/>\n"
    return out + "</file_ref>\n"


class Updater:
    def __init__(self, cur: Any, download_url: str, download_dir: Path, confirm: bool) -> None:
        self.cur = cur
        self.download_url = download_url
        self.download_dir = download_dir
        self.confirm = confirm
        self.added = 0

    def lookup(self, table: str, name: str) -> int | None:
        self.cur.execute(f"select id from {table} where name=%s", (name,))
        row = self.cur.fetchone()
        return int(row["id"]) if row else None

    def process_version(self, app: str, appid: int, version: str, pdir: Path) -> None:
        print(f"Found application version: {app} {version} {pdir.name}")
        platform, _, plan_class = pdir.name.partition("__")
        platformid = self.lookup("platform", platform)
        if platformid is None:
            print(f"  Platform {platform} not found")
            return
        vnum = parse_version(version)
        self.cur.execute("select id from app_version where appid=%s and version_num=%s and "
                         "platformid=%s and plan_class=%s", (appid, vnum, platformid, plan_class))
        if self.cur.fetchone():
            print("  This app version already exists")
            return
        vfile = pdir / "version.xml"
        fds, extra = _read_version_xml(vfile) if vfile.is_file() else ([], "")
        for path in sorted(pdir.iterdir()):
            if path.name == "version.xml" or path.name.endswith(".sig") or path.name[0] == ".":
                continue
            fd = next((f for f in fds if f.physical_name == path.name), None)
            if fd is None:
                fd = FileDesc(physical_name=path.name)
                fds.append(fd)
            fd.nbytes = path.stat().st_size
            fd.signature = _signature(path, Path("keys/code_sign_private"))
            _stage(path, self.download_dir)
            fd.url = f"{self.download_url}/{path.name}"
            fd.executable = bool(path.stat().st_mode & 0o100)
            fd.present = True
        missing = [fd for fd in fds if not fd.present]
        for fd in missing:
            print(f"   File {fd.physical_name} is listed in version.xml but not present")
        if missing:
            return
        if len(fds) == 1:
            fds[0].main_program = True
        mains = sum(fd.main_program for fd in fds)
        if mains != 1:
            print("    No file was marked as the main program." if mains == 0 else
                  "    More than one file was marked as the main program.")
            return
        if self.confirm and not self.ask(fds):
            return
        xml = "".join(_file_xml(fd) for fd in fds)
        xml += (f"<app_version>\n    <app_name>{app}</app_name>\n"
                f"    <version_num>{vnum}</version_num>\n{extra}")
        xml += "".join(_ref_xml(fd) for fd in fds) + "</app_version>\n"
        self.cur.execute(
            "insert into app_version (create_time, appid, version_num, platformid, xml_doc, "
            "min_core_version, max_core_version, deprecated, plan_class, pfc_n, pfc_avg, "
            "pfc_scale, expavg_credit, expavg_time, beta) values "
            "(%s, %s, %s, %s, %s, 0, 0, 0, %s, 0, 0, 0, 0, 0, 0)",
            (int(time.time()), appid, vnum, platformid, xml, plan_class))
        self.added += 1
        print(f"    Application version added successfully; ID={self.cur.lastrowid}")

    @staticmethod
    def ask(fds: list[FileDesc]) -> bool:
        print("    Files:")
        for fd in fds:
            print(f"        {fd.physical_name}{' (main program)' if fd.main_program else ''}")
        print("    Do you want to add this application version (y/n)? ", end="", flush=True)
        return sys.stdin.readline().strip() == "y"

    def scan(self, apps_dir: Path) -> None:
        for adir in sorted(p for p in apps_dir.iterdir() if p.name[0] != "."):
            appid = self.lookup("app", adir.name)
            if appid is None:
                print(f"{adir.name} is not an app")
                continue
            for vdir in sorted(p for p in adir.iterdir() if p.name[0] != "."):
                if parse_version(vdir.name) < 0:
                    print(f"{vdir.name} is not a version number; skipping")
                    continue
                for pdir in sorted(p for p in vdir.iterdir() if p.name[0] != "."):
                    self.process_version(adir.name, appid, vdir.name, pdir)


def main(argv: list[str]) -> int:
    try:
        config = read_config(Path("."))
    except ConfigError as exc:
        print(f"update_versions: can't read config.xml: {exc}")
        return 1
    conn = config.connect()
    try:
        updater = Updater(conn.cursor(), config.download_url, config.download_dir,
                          confirm="--noconfirm" not in argv)
        updater.scan(Path("apps"))
    except Die as exc:
        print(exc, end="")
        return 1
    finally:
        conn.close()
    Path("reread_db").touch()
    return 0
