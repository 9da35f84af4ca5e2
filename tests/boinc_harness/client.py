"""TEST STAND-IN for the BOINC client 7.20.5 on one x86_64 Linux host. Not product code.

Given the tasks a scheduler reply sent, it does what boinc-facts.md §6 describes:
"downloads" app version files (flat) and WU inputs (fan-out) from the project's download
directory into ``<client_dir>/projects/127.0.0.1_<proj>/`` (checking md5/size), lays out
``<client_dir>/slots/<n>/`` (copy_file refs as real copies under their open names, other
refs as ``<soft_link>`` files, outputs too; the main program as a soft-link file under its
physical name; init_data.xml; stderr.txt), runs ``../../projects/<proj>/<main program>``
with cwd = slot, restarts it when it exits 0 without ``boinc_finish_called``, renames
copy_file outputs out of the slot, checks outputs (absent / bigger than max_nbytes), and
"uploads" them to ``<upload_dir>/<fanout>/<name>``. The result is a ``Report``.

Only the project's own download URL is served; nothing ever touches the network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import (
    CLIENT_VERSION,
    CS_ABORTED,
    CS_COMPUTE_ERROR,
    CS_FILES_DOWNLOADING,
    CS_FILES_UPLOADED,
    Config,
    parse_command_line,
    parse_fragment,
)
from .server import Report, SentTask

EXIT_TIME_LIMIT_EXCEEDED, EXIT_ABORTED_VIA_GUI, EXIT_SIGNAL = 197, 203, 193
ERR_RESULT_DOWNLOAD, ERR_TOO_MANY_EXITS = -186, -226
STDERR_MAX = 63 * 1024


@dataclass(frozen=True)
class FileRef:
    """A file_ref of an app version, WU or result: physical name, open name, flags."""

    physical: str
    logical: str
    copy_file: bool
    main_program: bool = False
    optional: bool = False


def _refs(parent: Any) -> list[FileRef]:
    out = []
    for ref in parent.iterfind("file_ref") if parent is not None else []:
        physical = (ref.findtext("file_name") or "").strip()
        out.append(FileRef(physical=physical,
                           logical=(ref.findtext("open_name") or "").strip() or physical,
                           copy_file=ref.find("copy_file") is not None,
                           main_program=ref.find("main_program") is not None,
                           optional=ref.find("optional") is not None))
    return out


def _file_infos(doc: Any) -> dict[str, Any]:
    return {(fi.findtext("name") or "").strip(): fi for fi in doc.iter("file_info")}


class TaskFailed(Exception):
    """The task ended before producing output (download error, app error, abort...)."""

    def __init__(self, client_state: int, exit_status: int, message: str) -> None:
        super().__init__(message)
        self.client_state = client_state
        self.exit_status = exit_status
        self.message = message


class Client:
    """The client's side of a host: its data dir, its slots and the test's injections."""

    def __init__(self, config: Config, client_dir: Path, *, host_id: int, soft_links: bool,
                 ncpus: int, flops: float, max_restarts: int, max_task_seconds: float) -> None:
        self.config = config
        self.dir = client_dir
        self.host_id = host_id
        self.soft_links = soft_links
        self.ncpus = ncpus
        self.flops = flops
        self.max_restarts = max_restarts
        self.max_task_seconds = max_task_seconds
        # master URL http://127.0.0.1/<proj>/ -> projects/127.0.0.1_<proj>
        self.proj_name = config.master_url.split("://", 1)[-1].strip("/").replace("/", "_")
        self.proj_dir = client_dir / "projects" / self.proj_name
        self.proj_dir.mkdir(parents=True, exist_ok=True)
        (client_dir / "slots").mkdir(exist_ok=True)
        self.actions: deque[tuple[str, int]] = deque()
        self.tamper: Callable[[bytes], bytes] | None = None
        self.lock = threading.Lock()
        self.busy_slots: set[int] = set()
        self.authenticator = ""

    # -- downloads ---------------------------------------------------------------------
    def fetch(self, fi: Any) -> None:
        """Copy one file_info's file from the download hierarchy unless already present."""
        name = (fi.findtext("name") or "").strip()
        dest = self.proj_dir / name
        if dest.exists():
            return
        url = (fi.findtext("url") or "").strip()
        prefix = self.config.download_url.rstrip("/") + "/"
        src = self.config.download_dir / url[len(prefix):] if url.startswith(prefix) else None
        if src is None or not src.is_file():
            raise TaskFailed(CS_FILES_DOWNLOADING, ERR_RESULT_DOWNLOAD,
                             f"Giving up on download of {name}: permanent HTTP error")
        data = src.read_bytes()
        md5 = (fi.findtext("md5_cksum") or "").strip()
        nbytes = (fi.findtext("nbytes") or "").strip()
        if (md5 and hashlib.md5(data).hexdigest() != md5) or (  # BOINC's checksum
                nbytes and float(nbytes) != len(data)):
            raise TaskFailed(CS_FILES_DOWNLOADING, ERR_RESULT_DOWNLOAD,
                             f"MD5 check failed for {name}")
        tmp = dest.with_name(f".{name}.part")
        tmp.write_bytes(data)
        if fi.find("executable") is not None:
            tmp.chmod(0o755)
        tmp.replace(dest)

    # -- slots -------------------------------------------------------------------------
    def _slot(self) -> int:
        with self.lock:
            n = next(i for i in range(len(self.busy_slots) + 1) if i not in self.busy_slots)
            self.busy_slots.add(n)
        slot = self.dir / "slots" / str(n)
        shutil.rmtree(slot, ignore_errors=True)
        slot.mkdir()
        return n

    def _link(self, slot: Path, ref: FileRef) -> None:
        (slot / ref.logical).write_text(
            f"<soft_link>../../projects/{self.proj_name}/{ref.physical}</soft_link>\n")

    def _lay_out(self, slot: Path, app_files: list[FileRef], inputs: list[FileRef],
                 outputs: list[FileRef]) -> None:
        # The soft_links knob overrides the job templates only: an app version's own
        # <copy_file/> is the app's packaging, and the real client always honours it.
        for ref in app_files:
            if ref.copy_file:
                shutil.copyfile(self.proj_dir / ref.physical, slot / ref.logical)
            else:
                self._link(slot, ref)
        for ref in inputs:
            if ref.copy_file and not self.soft_links:
                shutil.copyfile(self.proj_dir / ref.physical, slot / ref.logical)
            else:
                self._link(slot, ref)
        for ref in outputs:
            if not ref.copy_file or self.soft_links:
                self._link(slot, ref)
        (slot / "stderr.txt").touch()

    def _init_data(self, task: SentTask, slot_no: int) -> str:
        wu, r, av = task.wu, task.result, task.app_version
        return (
            "<app_init_data>\n<major_version>7</major_version>\n<minor_version>20</minor_version>\n"
            f"<release>5</release>\n<app_version>{av['version_num']}</app_version>\n"
            f"<userid>1</userid>\n<teamid>0</teamid>\n<hostid>{self.host_id}</hostid>\n"
            f"<app_name>{task.app_name}</app_name>\n<user_name>admin</user_name>\n"
            f"<project_dir>{self.proj_dir}</project_dir>\n<boinc_dir>{self.dir}</boinc_dir>\n"
            f"<authenticator>{self.authenticator}</authenticator>\n"
            f"<wu_name>{wu['name']}</wu_name>\n<result_name>{r['name']}</result_name>\n"
            f"<comm_obj_name>boinc_{slot_no}</comm_obj_name>\n<slot>{slot_no}</slot>\n"
            f"<client_pid>{os.getpid()}</client_pid>\n<wu_cpu_time>0.000000</wu_cpu_time>\n"
            "<checkpoint_period>60.000000</checkpoint_period>\n<ncpus>1</ncpus>\n"
            f"<rsc_fpops_est>{wu['rsc_fpops_est']:f}</rsc_fpops_est>\n"
            f"<rsc_fpops_bound>{wu['rsc_fpops_bound']:f}</rsc_fpops_bound>\n"
            f"<rsc_memory_bound>{wu['rsc_memory_bound']:f}</rsc_memory_bound>\n"
            f"<rsc_disk_bound>{wu['rsc_disk_bound']:f}</rsc_disk_bound>\n"
            f"<computation_deadline>{r['report_deadline']:f}</computation_deadline>\n"
            f"<host_info>\n<p_ncpus>{self.ncpus}</p_ncpus>\n<p_fpops>{self.flops:f}</p_fpops>\n"
            "<p_model>TEST STAND-IN CPU</p_model>\n<os_name>Linux</os_name>\n</host_info>\n"
            "<proxy_info>\n</proxy_info>\n<global_preferences>\n</global_preferences>\n"
            "</app_init_data>\n"
        )

    # -- running -----------------------------------------------------------------------
    def _execute(self, slot: Path, main: FileRef, argv: list[str], limit: float) -> None:
        """Run the app (restarting premature exit(0)s) until it finishes or fails."""
        exec_path = f"../../projects/{self.proj_name}/{main.physical}"
        started = time.monotonic()
        for _ in range(self.max_restarts + 1):
            with (slot / "stderr.txt").open("ab") as err, \
                    (self.dir / "stdoutdae.txt").open("ab") as out:
                proc = subprocess.Popen([exec_path, *argv], cwd=slot, stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=err, start_new_session=True)
            try:
                rc = proc.wait(timeout=max(0.0, limit - (time.monotonic() - started)))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise TaskFailed(CS_COMPUTE_ERROR, EXIT_TIME_LIMIT_EXCEEDED,
                                 f"exceeded elapsed time limit {limit:.2f}") from None
            if rc < 0:
                raise TaskFailed(CS_COMPUTE_ERROR, EXIT_SIGNAL, f"process got signal {-rc}")
            if rc:
                raise TaskFailed(CS_COMPUTE_ERROR, rc,
                                 f"process exited with code {rc} (0x{rc:x}, {rc - 256})")
            if (slot / "boinc_finish_called").exists():
                return
            with (self.dir / "stdoutdae.txt").open("a") as log:
                log.write(f"Task {slot.name} exited with zero status but no 'finished' file\n")
        raise TaskFailed(CS_COMPUTE_ERROR, ERR_TOO_MANY_EXITS, "too many exit(0)s")

    def _outputs(self, slot: Path, outputs: list[FileRef], infos: dict[str, Any]) -> str | None:
        """Rename copy_file outputs, check and "upload" them; xml_doc_out, or None on error."""
        for ref in outputs:
            if ref.copy_file and not self.soft_links and (slot / ref.logical).is_file():
                (slot / ref.logical).replace(self.proj_dir / ref.physical)
        present = []
        for ref in outputs:
            path = self.proj_dir / ref.physical
            max_nbytes = float((infos[ref.physical].findtext("max_nbytes") or "0").strip())
            if not path.is_file():
                if ref.optional:
                    continue
                return None
            if max_nbytes and path.stat().st_size > max_nbytes:
                path.unlink()
                return None
            present.append((ref, path, max_nbytes))
        xml = ""
        for ref, path, max_nbytes in present:
            data = path.read_bytes()
            if self.tamper is not None:
                data = self.tamper(data)
            self.config.upload_path(ref.physical, create=True).write_bytes(data)
            path.unlink()
            url = (infos[ref.physical].findtext("url") or "").strip()
            xml += (f"<file_info>\n    <name>{ref.physical}</name>\n"
                    f"    <nbytes>{len(data):f}</nbytes>\n    <max_nbytes>{max_nbytes:f}"
                    f"</max_nbytes>\n    <md5_cksum>{hashlib.md5(data).hexdigest()}</md5_cksum>\n"
                    f"    <url>{url}</url>\n</file_info>\n")
        return xml

    def _run(self, task: SentTask, action: tuple[str, int]) -> Report:
        started = time.monotonic()
        slot_no = self._slot()
        slot = self.dir / "slots" / str(slot_no)
        message, xml_out = "", ""
        state, status = CS_FILES_UPLOADED, 0
        try:
            av_doc = parse_fragment(task.app_version["xml_doc"])
            wu_doc = parse_fragment(task.wu["xml_doc"] or "")
            res_doc = parse_fragment(task.result["xml_doc_in"] or "")
            out_parent = res_doc.find(".//result")
            av_refs = _refs(av_doc.find("app_version"))
            outputs = _refs(out_parent)
            if action[0] == "abort":
                raise TaskFailed(CS_ABORTED, EXIT_ABORTED_VIA_GUI, "aborted by user")
            with self.lock:
                for fi in [*av_doc.iterfind("file_info"), *wu_doc.iterfind("file_info")]:
                    self.fetch(fi)
            self._lay_out(slot, av_refs, _refs(wu_doc.find("workunit")), outputs)
            (slot / "init_data.xml").write_text(self._init_data(task, slot_no))
            if action[0] == "fail":
                code = action[1]
                raise TaskFailed(CS_COMPUTE_ERROR, code,
                                 f"process exited with code {code} (0x{code:x}, {code - 256})")
            cmdlines = [c.text or "" for c in wu_doc.iter("command_line")]
            argv = parse_command_line(cmdlines[-1] if cmdlines else "")
            limit = min(task.wu["rsc_fpops_bound"] / self.flops, self.max_task_seconds)
            main = next(ref for ref in av_refs if ref.main_program)
            self._execute(slot, main, argv, limit)
            result = self._outputs(slot, outputs, _file_infos(res_doc))
            if result is None:
                state = CS_COMPUTE_ERROR
            else:
                xml_out = result
        except TaskFailed as failed:
            state, status, message = failed.client_state, failed.exit_status, failed.message
        stderr_txt = (slot / "stderr.txt").read_bytes()[-STDERR_MAX:].decode(errors="replace") \
            if (slot / "stderr.txt").exists() else ""
        shutil.rmtree(slot, ignore_errors=True)
        with self.lock:
            self.busy_slots.discard(slot_no)
        msg = f"<message>\n{message}\n</message>\n" if message else ""
        stderr_out = (f"<core_client_version>{CLIENT_VERSION}</core_client_version>\n<![CDATA[\n"
                      f"{msg}<stderr_txt>\n{stderr_txt}\n</stderr_txt>\n]]>\n")
        return Report(result_id=task.result["id"], wu_id=task.wu["id"], name=task.result["name"],
                      client_state=state, exit_status=status,
                      elapsed_time=round(time.monotonic() - started, 3), xml_doc_out=xml_out,
                      stderr_out=stderr_out)

    def run(self, tasks: list[SentTask]) -> list[Report]:
        """Run the tasks (up to ncpus at a time); tasks told to go silent are dropped."""
        planned = []
        for task in tasks:
            action = self.actions.popleft() if self.actions else ("run", 0)
            if action[0] != "no_reply":
                planned.append((task, action))
        with ThreadPoolExecutor(max_workers=self.ncpus) as pool:
            reports = list(pool.map(lambda ta: self._run(*ta), planned))
        self._garbage_collect(tasks)
        return reports

    def _garbage_collect(self, tasks: list[SentTask]) -> None:
        """Like the client, forget WU input files once their tasks are done (not sticky)."""
        for task in tasks:
            for name, fi in _file_infos(parse_fragment(task.wu["xml_doc"] or "")).items():
                if fi.find("sticky") is None:
                    (self.proj_dir / name).unlink(missing_ok=True)
