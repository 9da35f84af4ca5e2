"""TEST STAND-IN for BOINC's validator, script_assimilator and file_deleter (1.6.2).

Not product code. Each function is one pass of the daemon configured in config.xml's
``<daemons>``:

* ``sample_bitwise_validator --app A``: outputs must exist and agree byte for byte;
  ``script_validator --app A --init_script "X" / --compare_script "X"`` runs ``../bin/X``
  from ``<project>/tmp_<host>`` through the shell (exit 0 = valid, 3 = transient, other =
  invalid). No validator configured: WUs keep need_validate=1 (a real project stalls).
* ``script_assimilator --app A --script "X"`` runs ``../bin/X`` exactly as 1.6.2 does:
  the bare name gets ``<wu_id> <output paths>``, a name with tokens gets NO arguments
  (the split() bug), a failed WU gets ``--error <mask> <wu_name> <wu_id> <batch>``. A
  nonzero exit stops the daemon (``AssimilatorStopped``), leaving assimilate_state=1.
* ``file_deleter``: deletes the inputs (except ``<no_delete/>``) and uploads of WUs and
  results with file_delete_state=1, then sets 2.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from .common import (
    AS_DONE,
    AS_READY,
    FD_DONE,
    FD_ERROR,
    FD_READY,
    OVER,
    SUCCESS,
    V_INCONCLUSIVE,
    V_INIT,
    V_INVALID,
    V_VALID,
    VALIDATE_ERROR,
    WU_TOO_MANY_SUCCESS,
    boinc_split,
    parse_fragment,
)
from .server import AssimilatorStopped, Server, option

TRANSIENT = 3


def output_files(result: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(physical name, logical name, no_delete) of each output in a result's xml_doc_in."""
    doc = parse_fragment(result["xml_doc_in"] or "")
    logical = {(ref.findtext("file_name") or "").strip(): (ref.findtext("open_name") or "").strip()
               for ref in doc.iter("file_ref")}
    out = []
    for fi in doc.iter("file_info"):
        name = (fi.findtext("name") or "").strip()
        out.append((name, logical.get(name, ""), fi.find("no_delete") is not None))
    return out


def output_paths(srv: Server, result: dict[str, Any]) -> list[str]:
    """get_output_file_paths(): absolute paths in the upload hierarchy."""
    return [str(srv.config.upload_path(name)) for name, _, _ in output_files(result)]


def run_script(srv: Server, daemon: str, cmd: str) -> int:
    """system(cmd) from ``<project>/tmp_<host>`` with the daemon's environment; exit code."""
    srv.config.tmp_dir.mkdir(exist_ok=True)
    srv.log(daemon, f"running: {cmd}")
    with (srv.config.log_dir / f"{daemon}.log").open("a") as log:
        done = subprocess.run(cmd, shell=True, cwd=srv.config.tmp_dir, env=dict(os.environ),
                              stdout=log, stderr=log, check=False)
    return done.returncode


def script_command(script: str, defaults: list[str], values: dict[str, str]) -> str:
    """``../bin/<script[0]>`` plus the keyword tokens as BOINC's buggy split() leaves them."""
    tokens = boinc_split(script)
    if len(tokens) == 1:
        tokens += defaults
    return f"../bin/{tokens[0]}" + "".join(f" {values[t]}" for t in tokens[1:] if t in values)


class _Validator:
    def __init__(self, srv: Server, argv: list[str]) -> None:
        self.srv = srv
        self.bitwise = Path(argv[0]).name == "sample_bitwise_validator"
        self.init_script = option(argv, "init_script")
        self.compare_script = option(argv, "compare_script")
        self.name = Path(argv[0]).name

    def init(self, r: dict[str, Any]) -> int:
        paths = output_paths(self.srv, r)
        if self.bitwise:
            return 0 if all(Path(p).is_file() for p in paths) else 1
        if not self.init_script:
            return 0
        values = {"files": " ".join(paths), "result_id": str(r["id"]),
                  "runtime": f"{r['elapsed_time']:f}"}
        return run_script(self.srv, self.name, script_command(self.init_script, ["files"], values))

    def compare(self, r1: dict[str, Any], r2: dict[str, Any]) -> bool:
        p1, p2 = output_paths(self.srv, r1), output_paths(self.srv, r2)
        if self.bitwise:
            return [Path(p).read_bytes() for p in p1] == [Path(p).read_bytes() for p in p2]
        if not self.compare_script:
            return True
        values = {"files": " ".join(p1), "files2": " ".join(p2), "result_id": str(r1["id"]),
                  "result_id2": str(r2["id"]), "runtime": f"{r1['elapsed_time']:f}",
                  "runtime2": f"{r2['elapsed_time']:f}"}
        cmd = script_command(self.compare_script, ["files", "files2"], values)
        return run_script(self.srv, self.name, cmd) == 0

    def handle(self, wu: dict[str, Any]) -> list[str]:
        """validator.cpp handle_wu(); returns [] and keeps need_validate on a transient error."""
        srv, tag = self.srv, f"[WU#{wu['id']} {wu['name']}]"
        results = srv.q("select * from result where workunitid=%s and server_state=%s and "
                        "outcome=%s order by id", wu["id"], OVER, SUCCESS)
        canonical = next((r for r in results if r["id"] == wu["canonical_resultid"]), None)
        todo = [r for r in results if r["validate_state"] in (V_INIT, V_INCONCLUSIVE)]
        good = []
        for r in todo:
            status = self.init(r)
            if status == TRANSIENT:
                srv.log(self.name, f"{tag} [RESULT#{r['id']}] transient error; will retry")
                return []
            if status:
                srv.update("result", r["id"], {"outcome": VALIDATE_ERROR,
                                               "validate_state": V_INVALID})
            else:
                good.append(r)
        changes: dict[str, Any] = {"need_validate": 0}
        if canonical is not None:
            for r in good:
                valid = self.compare(r, canonical)
                srv.update("result", r["id"], {"validate_state": V_VALID if valid else V_INVALID,
                                               "granted_credit": 0})
        else:
            for r in good:
                matches = [o for o in good if o is r or self.compare(r, o)]
                if len(matches) >= wu["min_quorum"]:
                    canonical = r
                    for o in good:
                        state = V_VALID if o in matches else V_INVALID
                        srv.update("result", o["id"], {"validate_state": state,
                                                       "granted_credit": 0})
                    changes.update(canonical_resultid=r["id"], canonical_credit=0,
                                   assimilate_state=AS_READY, transition_time=int(time.time()))
                    break
            if canonical is None:
                for r in good:
                    srv.update("result", r["id"], {"validate_state": V_INCONCLUSIVE})
                if len(results) > wu["max_success_results"]:
                    changes["error_mask"] = wu["error_mask"] | WU_TOO_MANY_SUCCESS
                if len(results) >= wu["target_nresults"]:
                    changes["target_nresults"] = len(results) + 1
                changes["transition_time"] = int(time.time())
        srv.update("workunit", wu["id"], changes)
        outcome = (f"canonical result {canonical['id']}" if canonical is not None
                   else "no consensus")
        return [srv.log(self.name, f"{tag} validated: {outcome}")]


def validator_pass(srv: Server) -> list[str]:
    """Every configured validator, then a log line for apps nobody validates."""
    events: list[str] = []
    served: set[int] = set()
    for argv in srv.daemons("sample_bitwise_validator") + srv.daemons("script_validator"):
        app = srv.q("select id from app where name=%s", option(argv, "app") or "")
        if not app:
            continue
        served.add(app[0]["id"])
        validator = _Validator(srv, argv)
        for wu in srv.q("select * from workunit where appid=%s and need_validate=1 order by id",
                        app[0]["id"]):
            events += validator.handle(wu)
    waiting = srv.q("select distinct appid from workunit where need_validate=1")
    for row in waiting:
        if row["appid"] not in served:
            srv.log("harness", f"app #{row['appid']} has WUs with need_validate=1 but no "
                    "validator daemon in config.xml: a real project would stall here")
    return events


def _assimilate_command(srv: Server, script: str, wu: dict[str, Any]) -> str:
    if not wu["canonical_resultid"]:
        name = boinc_split(script)[0]
        return (f"../bin/{name} --error {wu['error_mask']} {wu['name']} {wu['id']} "
                f"{wu['batch']}")
    canonical = srv.q("select * from result where id=%s", wu["canonical_resultid"])[0]
    files = output_files(canonical)
    paths = [str(srv.config.upload_path(name)) for name, _, _ in files]
    values = {
        "files": " ".join(paths),
        "files2": " ".join(f"{p} {lg}" for p, (_, lg, _) in zip(paths, files, strict=True)),
        "wu_id": str(wu["id"]), "wu_name": wu["name"], "result_id": str(canonical["id"]),
        "runtime": f"{canonical['elapsed_time']:f}", "batch_id": str(wu["batch"]),
    }
    return script_command(script, ["wu_id", "files"], values)


def assimilator_pass(srv: Server) -> list[str]:
    """script_assimilator: one handler call per ready WU; a failure stops the daemon."""
    if "script_assimilator" in srv.stopped:
        return []
    events: list[str] = []
    for argv in srv.daemons("script_assimilator"):
        app = srv.q("select id from app where name=%s", option(argv, "app") or "")
        script = option(argv, "script")
        if not app or not script:
            continue
        for wu in srv.q("select * from workunit where appid=%s and assimilate_state=%s "
                        "order by id", app[0]["id"], AS_READY):
            rc = run_script(srv, "script_assimilator", _assimilate_command(srv, script, wu))
            if rc:
                srv.stopped.add("script_assimilator")
                message = f"[{wu['name']}] handler error {rc * 256}; exiting"
                srv.log("script_assimilator", message)
                raise AssimilatorStopped("script_assimilator", message)
            srv.update("workunit", wu["id"],
                       {"assimilate_state": AS_DONE, "transition_time": int(time.time())})
            events.append(srv.log("script_assimilator", f"[{wu['name']}] assimilated"))
    return events


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def file_deleter_pass(srv: Server) -> list[str]:
    """Delete inputs and outputs of finished WUs/results (file_delete_state 1 -> 2, or 3)."""
    if not srv.daemons("file_deleter"):
        return []
    events = []
    for wu in srv.q("select id, name, xml_doc from workunit where file_delete_state=%s",
                    FD_READY):
        ok = True
        for fi in parse_fragment(wu["xml_doc"] or "").iterfind("file_info"):
            if fi.find("no_delete") is None:
                path = srv.config.download_path((fi.findtext("name") or "").strip())
                ok = _unlink(path) and ok
                if srv.config.cache_md5_info:
                    ok = _unlink(Path(f"{path}.md5")) and ok
        srv.update("workunit", wu["id"], {"file_delete_state": FD_DONE if ok else FD_ERROR})
        events.append(srv.log("file_deleter", f"[WU#{wu['id']} {wu['name']}] deleted inputs"))
    for r in srv.q("select id, name, xml_doc_in from result where file_delete_state=%s",
                   FD_READY):
        ok = all(_unlink(srv.config.upload_path(name))
                 for name, _, keep in output_files(r) if not keep)
        srv.update("result", r["id"], {"file_delete_state": FD_DONE if ok else FD_ERROR})
        events.append(srv.log("file_deleter", f"[RESULT#{r['id']} {r['name']}] deleted outputs"))
    return events
