"""TEST STAND-IN for BOINC's transitioner and feeder/scheduler (server release 1.6.2).

Not product code. One call = one pass of the daemon against the real database, with the
rules of sched/transitioner.cpp and the scheduler's send/report paths as boinc-facts.md
§2 describes them: result rows ``<wu>_<n>`` with every column, NO_REPLY after the
report deadline, error_mask 2/8 from ``nerrors > max_error_results`` and "needs another
result but max_total_results is reached", unsent results of failed or cancelled WUs
set OVER/DIDNT_NEED, need_validate / assimilate_state / file_delete_state transitions,
and the scheduler that only sends the newest non-deprecated app version.
"""

from __future__ import annotations

import random
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import (
    AS_DONE,
    AS_INIT,
    AS_READY,
    ASSIGN_HOST,
    ASSIGN_USER,
    CLIENT_ERROR,
    CLIENT_PLATFORM,
    COULDNT_SEND,
    CS_FILES_UPLOADED,
    DIDNT_NEED,
    FD_DONE,
    FD_INIT,
    FD_READY,
    IN_PROGRESS,
    INT_MAX,
    NO_REPLY,
    OVER,
    SUCCESS,
    TRANSITION_NO_NEW_RESULTS,
    UNSENT,
    V_INCONCLUSIVE,
    V_INIT,
    V_INVALID,
    V_NO_CHECK,
    V_TOO_LATE,
    VALIDATE_ERROR,
    WU_COULDNT_SEND,
    WU_TOO_MANY_ERRORS,
    WU_TOO_MANY_TOTAL,
    Config,
    Daemon,
    daemon_log,
)
from .start_stop import running_daemons
from .templates import process_result_template

RESULT_COLUMNS = (
    "create_time", "workunitid", "server_state", "outcome", "client_state", "hostid", "userid",
    "report_deadline", "sent_time", "received_time", "name", "cpu_time", "xml_doc_in",
    "xml_doc_out", "stderr_out", "batch", "file_delete_state", "validate_state",
    "claimed_credit", "granted_credit", "opaque", "random", "app_version_num", "appid",
    "exit_status", "teamid", "priority", "elapsed_time", "flops_estimate", "app_version_id",
    "runtime_outlier", "size_class", "peak_working_set_size", "peak_swap_size",
    "peak_disk_usage",
)
TEN_DAYS = 10 * 86400


class DaemonExited(RuntimeError):
    """A daemon hit an error on which the real one calls exit(); it stays down."""

    def __init__(self, daemon: str, message: str) -> None:
        super().__init__(f"{daemon}: {message}")
        self.daemon = daemon


class AssimilatorStopped(DaemonExited):
    """script_assimilator's handler returned nonzero: the real daemon logs and exits."""


@dataclass
class Server:
    """One pass's view of the project: config, an autocommit connection, the daemon logs."""

    config: Config
    conn: Any
    stopped: set[str] = field(default_factory=set)
    running: list[Daemon] | None = None

    def q(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        cur = self.conn.cursor()
        cur.execute(sql, args)
        return [_decode(row) for row in cur.fetchall()]

    def x(self, sql: str, *args: Any) -> int:
        cur = self.conn.cursor()
        cur.execute(sql, args)
        return int(cur.rowcount)

    def log(self, daemon: str, message: str) -> str:
        daemon_log(self.config, daemon, message)
        return f"{daemon}: {message}"

    def daemons(self, program: str) -> list[list[str]]:
        """Argument lists of the ``<daemon>``s running ``program`` that are really running.

        ``running`` is what bin/start's model says runs (``start_stop.running_daemons``):
        an entry that lost its lock to another one never does its job.
        """
        entries = self.running if self.running is not None else running_daemons(self.config)
        found = []
        for d in entries:
            argv = shlex.split(d.cmd)
            if argv and Path(argv[0]).name == program:
                found.append(argv)
        return found

    def update(self, table: str, row_id: int, changes: dict[str, Any]) -> None:
        if changes:
            sets = ", ".join(f"{k}=%s" for k in changes)
            self.x(f"update {table} set {sets} where id=%s", *changes.values(), row_id)


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in row.items()}


def option(argv: list[str], name: str) -> str | None:
    """The value of ``--name``/``-name`` in a daemon's argv."""
    for i, token in enumerate(argv[:-1]):
        if token in (f"--{name}", f"-{name}"):
            return argv[i + 1]
    return None


def create_results(srv: Server, wu: dict[str, Any], suffixes: list[int]) -> list[str]:
    """create_result(): insert results ``<wu>_<n>`` with the processed output template."""
    path = Path(f"{srv.config.root}/{wu['result_template_file']}")
    try:
        template = path.read_text()
    except OSError:
        srv.log("transitioner", f"Failed to read result template file '{path}': fopen() failed")
        raise DaemonExited(
            "transitioner", f"[WU#{wu['id']} {wu['name']}] handle_wu: -108; quitting"
        ) from None
    rows = []
    names = []
    for n in suffixes:
        name = f"{wu['name']}_{n}"
        base = f"{name}_r{random.randrange(2**31)}_"
        values: dict[str, Any] = dict.fromkeys(RESULT_COLUMNS, 0)
        values.update(
            create_time=int(time.time()), workunitid=wu["id"],
            server_state=UNSENT if wu["size_class"] < 0 else 1, name=name,
            xml_doc_in=process_result_template(template, base, srv.config.upload_url),
            xml_doc_out="", stderr_out="", batch=wu["batch"], random=random.randrange(2**31),
            appid=wu["appid"], priority=wu["priority"], size_class=wu["size_class"],
        )
        rows.append(tuple(values[c] for c in RESULT_COLUMNS))
        names.append(name)
    placeholders = "(" + ",".join(["%s"] * len(RESULT_COLUMNS)) + ")"
    cur = srv.conn.cursor()
    cur.executemany(f"insert into result ({','.join(RESULT_COLUMNS)}) values {placeholders}",
                    rows)
    return [srv.log("transitioner", f"[WU#{wu['id']} {wu['name']}] created result {n}")
            for n in names]


def _suffix(name: str) -> int:
    tail = name.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def handle_wu(srv: Server, wu: dict[str, Any], results: list[dict[str, Any]],
              now: int) -> list[str]:
    """transitioner.cpp handle_wu() for one work unit."""
    events: list[str] = []
    tag = f"[WU#{wu['id']} {wu['name']}]"
    new = dict(wu)
    n = dict.fromkeys(("unsent", "inprogress", "success", "errors", "couldnt_send"), 0)
    have_new_to_validate = False
    canonical = next((r for r in results if r["id"] == wu["canonical_resultid"]), None)
    canonical_deleted = canonical is not None and canonical["file_delete_state"] == FD_DONE
    for r in results:
        state, outcome = r["server_state"], r["outcome"]
        if state == UNSENT:
            n["unsent"] += 1
        elif state == IN_PROGRESS and r["report_deadline"] < now:
            srv.update("result", r["id"], {"server_state": OVER, "outcome": NO_REPLY})
            r.update(server_state=OVER, outcome=NO_REPLY)
            events.append(srv.log("transitioner", f"{tag} [RESULT#{r['id']} {r['name']}] result "
                                  "timed out; server_state:IN_PROGRESS=>OVER; outcome:NO_REPLY"))
        elif state == IN_PROGRESS:
            n["inprogress"] += 1
        elif state == OVER and outcome == COULDNT_SEND:
            n["couldnt_send"] += 1
        elif state == OVER and outcome == SUCCESS:
            n["success"] += 1
            if r["validate_state"] == V_INIT and canonical_deleted:
                srv.update("result", r["id"], {"validate_state": V_TOO_LATE})
            elif r["validate_state"] == V_INIT:
                have_new_to_validate = True
        elif state == OVER and outcome in (CLIENT_ERROR, VALIDATE_ERROR):
            n["errors"] += 1
    if have_new_to_validate and n["success"] >= wu["min_quorum"]:
        new["need_validate"] = 1
    if n["couldnt_send"]:
        new["error_mask"] |= WU_COULDNT_SEND
    if n["errors"] and not (n["success"] or n["inprogress"]):
        new["hr_class"] = 0
        new["app_version_id"] = 0
    if n["errors"] > wu["max_error_results"]:
        new["error_mask"] |= WU_TOO_MANY_ERRORS
    needed = max(0, wu["target_nresults"] - n["unsent"] - n["inprogress"] - n["success"])
    allowed = wu["max_total_results"] - len(results)
    if allowed < 0 or (allowed == 0 and needed > 0):
        new["error_mask"] |= WU_TOO_MANY_TOTAL
    needed = min(needed, max(allowed, 0))
    if new["error_mask"]:
        for r in results:
            if r["server_state"] == UNSENT:
                srv.update("result", r["id"], {"server_state": OVER, "outcome": DIDNT_NEED})
                r.update(server_state=OVER, outcome=DIDNT_NEED)
            elif (r["server_state"] == OVER and r["outcome"] == SUCCESS
                  and r["validate_state"] in (V_INIT, V_INCONCLUSIVE)):
                srv.update("result", r["id"], {"validate_state": V_NO_CHECK})
                r["validate_state"] = V_NO_CHECK
        if new["assimilate_state"] == AS_INIT:
            new["assimilate_state"] = AS_READY
    elif (not wu["canonical_resultid"] and needed > 0
          and wu["transitioner_flags"] != TRANSITION_NO_NEW_RESULTS):
        top = max((_suffix(r["name"]) for r in results), default=-1)
        events += create_results(srv, wu, [top + 1 + j for j in range(needed)])
    all_over_validated = all(
        r["server_state"] == OVER
        and not (r["outcome"] == SUCCESS and r["validate_state"] == V_INIT)
        and not (r["outcome"] == NO_REPLY and r["report_deadline"] > now)
        for r in results
    )
    if new["assimilate_state"] == AS_DONE:
        if all_over_validated and new["file_delete_state"] == FD_INIT:
            new["file_delete_state"] = FD_READY
        for r in results:
            if r is canonical and not all_over_validated:
                continue
            deletable = r["outcome"] == CLIENT_ERROR or (
                r["outcome"] == SUCCESS and r["validate_state"] != V_INIT)
            if deletable and r["file_delete_state"] == FD_INIT:
                srv.update("result", r["id"], {"file_delete_state": FD_READY})
    if new["canonical_resultid"]:
        new["transition_time"] = INT_MAX
    else:
        new["transition_time"] = now + max(int(1.5 * wu["delay_bound"]), TEN_DAYS)
    for r in results:
        if r["server_state"] == IN_PROGRESS:
            new["transition_time"] = min(new["transition_time"], r["report_deadline"])
    changes = {k: v for k, v in new.items() if v != wu[k]}
    srv.update("workunit", wu["id"], changes)
    shown = {k: v for k, v in changes.items() if k != "transition_time"}
    if shown:
        events.append(srv.log("transitioner", f"{tag} {shown}"))
    return events


def transitioner_pass(srv: Server) -> list[str]:
    """One pass over the WUs whose transition_time has come."""
    if not srv.daemons("transitioner"):
        return []
    now = int(time.time())
    events: list[str] = []
    wus = srv.q("select * from workunit where transition_time <= %s order by transition_time, id"
                " limit 1000", now)
    for wu in wus:
        results = srv.q("select * from result where workunitid=%s order by id", wu["id"])
        events += handle_wu(srv, wu, results, now)
    return events


@dataclass
class SentTask:
    """What a scheduler reply tells the client about one task."""

    result: dict[str, Any]
    wu: dict[str, Any]
    app_version: dict[str, Any]
    app_name: str


def _create_assigned(srv: Server, host_id: int, user_id: int) -> list[str]:
    """sched_assign: make the result of a job targeted at this host or user, if none yet."""
    rows = srv.q(
        "select w.* from assignment a join workunit w on w.id=a.workunitid "
        "where a.multi=0 and ((a.target_type=%s and a.target_id=%s) or "
        "(a.target_type=%s and a.target_id=%s)) and w.error_mask=0 and not exists "
        "(select 1 from result r where r.workunitid=w.id)",
        ASSIGN_HOST, host_id, ASSIGN_USER, user_id)
    events: list[str] = []
    for wu in rows:
        events += create_results(srv, wu, [0])
    return events


def scheduler_rpc(srv: Server, host_id: int, user_id: int, limit: int,
                  events: list[str]) -> list[SentTask]:
    """Send UNSENT results this x86_64 Linux host can run (feeder order, newest version)."""
    if not srv.daemons("feeder"):
        return []
    platform = srv.q("select id from platform where name=%s", CLIENT_PLATFORM)
    if not platform:
        return []
    newest: dict[int, dict[str, Any]] = {}
    for av in srv.q("select v.*, a.name as app_name from app_version v join app a on "
                    "a.id=v.appid where v.platformid=%s and v.deprecated=0 and a.deprecated=0 "
                    "and v.plan_class='' order by v.version_num desc", platform[0]["id"]):
        newest.setdefault(av["appid"], av)
    events += _create_assigned(srv, host_id, user_id)
    now = int(time.time())
    sent: list[SentTask] = []
    for r in srv.q("select * from result where server_state=%s "
                   "order by priority desc, workunitid limit 1000", UNSENT):
        if r["appid"] not in newest or len(sent) >= limit:
            continue
        av = newest[r["appid"]]
        wu = srv.q("select * from workunit where id=%s", r["workunitid"])[0]
        if wu["app_version_num"] and wu["app_version_num"] != av["version_num"]:
            continue
        deadline = now + wu["delay_bound"]
        if not srv.x("update result set server_state=%s, hostid=%s, userid=%s, sent_time=%s, "
                     "report_deadline=%s, app_version_id=%s, app_version_num=%s, "
                     "flops_estimate=%s where id=%s and server_state=%s",
                     IN_PROGRESS, host_id, user_id, now, deadline, av["id"],
                     av["version_num"], 1e9, r["id"], UNSENT):
            continue
        srv.x("update workunit set transition_time=if(transition_time<%s, transition_time, %s)"
              " where id=%s", deadline, deadline, wu["id"])
        r.update(server_state=IN_PROGRESS, hostid=host_id, sent_time=now,
                 report_deadline=deadline)
        sent.append(SentTask(result=r, wu=wu, app_version=av, app_name=av["app_name"]))
        events.append(srv.log("scheduler", f"[HOST#{host_id}] Sending [RESULT#{r['id']} "
                              f"{r['name']}] (app version {av['version_num']})"))
    return sent


@dataclass
class Report:
    """A finished task as the client reports it in its next scheduler request."""

    result_id: int
    wu_id: int
    name: str
    client_state: int
    exit_status: int
    elapsed_time: float
    xml_doc_out: str
    stderr_out: str


def handle_reports(srv: Server, reports: list[Report]) -> list[str]:
    """handle_request.cpp handle_results(): store the report, mark the WU for transition."""
    events = []
    now = int(time.time())
    for rep in reports:
        ok = rep.client_state == CS_FILES_UPLOADED and rep.exit_status == 0
        extra = "" if ok else f", validate_state={V_INVALID}"
        srv.x("update result set server_state=%s, outcome=%s, client_state=%s, exit_status=%s, "
              "received_time=%s, elapsed_time=%s, cpu_time=0, xml_doc_out=%s, stderr_out=%s"
              f"{extra} where id=%s and server_state=%s",
              OVER, SUCCESS if ok else CLIENT_ERROR, rep.client_state, rep.exit_status, now,
              rep.elapsed_time, rep.xml_doc_out, rep.stderr_out, rep.result_id, IN_PROGRESS)
        srv.x("update workunit set transition_time=%s where id=%s", now, rep.wu_id)
        events.append(srv.log("scheduler", f"[RESULT#{rep.result_id} {rep.name}] reported: "
                              f"client_state {rep.client_state}, exit_status {rep.exit_status}"))
    return events
