"""TEST STAND-IN for BOINC's make_project: a project directory wired to a test database.

Not product code. ``make_project()`` lays a directory out the way BOINC 1.6.2's
``tools/make_project`` does (config.xml with ``<config>``, ``<tasks>`` and ``<daemons>``,
project.xml with the standard platforms, download/, upload/ 2770, templates/, apps/,
bin/, keys/, html/, log_<host>/, pid_<host>/, tmp_<host>/) and puts the stand-in
command-line tools into bin/ as small scripts that run this harness with the current
interpreter. The operator's own scripts (assimilators, validators) go into bin/ too; the
harness does not care what else is there.

config.xml has no port element in BOINC. When the test server is not on port 3306 we
write an extra ``<db_port>`` (ignored by a real BOINC, read by the product).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from .common import Config, fanout_dir, read_config
from .mariadb import DbServer
from .start_stop import lock_owner

REPO_ROOT = Path(__file__).resolve().parents[2]

TOOLS = {
    "create_work": "create_work",
    "xadd": "xadd",
    "update_versions": "update_versions",
    "dir_hier_path": "dir_hier_path",
    "cancel_jobs": "cancel_jobs",
    "start": "start_stop",
    "stop": "start_stop",
    "status": "start_stop",
}

PLATFORMS = [
    ("windows_intelx86", "Microsoft Windows (98 or later) running on an Intel x86-compatible CPU"),
    ("windows_x86_64", "Microsoft Windows running on an AMD x86_64 or Intel EM64T CPU"),
    ("windows_arm64", "Microsoft Windows running on ARM64"),
    ("i686-pc-linux-gnu", "Linux running on an Intel x86-compatible CPU"),
    ("x86_64-pc-linux-gnu", "Linux running on an AMD x86_64 or Intel EM64T CPU"),
    ("aarch64-unknown-linux-gnu", "Linux running on ARM64"),
    ("arm-unknown-linux-gnueabihf", "Linux running on ARM with hardware floating point"),
    ("powerpc-apple-darwin", "Mac OS X 10.3 or later running on Motorola PowerPC"),
    ("i686-apple-darwin", "Mac OS 10.4 or later running on Intel"),
    ("x86_64-apple-darwin", "Intel 64-bit Mac OS 10.5 or later"),
    ("arm64-apple-darwin", "Mac OS running on ARM"),
    ("arm-android-linux-gnu", "Android running on ARM"),
    ("aarch64-android-linux-gnu", "Android running on ARM64"),
    ("x86-android-linux-gnu", "Android running on x86"),
    ("x86_64-android-linux-gnu", "Android running on x86_64"),
    ("sparc-sun-solaris", "SPARC Solaris 2.8 or later"),
    ("x86_64-pc-solaris", "Solaris running on an AMD x86_64 or Intel EM64T CPU"),
    ("powerpc64-ps3-linux-gnu", "Sony Playstation 3 running Linux"),
    ("anonymous", "anonymous"),
]


@dataclass(frozen=True)
class Project:
    """A stand-in BOINC project: its directory, config and database."""

    root: Path
    name: str
    host: str
    db_host: str
    db_port: int
    db_name: str
    db_user: str
    db_passwd: str

    @property
    def config_path(self) -> Path:
        return self.root / "config.xml"

    @property
    def config(self) -> Config:
        """config.xml as it is now (the product and tests may edit it)."""
        return read_config(self.root)

    @property
    def download_dir(self) -> Path:
        return self.root / "download"

    @property
    def upload_dir(self) -> Path:
        return self.root / "upload"

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    @property
    def tmp_dir(self) -> Path:
        return self.root / f"tmp_{self.host}"

    @property
    def log_dir(self) -> Path:
        return self.root / f"log_{self.host}"

    @property
    def master_url(self) -> str:
        return f"http://127.0.0.1/{self.name}/"

    def connect(self) -> Any:
        """An autocommit DictCursor connection to the project database."""
        return self.config.connect()

    def query(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        """Rows of one query (blobs decoded to str), on a short-lived connection."""
        conn = self.connect()
        try:
            cur = conn.cursor()
            cur.execute(sql, args)
            rows = cur.fetchall()
        finally:
            conn.close()
        return [{k: v.decode() if isinstance(v, bytes) else v for k, v in row.items()}
                for row in rows]

    def workunit(self, name: str) -> dict[str, Any] | None:
        """The workunit row called ``name``, or None."""
        rows = self.query("select * from workunit where name=%s", name)
        return rows[0] if rows else None

    def results(self, wu_name: str) -> list[dict[str, Any]]:
        """The result rows of work unit ``wu_name``, oldest first."""
        return self.query("select r.* from result r join workunit w on w.id=r.workunitid "
                          "where w.name=%s order by r.id", wu_name)

    def fanout_dir(self, name: str) -> str:
        """The fan-out directory name for file ``name`` (uldl_dir_fanout 1024)."""
        return fanout_dir(name, self.config.fanout)

    def download_path(self, name: str) -> Path:
        return self.download_dir / self.fanout_dir(name) / name

    def upload_path(self, name: str) -> Path:
        return self.upload_dir / self.fanout_dir(name) / name

    def run(self, tool: str, *args: str, input: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``bin/<tool> args`` in the project root, as an operator would."""
        return subprocess.run(
            [str(self.bin_dir / tool), *args], cwd=self.root, input=input,
            capture_output=True, text=True, check=False, env=env,
        )

    def add_daemon(self, cmd: str, **children: str) -> None:
        """Append ``<daemon><cmd>cmd</cmd>...</daemon>`` to config.xml's ``<daemons>``.

        ``children`` become elements of the entry (``output=``, ``pid_file=``, ``host=`` ...).
        """
        text = self.config_path.read_text()
        inner = "".join(f"            <{k}>{escape(v)}</{k}>\n" for k, v in
                        {"cmd": cmd, **children}.items())
        entry = f"        <daemon>\n{inner}        </daemon>\n"
        self.config_path.write_text(text.replace("    </daemons>", entry + "    </daemons>", 1))

    @property
    def pid_dir(self) -> Path:
        return self.root / f"pid_{self.host}"

    def stop_daemons_now(self) -> None:
        """Test cleanup: SIGTERM every daemon process holding a lock in pid_<host>."""
        for lock in self.pid_dir.glob("*.lock"):
            owner = lock_owner(lock)
            if owner is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(owner[0], signal.SIGTERM)

    def add_app(self, name: str, user_friendly_name: str | None = None) -> None:
        """Add ``<app>`` to project.xml (then run bin/xadd), as the BOINC docs say."""
        path = self.root / "project.xml"
        entry = (f"    <app>\n        <name>{escape(name)}</name>\n        <user_friendly_name>"
                 f"{escape(user_friendly_name or name)}</user_friendly_name>\n    </app>\n")
        path.write_text(path.read_text().replace("</boinc>", entry + "</boinc>", 1))


def _config_xml(root: Path, name: str, host: str, server: DbServer, db_name: str) -> str:
    port = f"        <db_port>{server.port}</db_port>\n" if server.port != 3306 else ""
    url = "http://127.0.0.1"
    shmem = hashlib.md5(str(root).encode()).hexdigest()[:4]
    return f"""<boinc>
    <config>
        <upload_dir>{root}/upload</upload_dir>
        <send_result_abort>1</send_result_abort>
        <long_name>{name}</long_name>
        <sched_debug_level>3</sched_debug_level>
        <cache_md5_info>1</cache_md5_info>
        <upload_url>{url}/{name}_cgi/file_upload_handler</upload_url>
        <disable_account_creation>0</disable_account_creation>
        <uldl_dir_fanout>1024</uldl_dir_fanout>
        <download_url>{url}/{name}/download</download_url>
        <db_user>{escape(server.user)}</db_user>
        <log_dir>{root}/log_{host}</log_dir>
        <app_dir>{root}/apps</app_dir>
        <download_dir>{root}/download</download_dir>
        <fuh_debug_level>3</fuh_debug_level>
        <master_url>{url}/{name}/</master_url>
        <host>{host}</host>
        <db_name>{db_name}</db_name>
        <shmem_key>0x1111{shmem}</shmem_key>
        <show_results>1</show_results>
        <key_dir>{root}/keys/</key_dir>
        <dont_generate_upload_certificates>1</dont_generate_upload_certificates>
        <ignore_upload_certificates>1</ignore_upload_certificates>
        <db_passwd>{escape(server.password)}</db_passwd>
        <min_sendwork_interval>6</min_sendwork_interval>
        <db_host>{server.host}</db_host>
{port}        <daily_result_quota>500</daily_result_quota>
        <one_result_per_user_per_wu>0</one_result_per_user_per_wu>
        <max_wus_to_send>50</max_wus_to_send>
        <enable_delete_account>0</enable_delete_account>
    </config>
    <tasks>
        <task>
            <cmd>antique_file_deleter -d 2</cmd>
            <period>24 hours</period>
            <disabled>0</disabled>
            <output>antique_file_deleter.out</output>
        </task>
        <task>
            <cmd>db_dump -d 2 --dump_spec ../db_dump_spec.xml</cmd>
            <period>24 hours</period>
            <disabled>1</disabled>
            <output>db_dump.out</output>
        </task>
        <task>
            <cmd>run_in_ops ./update_uotd.php</cmd>
            <period>1 days</period>
            <disabled>1</disabled>
            <output>update_uotd.out</output>
        </task>
        <task>
            <cmd>run_in_ops ./update_forum_activities.php</cmd>
            <period>1 hour</period>
            <disabled>1</disabled>
            <output>update_forum_activities.out</output>
        </task>
        <task>
            <cmd>update_stats</cmd>
            <period>1 days</period>
            <disabled>1</disabled>
            <output>update_stats.out</output>
        </task>
        <task>
            <cmd>run_in_ops ./update_profile_pages.php</cmd>
            <period>24 hours</period>
            <disabled>1</disabled>
            <output>update_profile_pages.out</output>
        </task>
        <task>
            <cmd>run_in_ops ./team_import.php</cmd>
            <period>24 hours</period>
            <disabled>1</disabled>
            <output>team_import.out</output>
        </task>
        <task>
            <cmd>run_in_ops ./notify.php</cmd>
            <period>24 hours</period>
            <disabled>1</disabled>
            <output>notify.out</output>
        </task>
    </tasks>
    <daemons>
        <daemon>
            <cmd>feeder -d 3 </cmd>
        </daemon>
        <daemon>
            <cmd>transitioner -d 3 </cmd>
        </daemon>
        <daemon>
            <cmd>file_deleter -d 3 </cmd>
        </daemon>
    </daemons>
</boinc>
"""


def _project_xml() -> str:
    entries = "".join(
        f"    <platform>\n        <name>{n}</name>\n"
        f"        <user_friendly_name>{escape(f)}</user_friendly_name>\n    </platform>\n"
        for n, f in PLATFORMS
    )
    return f"<boinc>\n{entries}</boinc>\n"


def _write_tool(path: Path, module: str) -> None:
    """bin/<tool>: a script with this interpreter's shebang that runs the harness module."""
    path.write_text(
        f"#!{sys.executable}\n"
        f'"""TEST STAND-IN for BOINC\'s bin/{path.name} (tests/boinc_harness/{module}.py)."""\n'
        "import sys\n"
        f"sys.path.insert(0, {str(REPO_ROOT)!r})\n"
        f"from tests.boinc_harness.{module} import main\n"
        f"sys.exit(main(sys.argv))\n"
    )
    path.chmod(0o755)


def make_project(root: Path, server: DbServer, db_name: str, *,
                 host: str | None = None) -> Project:
    """Lay out a BOINC project in ``root`` (must not exist yet) for database ``db_name``.

    ``host`` defaults to ``hostname -s``; that is what the daemons' ``<host>`` must match
    (make_project itself wrote getfqdn(), which had to be fixed by hand, facts §5).
    """
    host = host or socket.gethostname().split(".")[0]
    name = root.name
    root.mkdir(parents=True)
    for sub in ("download", "templates", "apps", "bin", "keys", "cgi-bin",
                "html/user", "html/ops", "html/inc", "html/project",
                f"pid_{host}", f"tmp_{host}"):
        (root / sub).mkdir(parents=True)
    for sub in ("upload", f"log_{host}"):
        (root / sub).mkdir()
        (root / sub).chmod(0o2770)
    for key in ("code_sign_private", "code_sign_public", "upload_private", "upload_public"):
        (root / "keys" / key).write_text(f"TEST STAND-IN dummy {key} for {name}\n")
        (root / "keys" / key).chmod(stat.S_IRUSR | stat.S_IWUSR)
    (root / "config.xml").write_text(_config_xml(root, name, host, server, db_name))
    (root / "project.xml").write_text(_project_xml())
    for tool, module in TOOLS.items():
        _write_tool(root / "bin" / tool, module)
    return Project(root=root, name=name, host=host, db_host=server.host, db_port=server.port,
                   db_name=db_name, db_user=server.user, db_passwd=server.password)
