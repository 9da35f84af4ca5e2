"""TEST STAND-IN for html/user/submit_rpc_handler.php (BOINC 1.6.2). Not product code.

Follows boinc-facts §10.2-10.5 and §4: permissions (``user_submit`` / ``user_submit_app``,
§10.6.4), create_batch (an INIT batch), submit_batch (runs ``bin/create_work --stdin`` as
PHP does; a failure leaves the batch INIT with njobs set, §10.2.5/2.7; only an INIT batch
takes jobs, §10.2.6; ``sandbox`` falls through into ``inline``, §10.2.8), query_batch with
job details and the lazy COMPLETE (§10.3.3) plus the "Deprecated" noise (§10.2.9),
query_batches, query_job, query_completed_job (crashes without a canonical result,
§10.3.5), abort_jobs (malformed reply, §10.5.1), abort_batch, retire_batch (rm -rf
results/<id>, §10.5.4) and ping.
"""

from __future__ import annotations

import hashlib
import html
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

from .rpc_files import authenticate, parse_request, user_submit, xml_error
from .web import Request

if TYPE_CHECKING:
    from .web import WebServer

SUBMIT_UTIL = "/var/www/boinctest/html/inc/submit_util.inc"
HANDLER = "/var/www/boinctest/html/user/submit_rpc_handler.php"
BATCH_COLUMNS = (
    "user_id",
    "create_time",
    "logical_start_time",
    "logical_end_time",
    "est_completion_time",
    "njobs",
    "fraction_done",
    "nerror_jobs",
    "state",
    "completion_time",
    "credit_estimate",
    "credit_canonical",
    "credit_total",
    "name",
    "app_id",
    "project_state",
    "description",
    "expire_time",
)
INIT, IN_PROGRESS, COMPLETE, ABORTED, RETIRED = 0, 1, 2, 3, 4
ERROR_WORDS = {
    1: "couldnt_send",
    2: "too_many_errors",
    4: "too_many_success",
    8: "too_many_total",
    16: "cancelled",
    32: "no_canonical",
}
JOB_PARAMS = (
    "rsc_fpops_est",
    "rsc_fpops_bound",
    "rsc_memory_bound",
    "rsc_disk_bound",
    "delay_bound",
)


def handle(req: Request, server: WebServer) -> None:
    root = parse_request(req, server)
    command = root.tag
    req.echo(f"<{command}>\n")
    commands = {
        "ping": ping,
        "create_batch": create_batch,
        "submit_batch": submit_batch,
        "query_batch": query_batch,
        "query_batches": query_batches,
        "query_job": query_job,
        "query_completed_job": query_completed_job,
        "abort_jobs": abort_jobs,
        "abort_batch": abort_batch,
        "retire_batch": retire_batch,
    }
    if command not in commands:
        xml_error(req, server, command, f"bad command {command}")
    commands[command](req, server, root)
    server.record(command, "")
    req.echo(f"</{command}>\n")


def _app(req: Request, server: WebServer, command: str, name: str) -> dict[str, Any]:
    apps = req.q("select * from app where name=%s", name)
    if not apps:
        xml_error(req, server, command, f"no app named {name} was found")
    return apps[0]


def _submitter(
    req: Request, server: WebServer, command: str, root: ET.Element, app: dict[str, Any] | None
) -> dict[str, Any]:
    """authenticate_user(): user_submit needed; for an app, submit_all or user_submit_app."""
    user = authenticate(req, server, command, root)
    us = user_submit(req, user["id"])
    if app is None:
        if us is None:
            xml_error(req, server, command, "no file access")
        return user
    if us is None or not (
        us["submit_all"]
        or req.q(
            "select * from user_submit_app where user_id=%s and app_id=%s", user["id"], app["id"]
        )
    ):
        xml_error(req, server, command, "no submit access")
    return user


def _batch(
    req: Request,
    server: WebServer,
    command: str,
    root: ET.Element,
    user: dict[str, Any],
    not_owner: str = "not owner of batch",
) -> dict[str, Any]:
    batch_id = int(root.findtext("batch_id") or 0)
    rows = (
        req.q("select * from batch where id=%s", batch_id)
        if batch_id
        else req.q("select * from batch where name=%s", root.findtext("batch_name") or "")
    )
    if not rows:
        xml_error(req, server, command, "no such batch")
    if rows[0]["user_id"] != user["id"]:
        xml_error(req, server, command, not_owner)
    return rows[0]


def ping(req: Request, server: WebServer, root: ET.Element) -> None:
    req.echo("<success>1</success>\n")


def create_batch(req: Request, server: WebServer, root: ET.Element) -> None:
    app = _app(req, server, "create_batch", (root.findtext("app_name") or "").strip())
    user = _submitter(req, server, "create_batch", root, app)
    values: dict[str, Any] = dict.fromkeys(BATCH_COLUMNS, 0)
    values.update(
        user_id=user["id"],
        create_time=int(time.time()),
        app_id=app["id"],
        name=(root.findtext("batch_name") or "").strip(),
        description="",
        expire_time=float(root.findtext("expire_time") or 0),
        state=INIT,
    )
    batch_id = req.x(
        f"insert into batch ({','.join(BATCH_COLUMNS)}) values "
        f"({','.join(['%s'] * len(BATCH_COLUMNS))})",
        *values.values(),
    )
    req.echo(f"<batch_id>{batch_id}</batch_id>\n        ")


def _stage(req: Request, server: WebServer, mode: str, source: str) -> str:
    if mode == "local_staged":
        return source
    if mode in ("sandbox", "inline"):  # sandbox has no break: it falls through into inline
        name = "jf_" + hashlib.md5(source.encode()).hexdigest()
        path = req.config.download_path(name, create=True)
        if not path.exists():
            path.write_text(source)
        return name
    xml_error(req, server, "submit_batch", f"unsupported file mode: {mode}")
    return ""


def submit_batch(req: Request, server: WebServer, root: ET.Element) -> None:
    spec = root.find("batch")
    if spec is None:
        xml_error(req, server, "submit_batch", "no batch")
        return
    app = _app(req, server, "submit_batch", (spec.findtext("app_name") or "").strip())
    user = _submitter(req, server, "submit_batch", root, app)
    in_template = (spec.findtext("input_template_filename") or f"{app['name']}_in").strip()
    out_template = (spec.findtext("output_template_filename") or f"{app['name']}_out").strip()
    template = ET.parse(req.config.root / "templates" / in_template).getroot()
    n_files = len(template.findall("file_info"))
    jobs = spec.findall("job")
    for i, job in enumerate(jobs):
        if len(job.findall("input_file")) != n_files:
            xml_error(
                req,
                server,
                "submit_batch",
                f"wrong # of input files for job {i}: need "
                f"{n_files}, got {len(job.findall('input_file'))}",
            )
    batch_id = int(spec.findtext("batch_id") or 0)
    if batch_id:
        batch = _batch(req, server, "submit_batch", spec, user)
        if batch["state"] != INIT:
            xml_error(req, server, "submit_batch", "batch not in init state")
        req.x("update batch set njobs=%s where id=%s", len(jobs), batch_id)
    else:
        values: dict[str, Any] = dict.fromkeys(BATCH_COLUMNS, 0)
        values.update(
            user_id=user["id"],
            create_time=int(time.time()),
            app_id=app["id"],
            njobs=len(jobs),
            description="",
            state=INIT,
            name=(spec.findtext("batch_name") or f"{user['name']}:{app['name']}"),
        )
        batch_id = req.x(
            f"insert into batch ({','.join(BATCH_COLUMNS)}) values "
            f"({','.join(['%s'] * len(BATCH_COLUMNS))})",
            *values.values(),
        )
    lines = []
    for job in jobs:
        names = [
            _stage(
                req,
                server,
                (f.findtext("mode") or "").strip(),
                (f.findtext("source") or "").strip(),
            )
            for f in job.findall("input_file")
        ]
        lines.append(f" --wu_name {(job.findtext('name') or '').strip()} {' '.join(names)}\n")
    argv = [
        "./bin/create_work",
        "--appname",
        app["name"],
        "--batch",
        str(batch_id),
        "--wu_template",
        f"templates/{in_template}",
        "--result_template",
        f"templates/{out_template}",
    ]
    params = spec.find("job_params")
    for tag in JOB_PARAMS:
        value = params.findtext(tag) if params is not None else None
        if value:
            argv += [f"--{tag}", value.strip()]
    argv.append("--stdin")
    done = subprocess.run(
        argv, cwd=req.config.root, input="".join(lines), text=True, capture_output=True, check=False
    )
    if done.returncode:
        xml_error(
            req,
            server,
            "submit_batch",
            f"create_work failed: {html.escape(done.stdout + done.stderr)}",
        )
    req.x("update batch set state=%s where id=%s", IN_PROGRESS, batch_id)
    req.echo(f"<batch_id>{batch_id}</batch_id>\n        ")


def _deprecated(req: Request) -> None:
    for line, prop in ((250, "njobs_success"), (251, "njobs_in_prog")):
        req.warning(
            "Deprecated",
            f"Creation of dynamic property BoincBatch::${prop} is deprecated",
            SUBMIT_UTIL,
            line,
        )


def _batch_params(req: Request, batch: dict[str, Any]) -> dict[str, Any]:
    """get_batch_params(): counts, fraction_done, and the lazy COMPLETE."""
    if batch["state"] == INIT:
        return batch
    _deprecated(req)
    if batch["state"] not in (IN_PROGRESS, COMPLETE):
        return batch
    wus = req.q("select canonical_resultid, error_mask from workunit where batch=%s", batch["id"])
    done = sum(1 for w in wus if w["canonical_resultid"] or w["error_mask"])
    errors = sum(1 for w in wus if w["error_mask"])
    changes: dict[str, Any] = {
        "njobs": len(wus),
        "nerror_jobs": errors,
        "fraction_done": done / len(wus) if wus else 0,
    }
    if batch["state"] == IN_PROGRESS and wus and done == len(wus):
        changes.update(state=COMPLETE, completion_time=time.time())
    sets = ", ".join(f"{k}=%s" for k in changes)
    req.x(f"update batch set {sets} where id=%s", *changes.values(), batch["id"])
    return {**batch, **changes}


def _print_batch(req: Request, batch: dict[str, Any]) -> None:
    app = req.q("select name from app where id=%s", batch["app_id"])
    fields = [
        "id",
        "create_time",
        "expire_time",
        "est_completion_time",
        "njobs",
        "fraction_done",
        "nerror_jobs",
        "state",
        "completion_time",
        "credit_estimate",
        "credit_canonical",
        "name",
    ]
    for f in fields:
        req.echo(f"        <{f}>{batch[f]}</{f}>\n")
    req.echo(f"        <app_name>{app[0]['name'] if app else 'none'}</app_name>\n")


def query_batch(req: Request, server: WebServer, root: ET.Element) -> None:
    user = _submitter(req, server, "query_batch", root, None)
    batch = _batch_params(req, _batch(req, server, "query_batch", root, user))
    details = (root.findtext("get_job_details") or "0").strip() not in ("", "0")
    req.echo("<batch>\n")
    _print_batch(req, batch)
    for wu in req.q("select * from workunit where batch=%s order by id", batch["id"]):
        req.echo(
            f"    <job>\n        <id>{wu['id']}</id>\n        <name>{wu['name']}</name>\n"
            f"        <canonical_instance_id>{wu['canonical_resultid']}"
            "</canonical_instance_id>\n"
        )
        if details:
            results = req.q("select * from result where workunitid=%s order by id", wu["id"])
            if wu["error_mask"]:
                status = "error"
            elif wu["canonical_resultid"]:
                status = "done"
            elif any(r["server_state"] == 4 for r in results):
                status = "in_progress"
            else:
                status = "queued"
            req.echo(f"        <status>{status}</status>\n")
            for bit, word in ERROR_WORDS.items():
                if wu["error_mask"] & bit:
                    req.echo(f"        <error>{word}</error>\n")
            failed = [r for r in results if r["outcome"] == 3]
            if wu["error_mask"] and failed:
                req.echo(f"        <exit_status>{failed[-1]['exit_status']}</exit_status>\n")
        req.echo("    </job>\n")
    req.echo("</batch>\n")


def query_batches(req: Request, server: WebServer, root: ET.Element) -> None:
    user = _submitter(req, server, "query_batches", root, None)
    req.echo("<batches>\n")
    for batch in req.q(
        "select * from batch where user_id=%s and state<>%s order by id", user["id"], RETIRED
    ):
        req.echo("    <batch>\n")
        _print_batch(req, _batch_params(req, batch))
        req.echo("   </batch>\n")
    req.echo("</batches>\n")


def query_job(req: Request, server: WebServer, root: ET.Element) -> None:
    user = _submitter(req, server, "query_job", root, None)
    wus = req.q("select * from workunit where id=%s", int(root.findtext("job_id") or 0))
    if not wus:
        xml_error(req, server, "query_job", "no such job")
    batch = req.q("select user_id from batch where id=%s", wus[0]["batch"])
    if not batch or batch[0]["user_id"] != user["id"]:
        xml_error(req, server, "query_job", "not owner")
    for r in req.q("select * from result where workunitid=%s order by id", wus[0]["id"]):
        state = {2: "Unsent", 4: "In progress"}.get(r["server_state"], "Completed")
        req.echo(
            f"    <instance>\n        <name>{r['name']}</name>\n        <id>{r['id']}</id>\n"
            f"        <state>{state}</state>\n    </instance>\n"
        )


def query_completed_job(req: Request, server: WebServer, root: ET.Element) -> None:
    user = _submitter(req, server, "query_completed_job", root, None)
    name = (root.findtext("job_name") or "").strip()
    wus = req.q("select * from workunit where name=%s", name)
    if not wus:
        xml_error(req, server, "query_completed_job", "no such job")
    wu = wus[0]
    batch = req.q("select user_id from batch where id=%s", wu["batch"])
    if not batch or batch[0]["user_id"] != user["id"]:
        xml_error(req, server, "query_completed_job", "not owner")
    if not wu["canonical_resultid"]:
        req.warning("Warning", "Undefined variable $job_id", HANDLER, 890)
        server.record("query_completed_job", "fatal: SQL syntax")
        req.fatal(
            "Uncaught mysqli_sql_exception: You have an error in your SQL syntax; check "
            "the manual that corresponds to your MariaDB server version",
            HANDLER,
            890,
        )
    r = req.q("select * from result where id=%s", wu["canonical_resultid"])[0]
    req.out.append(
        f"<completed_job>\n   <error_mask>{wu['error_mask']}</error_mask>\n"
        f"   <canonical_resultid>{r['id']}</canonical_resultid>\n"
        f"   <exit_status>{r['exit_status']}</exit_status>\n"
        f"   <elapsed_time>{r['elapsed_time']}</elapsed_time>\n"
        f"   <cpu_time>{r['cpu_time']}</cpu_time>\n"
        f"   <stderr_out><![CDATA[{html.escape(r['stderr_out'] or '', quote=False)}"
        "]]></stderr_out>\n</completed_job>\n"
    )


def _cancel(req: Request, wu_ids: list[int]) -> None:
    """abort_workunit(): error_mask |= 16, file_delete_state=1, unsent results DIDNT_NEED."""
    now = int(time.time())
    for wu_id in wu_ids:
        req.x(
            "update workunit set error_mask=error_mask|16, file_delete_state=1, "
            "transition_time=%s where id=%s",
            now,
            wu_id,
        )
        req.x(
            "update result set server_state=5, outcome=5 where workunitid=%s and server_state=2",
            wu_id,
        )


def abort_jobs(req: Request, server: WebServer, root: ET.Element) -> None:
    user = _submitter(req, server, "abort_jobs", root, None)
    ids = []
    for el in root.findall("job_name"):
        name = (el.text or "").strip()
        wus = req.q(
            "select w.id, b.user_id from workunit w left join batch b on b.id=w.batch "
            "where w.name=%s",
            name,
        )
        if not wus:
            xml_error(req, server, "abort_jobs", f"BOINC server: no job named {name} was found")
        if wus[0]["user_id"] != user["id"]:
            xml_error(req, server, "abort_jobs", "not owner")
        ids.append(wus[0]["id"])
        req.out.append(f"<aborted {name}>\n")  # sic: not well-formed (boinc-facts §10.5.1)
    _cancel(req, ids)
    req.echo("<success>1</success>\n")


def abort_batch(req: Request, server: WebServer, root: ET.Element) -> None:
    user = _submitter(req, server, "abort_batch", root, None)
    batch = _batch(req, server, "abort_batch", root, user, not_owner="not owner")
    _cancel(req, [w["id"] for w in req.q("select id from workunit where batch=%s", batch["id"])])
    req.x(
        "update batch set state=%s, completion_time=%s where id=%s",
        ABORTED,
        time.time(),
        batch["id"],
    )
    req.echo("<success>1</success>\n")


def retire_batch(req: Request, server: WebServer, root: ET.Element) -> None:
    user = _submitter(req, server, "retire_batch", root, None)
    batch = _batch_params(req, _batch(req, server, "retire_batch", root, user))
    shutil.rmtree(req.config.root / "results" / str(batch["id"]), ignore_errors=True)
    unsent = req.q(
        "select w.id from workunit w where w.batch=%s and not exists (select 1 from "
        "result r where r.workunitid=w.id and r.server_state<>2) and w.error_mask=0 "
        "and w.canonical_resultid=0",
        batch["id"],
    )
    _cancel(req, [w["id"] for w in unsent])
    req.x("update batch set state=%s where id=%s", RETIRED, batch["id"])
    req.echo("<success>1</success>")
