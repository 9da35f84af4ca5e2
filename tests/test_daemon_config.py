"""config.xml's <daemons> as setup-project edits it: text in, text out, nothing else touched."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from boinc_executor import ConfigError
from boinc_executor.server.daemonconf import daemon_commands, daemon_files, edit_daemons
from boinc_executor.server.entries import DaemonEntry, collisions, entries_of

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
             "      <output>pyboinc_assimilator.log</output>\n"
             "      <pid_file>pyboinc_assimilator.pid</pid_file>\n"
             "    </daemon>\n    <daemon>\n      <cmd>" + VALID + "</cmd>\n"
             "      <host>box</host>\n      <output>pyboinc_validator.log</output>\n"
             "      <pid_file>pyboinc_validator.pid</pid_file>\n    </daemon>\n")
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


def entries(text: str) -> list[DaemonEntry]:
    return entries_of(ET.fromstring(text))


def test_our_entries_have_their_own_lock_pid_and_log_files() -> None:
    text, _ = edit_daemons(BASE, CMDS, "box")
    ours = [e for e in entries(text) if e.app == "pyboinc"]
    assert [(e.log_name, e.pid_name, e.lock_name) for e in ours] == [
        ("pyboinc_assimilator.log", "pyboinc_assimilator.pid", "pyboinc_assimilator.log.lock"),
        ("pyboinc_validator.log", "pyboinc_validator.pid", "pyboinc_validator.log.lock")]
    assert collisions(entries(text), "box") == []


def test_bin_start_naming_rules() -> None:
    """facts §9.1: <lock_file>, else <output>.lock, else <basename>.lock; likewise pid, log."""
    plain = DaemonEntry(cmd="/opt/boinc/bin/sample_bitwise_validator --app x")
    assert (plain.program, plain.log_name, plain.pid_name, plain.lock_name) == (
        "sample_bitwise_validator", "sample_bitwise_validator.log",
        "sample_bitwise_validator.pid", "sample_bitwise_validator.lock")
    named = DaemonEntry(cmd="feeder", output="f.log", pid_file="f.pid")
    assert (named.log_name, named.pid_name, named.lock_name) == ("f.log", "f.pid", "f.log.lock")
    assert DaemonEntry(cmd="feeder", output="f.log", lock_file="x.lock").lock_name == "x.lock"


def test_upgrades_an_earlier_releases_entries_and_says_why() -> None:
    """Releases before 0.1 wrote <cmd> and <host> only: a lock shared with labcheck's validator."""
    other = "sample_bitwise_validator -d 3 --app labcheck"
    old = BASE.replace("--app other &amp; more", "--app labcheck").replace("  </daemons>", (
        f"    <daemon>\n      <cmd>{ASSIM}</cmd>\n      <host>box</host>\n    </daemon>\n"
        f"    <daemon>\n      <cmd>{VALID}</cmd>\n      <host>box</host>\n    </daemon>\n"
        "  </daemons>"))
    assert [(k, n) for k, n, _, _ in collisions(entries(old), "box")] == [
        ("lock", "sample_bitwise_validator.lock"), ("pid", "sample_bitwise_validator.pid"),
        ("log", "sample_bitwise_validator.log")]
    text, changes = edit_daemons(old, CMDS, "box")
    assert len(changes) == 2
    assert "an earlier release's entry, upgraded" in changes[1]
    assert f"the lock of `{other}`, so it could never run" in changes[1]
    assert collisions(entries(text), "box") == []
    assert [(e.output, e.pid_file) for e in entries(text) if e.app == "pyboinc"] == [
        daemon_files("assimilator"), daemon_files("validator")]
    assert edit_daemons(text, CMDS, "box") == (text, [])


def test_refuses_an_entry_that_would_take_our_files() -> None:
    clash = BASE.replace("<cmd>feeder -d 3 </cmd>", (
        "<cmd>feeder -d 3 </cmd><output>pyboinc_validator.log</output>"))
    with pytest.raises(ConfigError, match=r"`feeder -d 3` uses the lock file "
                       r"pyboinc_validator\.log\.lock.*own <output>, <pid_file>"):
        edit_daemons(clash, CMDS, "box")
    elsewhere = clash.replace("<cmd>feeder -d 3 </cmd>", "<cmd>feeder -d 3 </cmd><host>b2</host>")
    assert edit_daemons(elsewhere, CMDS, "box")[1], "another host has its own pid_<host>/"
