"""config.xml's <daemons> as setup-project edits it: text in, text out, nothing else touched."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from boinc_executor.server.daemonconf import daemon_commands, edit_daemons

CMDS = daemon_commands()
ASSIM, VALID = CMDS["assimilator"], CMDS["validator"]

BASE = """<?xml version="1.0"?>
<!-- operator's comment, kept -->
<boinc>
  <config>
    <host>box.example.org</host>
  </config>
  <daemons>
    <daemon>
      <cmd>feeder -d 3 </cmd>
    </daemon>
    <daemon>
      <cmd>sample_bitwise_validator -d 3 --app other &amp; more</cmd>
    </daemon>
  </daemons>
</boinc>
"""


def cmds(text: str) -> list[tuple[str, str]]:
    root = ET.fromstring(text)
    return [((d.findtext("cmd") or "").strip(), (d.findtext("host") or "").strip())
            for d in root.iterfind("daemons/daemon")]


def test_adds_ours_and_keeps_every_other_byte() -> None:
    text, changes = edit_daemons(BASE, CMDS, "box")
    assert len(changes) == 2
    assert cmds(text) == [("feeder -d 3", ""), ("sample_bitwise_validator -d 3 --app other & more",
                                                 ""), (ASSIM, "box"), (VALID, "box")]
    added = ("    <daemon>\n      <cmd>" + ASSIM + "</cmd>\n      <host>box</host>\n"
             "    </daemon>\n    <daemon>\n      <cmd>" + VALID + "</cmd>\n"
             "      <host>box</host>\n    </daemon>\n")
    assert text == BASE.replace("  </daemons>", added + "  </daemons>")
    assert edit_daemons(text, CMDS, "box") == (text, []), "idempotent"


def test_replaces_our_stale_entries_only_and_never_duplicates() -> None:
    stale = BASE.replace("  </daemons>", (
        "    <daemon><cmd>script_assimilator --app pyboinc --script old</cmd></daemon>\n"
        "    <daemon>\n      <cmd>sample_bitwise_validator -app pyboinc</cmd>\n"
        "      <host>oldhost</host>\n    </daemon>\n"
        "    <daemon><cmd>script_validator --app pyboinc --init_script x</cmd></daemon>\n"
        "  </daemons>"))
    text, changes = edit_daemons(stale, CMDS, "box")
    assert [c.split(":")[0] for c in changes] == [
        "replaced the assimilator daemon in config.xml",
        "replaced the validator daemon in config.xml"]
    assert cmds(text)[2:] == [(ASSIM, "box"), (VALID, "box")]
    assert text.startswith(BASE.split("  </daemons>", maxsplit=1)[0])


def test_no_daemons_section_or_an_empty_one() -> None:
    bare = "<boinc>\n    <config>\n    </config>\n</boinc>\n"
    text, _ = edit_daemons(bare, CMDS, "h")
    assert cmds(text) == [(ASSIM, "h"), (VALID, "h")]
    assert text.startswith("<boinc>\n    <config>\n    </config>\n    <daemons>\n")
    empty = "<boinc>\n    <daemons/>\n</boinc>\n"
    text, _ = edit_daemons(empty, CMDS, "h")
    assert cmds(text) == [(ASSIM, "h"), (VALID, "h")]
    assert text.count("<daemons>") == 1 and "<daemons/>" not in text
    one_line = "<boinc><daemons><daemon><cmd>feeder</cmd></daemon></daemons></boinc>"
    text, _ = edit_daemons(one_line, CMDS, "h")
    assert cmds(text) == [("feeder", ""), (ASSIM, "h"), (VALID, "h")]


def test_float_validator_command() -> None:
    assert daemon_commands(float_validator=True)["validator"] == (
        "script_validator -d 3 --app pyboinc --sleep_interval 1 "
        "--init_script pyboinc_compare --compare_script pyboinc_compare")
