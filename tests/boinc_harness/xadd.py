"""TEST STAND-IN for BOINC's ``bin/xadd``. Not product code.

Reads project.xml in the project root and inserts the ``<platform>`` and ``<app>``
entries the database does not have yet, with every column filled (strict mode).
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from pathlib import Path

from .common import ConfigError, read_config

APP_DEFAULTS = {
    "min_version": 0, "deprecated": 0, "homogeneous_redundancy": 0, "weight": 1.0, "beta": 0,
    "target_nresults": 0, "min_avg_pfc": 1.0, "host_scale_check": 0,
    "homogeneous_app_version": 0, "non_cpu_intensive": 0, "locality_scheduling": 0,
    "n_size_classes": 0, "fraction_done_exact": 0,
}


def main(argv: list[str]) -> int:
    try:
        config = read_config(Path("."))
        doc = ET.parse("project.xml").getroot()
    except (ConfigError, OSError, ET.ParseError) as exc:
        print(f"xadd: {exc}")
        return 1
    conn = config.connect()
    try:
        cur = conn.cursor()
        now = int(time.time())
        for kind in ("platform", "app"):
            for el in doc.iterfind(kind):
                name = (el.findtext("name") or "").strip()
                friendly = (el.findtext("user_friendly_name") or name).strip()
                cur.execute(f"select id from {kind} where name=%s", (name,))
                if cur.fetchone():
                    continue
                if kind == "platform":
                    cur.execute(
                        "insert into platform (create_time, name, user_friendly_name, "
                        "deprecated) values (%s, %s, %s, 0)", (now, name, friendly))
                else:
                    columns = ["create_time", "name", "user_friendly_name", *APP_DEFAULTS]
                    cur.execute(
                        f"insert into app ({','.join(columns)}) values "
                        f"({','.join(['%s'] * len(columns))})",
                        (now, name, friendly, *APP_DEFAULTS.values()))
                print(f"  Committed {kind} {name}")
    finally:
        conn.close()
    return 0
