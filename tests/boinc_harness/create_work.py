"""TEST STAND-IN for BOINC's ``bin/create_work`` (tools/create_work.cpp, backend_lib.cpp,
process_input_template.cpp of server release 1.6.2). Not product code.

It reproduces what a client of create_work can observe: options and their precedence
(``<workunit>`` values in the input template override the command line), the built-in
defaults, the stored ``workunit.xml_doc``, the staging and ``.md5`` cache files, the
messages and exit codes, ``--stdin`` bulk mode with one multi-row INSERT per ~1 MB of SQL
(a duplicate name anywhere fails that whole statement), and the silent no-op when the
result template does not exist. It writes no result rows; the transitioner does that.

Test hook: ``BOINC_HARNESS_CREATE_WORK_DELAY=<seconds>`` sleeps before every multi-row
INSERT so a test can SIGKILL a submitter in the middle of a bulk submission.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import MySQLdb

from .common import (
    ASSIGN_HOST,
    ASSIGN_USER,
    INT_MAX,
    TRANSITION_NO_NEW_RESULTS,
    Config,
    ConfigError,
    parse_command_line,
    read_config,
)
from .templates import (
    ERR_BUFFER_OVERFLOW,
    ERR_DB_CANT_CONNECT,
    ERR_FOPEN,
    ERR_INVALID_PARAM,
    ERR_NO_OPTION,
    InFile,
    JobError,
    atof,
    atoi,
    boincerror,
    err,
    process_input_template,
)

USAGE = """usage: create_work [options] infile1 infile2 ...
   --appname name
   [ --app_version_num N ]
   [ --batch n ]
   [ --broadcast ]
   [ --broadcast_user ID ]
   [ --broadcast_team ID ]
   [ --command_line "X" ]
   [ --config_dir path ]
   [ --credit X ]
   [ -d n ]
   [ --delay_bound x ]
   [ --hr_class n ]
   [ --keywords 'n1 n2 ...' ]
   [ --max_error_results n ]
   [ --max_success_results n ]
   [ --max_total_results n ]
   [ --min_quorum n ]
   [ --priority n ]
   [ --result_template filename ]  default: appname_out
   [ --rsc_disk_bound x ]
   [ --rsc_fpops_est x ]
   [ --rsc_fpops_bound x ]
   [ --rsc_memory_bound x ]
   [ --size_class n ]
   [ --stdin ]
   [ --sub_appname 'foo bar' ]
   [ --target_host ID ]
   [ --target_nresults n ]
   [ --target_team ID ]
   [ --target_user ID ]
   [ --verbose ]
   [ --wu_id ID ]   ID of existing workunit record (used by boinc_submit)
   [ --wu_name name ]              default: generate a name based on app name
   [ --wu_template filename ]      default: appname_in
"""

DELAY_ENV = "BOINC_HARNESS_CREATE_WORK_DELAY"
BULK_LIMIT = 1_000_000

# tools/backend_lib.h defaults (facts §3), then the zeroes DB_WORKUNIT::clear() leaves.
DEFAULT_WU: dict[str, Any] = {
    "min_quorum": 1, "target_nresults": 1, "max_error_results": 1, "max_total_results": 1,
    "max_success_results": 1, "rsc_fpops_est": 3.6e12, "rsc_fpops_bound": 8.64e13,
    "rsc_memory_bound": 5e8, "rsc_disk_bound": 1e9, "delay_bound": 604800,
    "rsc_bandwidth_bound": 0.0, "create_time": 0, "appid": 0, "name": "", "xml_doc": "",
    "batch": 0, "need_validate": 0, "canonical_resultid": 0, "canonical_credit": 0.0,
    "transition_time": 0, "error_mask": 0, "file_delete_state": 0, "assimilate_state": 0,
    "hr_class": 0, "opaque": 0.0, "result_template_file": "", "priority": 0,
    "fileset_id": 0, "app_version_id": 0, "transitioner_flags": 0, "size_class": -1,
    "keywords": "", "app_version_num": 0,
}
WU_COLUMNS = tuple(sorted(DEFAULT_WU))
PER_JOB_COLUMNS = frozenset({"name", "xml_doc", "create_time", "transition_time"})
INT_OPTIONS = {"batch", "priority", "size_class", "app_version_num", "delay_bound", "hr_class",
               "min_quorum", "target_nresults", "max_error_results", "max_total_results",
               "max_success_results"}
FLOAT_OPTIONS = {"rsc_fpops_est": "rsc_fpops_est", "rsc_fpops_bound": "rsc_fpops_bound",
                 "rsc_memory_bound": "rsc_memory_bound", "rsc_disk_bound": "rsc_disk_bound",
                 "credit": "canonical_credit"}
UNSUPPORTED = {"broadcast", "broadcast_user", "broadcast_team", "target_team", "wu_id",
               "sub_appname", "additional_xml"}


class Exit(Exception):
    """Leave main() with this exit code (the C code calls exit() all over the place)."""

    def __init__(self, rc: int) -> None:
        super().__init__(rc)
        self.rc = rc


@dataclass
class JobDesc:
    """One job (JOB_DESC): WU fields, templates, input files, command line, target."""

    wu: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_WU))
    wu_template_file: str = ""
    result_template_file: str = ""
    infiles: list[InFile] = field(default_factory=list)
    command_line: str = ""
    assign: tuple[int, int] | None = None

    def copy(self) -> JobDesc:
        return replace(self, wu=dict(self.wu), infiles=list(self.infiles))


def _take(argv: list[str], i: int, n: int = 1) -> list[str]:
    if i + n >= len(argv):
        err(f"create_work: option {argv[i]} needs {n} value(s)")
        raise Exit(1)
    return argv[i + 1:i + 1 + n]


def _option(token: str) -> str | None:
    """The name of ``-x``/``--x``, or None for a plain argument."""
    if token.startswith("--"):
        return token[2:]
    return token[1:] if token.startswith("-") else None


def _job_option(jd: JobDesc, name: str, argv: list[str], i: int) -> int | None:
    """Options allowed both globally and on a --stdin line; returns args consumed, or None."""
    if name == "command_line":
        value = _take(argv, i)[0]
        jd.command_line = f"{jd.command_line} {value}" if jd.command_line else value
    elif name == "wu_name":
        jd.wu["name"] = _take(argv, i)[0]
    elif name == "wu_template":
        jd.wu_template_file = _take(argv, i)[0]
    elif name == "result_template":
        jd.result_template_file = _take(argv, i)[0]
    elif name == "remote_file":
        url, nbytes, md5 = _take(argv, i, 3)
        jd.infiles.append(InFile(name=f"jf_{md5}", remote=(url, atof(nbytes), md5)))
        return 3
    elif name in ("target_host", "target_user"):
        target = atoi(_take(argv, i)[0])
        if target == 0:
            err("you must specify a nonzero database ID for assigning jobs to users, "
                "teams, or hosts.")
            raise Exit(1)
        jd.assign = (ASSIGN_HOST if name == "target_host" else ASSIGN_USER, target)
    elif name == "priority":
        jd.wu["priority"] = atoi(_take(argv, i)[0])
    else:
        return None
    return 1


def parse_stdin_line(jd: JobDesc, argv: list[str]) -> None:
    """JOB_DESC::parse_stdin_line(): the per-job options, everything else is an input file."""
    i = 0
    while i < len(argv):
        name = _option(argv[i])
        if name is None:
            jd.infiles.append(InFile(argv[i]))
            i += 1
            continue
        used = _job_option(jd, name, argv, i)
        if used is None:
            err(f"create_work: bad stdin argument '{argv[i]}'")
            raise Exit(1)
        i += used + 1


@dataclass
class Options:
    """Global (command-line) state of one create_work run."""

    jd: JobDesc = field(default_factory=JobDesc)
    appname: str = ""
    config_dir: str | None = None
    use_stdin: bool = False
    verbose: bool = False
    continue_on_error: bool = False
    show_wu_name: bool = True


def parse_args(argv: list[str]) -> Options:
    opts = Options()
    jd = opts.jd
    i = 1
    while i < len(argv):
        name = _option(argv[i])
        used = 0
        if name is None:
            jd.infiles.append(InFile(argv[i]))
        elif name == "appname":
            opts.appname, used = _take(argv, i)[0], 1
        elif name in ("d", "config_dir", "keywords"):
            value, used = _take(argv, i)[0], 1
            if name == "config_dir":
                opts.config_dir = value
            elif name == "keywords":
                jd.wu["keywords"] = value
        elif name in INT_OPTIONS:
            jd.wu[name], used = atoi(_take(argv, i)[0]), 1
        elif name in FLOAT_OPTIONS:
            jd.wu[FLOAT_OPTIONS[name]], used = atof(_take(argv, i)[0]), 1
        elif name in ("help", "stdin", "verbose", "continue_on_error"):
            if name == "help":
                err(USAGE.rstrip("\n"))
                raise Exit(1)
            setattr(opts, "use_stdin" if name == "stdin" else name, True)
        elif name in UNSUPPORTED:
            err(f"create_work (TEST STAND-IN): --{name} is not supported by the harness")
            raise Exit(2)
        else:
            found = _job_option(jd, name, argv, i)
            if found is None:
                err(f"create_work: bad argument '{argv[i]}'")
                raise Exit(1)
            used = found
            if name == "wu_name":
                opts.show_wu_name = False
        i += used + 1
    return opts


class CreateWork:
    """One run of create_work against the project database."""

    def __init__(self, opts: Options, config: Config, conn: Any) -> None:
        self.opts = opts
        self.config = config
        self.conn = conn
        self.templates: dict[str, str] = {}
        self.literals: dict[tuple[str, type, Any], str] = {}

    def literal(self, job: JobDesc) -> str:
        """The job's row as SQL; the values every job of a run shares are quoted once."""
        quote, known = self.conn.literal, self.literals
        parts = []
        for column in WU_COLUMNS:
            value = job.wu[column]
            if column in PER_JOB_COLUMNS:
                parts.append(quote(value).decode())
                continue
            key = (column, type(value), value)
            text = known.get(key)
            if text is None:
                text = known[key] = quote(value).decode()
            parts.append(text)
        return f"({','.join(parts)})"

    def execute(self, sql: str) -> int | None:
        """Run one statement; on failure print BOINC's "Database error" lines, return None."""
        cur = self.conn.cursor()
        try:
            cur.execute(sql)
        except MySQLdb.Error as exc:
            err(f"Database error: {exc.args[-1]}", f"query={sql[:2000]}")
            return None
        return int(cur.lastrowid or 0)

    def wu_template(self, path: str) -> str:
        """get_wu_template(): read (and cache) a job's input template."""
        if path not in self.templates:
            try:
                self.templates[path] = Path(path).read_text()
            except OSError:
                err(f"Can't read WU template {path}")
                raise Exit(1) from None
        return self.templates[path]

    def create_work2(self, job: JobDesc, template: str) -> bool:
        """Fill the WU fields; False when the result template is missing (no row at all)."""
        wu = job.wu
        wu["create_time"] = int(time.time())
        try:
            wu["xml_doc"] = process_input_template(wu, template, job.infiles, self.config,
                                                   job.command_line)
        except JobError as exc:
            err(f"process_input_template(): {boincerror(exc.code)}")
            raise
        rt = job.result_template_file
        rt_path = f"{self.config.root}/{rt}"
        if not os.path.exists(rt_path):
            err(f"create_work: result template file {rt_path} doesn't exist")
            return False
        if len(rt) > 62:
            err(f"result template filename is too big: {len(rt)} bytes, max is 62")
            raise JobError(ERR_BUFFER_OVERFLOW)
        wu["result_template_file"] = rt
        for key in ("rsc_fpops_est", "rsc_fpops_bound", "rsc_disk_bound", "target_nresults",
                    "max_error_results", "max_total_results", "max_success_results"):
            if wu[key] == 0:
                err(f"no {key} given; can't create job")
                raise JobError(ERR_NO_OPTION)
        for key in ("max_success_results", "max_error_results"):
            if wu[key] > wu["max_total_results"]:
                err(f"{key} > max_total_results; can't create job")
                raise JobError(ERR_INVALID_PARAM)
        if wu["target_nresults"] > wu["max_success_results"]:
            err(f"target_nresults {wu['target_nresults']} > max_success_results "
                f"{wu['max_success_results']}; can't create job")
            raise JobError(ERR_INVALID_PARAM)
        wu["transition_time"] = INT_MAX if wu["transitioner_flags"] else int(time.time())
        return True

    def create(self, job: JobDesc, template: str) -> None:
        """JOB_DESC::create(): one job, one INSERT (plus its assignment row)."""
        if job.assign:
            job.wu["transitioner_flags"] = TRANSITION_NO_NEW_RESULTS
        try:
            if not self.create_work2(job, template):
                return
        except JobError as exc:
            err(f"create_work: {boincerror(exc.code)}")
            raise Exit(1) from None
        wu_id = self.execute(f"insert into workunit ({','.join(WU_COLUMNS)}) "
                             f"values {self.literal(job)}")
        if wu_id is None:
            err("create_work: workunit.insert() Error 1", "create_work: Error 1")
            raise Exit(1)
        if self.opts.verbose:
            err(f"created workunit; name {job.wu['name']}, ID {wu_id}")
        if job.assign:
            target_type, target_id = job.assign
            sql = ("insert into assignment (create_time, target_id, target_type, multi, "
                   f"workunitid, resultid) values ({int(time.time())}, {target_id}, "
                   f"{target_type}, 0, {wu_id}, 0)")
            if self.execute(sql) is None:
                err("assignment.insert() failed: Error 1")
                raise Exit(1)

    def insert_batch(self, values: list[str], in_loop: bool) -> None:
        delay = os.environ.get(DELAY_ENV)
        if delay:
            time.sleep(float(delay))
        sql = f"insert into workunit ({','.join(WU_COLUMNS)}) values {','.join(values)}"
        if self.execute(sql) is None:
            size = f"; size {len(','.join(values))}" if in_loop else ""
            err(f"wu.insert_batch() failed: 1{size}",
                f"MySQL error: {self.conn.error() or 'see above'}")
            raise Exit(1)

    def run_stdin(self) -> None:
        """--stdin: one job per line; untargeted jobs go in multi-row INSERTs."""
        base = self.opts.jd
        values: list[str] = []
        size = 0
        last_value = "()"  # value_buf before any job: garbage that breaks the statement
        for j, line in enumerate(sys.stdin):
            job = base.copy()
            job.wu["name"] = ""
            parse_stdin_line(job, parse_command_line(line))
            if not job.wu["name"]:
                job.wu["name"] = f"{base.wu['name']}_{j}"
            template = self.wu_template(job.wu_template_file)
            if job.assign:
                self.create(job, template)
                continue
            try:
                if self.create_work2(job, template):
                    last_value = self.literal(job)
                # else: BOINC appends the stale value_buf of the previous job
            except JobError as exc:
                err(f"create_work() failed: {exc.code}")
                if self.opts.continue_on_error:
                    continue
                raise Exit(1) from None
            values.append(last_value)
            size += len(last_value) + (1 if len(values) > 1 else 0)
            if size + 2 * len(last_value) > BULK_LIMIT:
                self.insert_batch(values, in_loop=True)
                values, size = [], 0
        if values:
            self.insert_batch(values, in_loop=False)


def _setup(opts: Options) -> CreateWork:
    jd = opts.jd
    if not opts.appname:
        err(USAGE.rstrip("\n"))
        raise Exit(1)
    if not jd.wu["name"]:
        jd.wu["name"] = f"{opts.appname}_{os.getpid()}_{time.time():.6f}"
    jd.wu_template_file = jd.wu_template_file or f"templates/{opts.appname}_in"
    jd.result_template_file = jd.result_template_file or f"templates/{opts.appname}_out"
    try:
        config = read_config(Path(opts.config_dir or "."))
    except ConfigError:
        err(f"Can't parse config file: {boincerror(ERR_FOPEN)}")
        raise Exit(1) from None
    config = replace(config, root=config.root.resolve())
    try:
        conn = config.connect()
    except MySQLdb.Error:
        err(f"create_work: error opening database: {boincerror(ERR_DB_CANT_CONNECT)}")
        raise Exit(1) from None
    cur = conn.cursor()
    cur.execute("select id from app where name=%s", (opts.appname,))
    app = cur.fetchone()
    if app is None:
        conn.close()
        err("create_work: app not found")
        raise Exit(1)
    jd.wu["appid"] = app["id"]
    return CreateWork(opts, config, conn)


def main(argv: list[str]) -> int:
    try:
        opts = parse_args(argv)
        cw = _setup(opts)
        try:
            if opts.use_stdin:
                cw.run_stdin()
                return 0
            path = opts.jd.wu_template_file
            if not Path(path).exists():
                err(f"create_work: input template file {path} doesn't exist")
                return 1
            cw.create(opts.jd, cw.wu_template(path))
            if opts.show_wu_name:
                print(f"workunit name: {opts.jd.wu['name']}")
            return 0
        finally:
            cw.conn.close()
    except Exit as done:
        return done.rc

