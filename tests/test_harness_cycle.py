"""The BOINC test harness runs whole job cycles the way boinc-facts.md says BOINC does.

These test the TEST STAND-IN itself (tests/boinc_harness) with a toy /bin/sh app:
create_work -> transitioner -> scheduler -> client -> validator -> script_assimilator ->
file_deleter, the slot layouts, and the verified error paths and error masks.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.boinc_harness.project import Project
from tests.boinc_harness.volunteer import AssimilatorStopped, VolunteerHost

pytestmark = pytest.mark.boinc

# The toy app copies in.txt to out.txt, resolving <soft_link> files. Its command line
# picks a misbehaviour: "exit N", "nofinish" (no boinc_finish_called), "logical" (writes
# to the open name even in soft-link mode).
TOY_APP = r"""#!/bin/sh
resolve() {
    if grep -q '^<soft_link>' "$1" 2>/dev/null; then
        sed -n 's:^<soft_link>\(.*\)</soft_link>$:\1:p' "$1"
    else
        echo "$1"
    fi
}
echo "toy: cwd=$(pwd) args=$*" >&2
ls >&2
head -c 200 toy_1.0.sh >&2; echo >&2
case "$1" in
    exit) exit "$2" ;;
    logical) cp "$(resolve in.txt)" out.txt ;;
    *) cp "$(resolve in.txt)" "$(resolve out.txt)" ;;
esac
[ "$1" = nofinish ] || echo 0 > boinc_finish_called
"""
IN_TEMPLATE = """<input_template>
    <file_info>
        <number>0</number>
    </file_info>
    <workunit>
        <file_ref>
            <file_number>0</file_number>
            <open_name>in.txt</open_name>
            <copy_file/>
        </file_ref>
        <rsc_fpops_est>1e9</rsc_fpops_est>
    </workunit>
</input_template>
"""
OUT_TEMPLATE = """<output_template>
    <file_info>
        <name><OUTFILE_0/></name>
        <generated_locally/>
        <upload_when_present/>
        <max_nbytes>1000</max_nbytes>
        <url><UPLOAD_URL/></url>
    </file_info>
    <result>
        <file_ref>
            <file_name><OUTFILE_0/></file_name>
            <open_name>out.txt</open_name>
            <copy_file/>
        </file_ref>
    </result>
</output_template>
"""
ASSIMILATOR = """#!/bin/sh
echo "cwd=$(pwd) args=$*" >> ../assimilated.log
"""


@pytest.fixture
def toy(boinc_project: Project) -> Project:
    """boinc_project with app "toy" 1.0, its templates, a validator and an assimilator."""
    project = boinc_project
    project.add_app("toy")
    assert project.run("xadd").returncode == 0
    app_dir = project.root / "apps/toy/1.0/x86_64-pc-linux-gnu"
    app_dir.mkdir(parents=True)
    (app_dir / "toy_1.0.sh").write_text(TOY_APP)
    (app_dir / "toy_1.0.sh").chmod(0o755)
    assert project.run("update_versions", "--noconfirm").returncode == 0
    (project.root / "templates/toy_in").write_text(IN_TEMPLATE)
    (project.root / "templates/toy_out").write_text(OUT_TEMPLATE)
    (project.bin_dir / "toy_assim").write_text(ASSIMILATOR)
    (project.bin_dir / "toy_assim").chmod(0o755)
    project.add_daemon("sample_bitwise_validator -d 3 --app toy --sleep_interval 1")
    project.add_daemon("script_assimilator -d 3 --app toy --sleep_interval 1 --script toy_assim")
    return project


def submit(project: Project, name: str, *options: str, content: str = "data\n") -> None:
    """Stage ``<name>.in`` and create_work a job called ``name`` for it."""
    path = project.download_path(f"{name}.in")
    path.parent.mkdir(exist_ok=True)
    path.write_text(content)
    done = project.run("create_work", "--appname", "toy", "--wu_name", name, *options,
                       f"{name}.in")
    assert done.returncode == 0, done.stderr


def wu_row(project: Project, name: str) -> dict[str, Any]:
    row = project.workunit(name)
    assert row is not None, f"no work unit {name}"
    return row


def finished(project: Project, name: str) -> bool:
    wu = project.workunit(name)
    return wu is not None and wu["assimilate_state"] == 2 and wu["file_delete_state"] == 2


def assimilator_calls(project: Project) -> list[str]:
    log = project.root / "assimilated.log"
    return log.read_text().splitlines() if log.exists() else []


def test_full_cycle_copy_file(toy: Project, volunteer_host: VolunteerHost) -> None:
    submit(toy, "job1", content="hello toy\n")
    volunteer_host.run_until(lambda: finished(toy, "job1"), timeout=20)
    wu = toy.workunit("job1")
    assert wu is not None
    (result,) = toy.results("job1")
    assert (wu["error_mask"], wu["canonical_resultid"], wu["transition_time"]) == (
        0, result["id"], 2147483647)
    assert result["name"] == "job1_0"
    assert (result["server_state"], result["outcome"], result["client_state"],
            result["validate_state"], result["exit_status"]) == (5, 1, 5, 1, 0)
    assert (result["userid"], result["hostid"], result["app_version_num"]) == (1, 1, 100)
    assert result["report_deadline"] - result["sent_time"] == wu["delay_bound"]
    stderr = result["stderr_out"]
    assert stderr.startswith("<core_client_version>7.20.5</core_client_version>\n<![CDATA[\n"
                             "<stderr_txt>\ntoy: cwd=")
    assert stderr.endswith("</stderr_txt>\n]]>\n")
    listing = stderr.split("\n")[4:9]
    assert listing == ["in.txt", "init_data.xml", "stderr.txt", "toy_1.0.sh",
                       "<soft_link>../../projects/127.0.0.1_boinctest/toy_1.0.sh</soft_link>"]
    out_name = f"{result['name']}_r"
    assert out_name in result["xml_doc_in"] and "<max_nbytes>1000</max_nbytes>" in result[
        "xml_doc_in"]
    (call,) = assimilator_calls(toy)
    upload = toy.upload_path(result["xml_doc_out"].split("<name>")[1].split("</name>")[0])
    assert call == f"cwd={toy.tmp_dir} args={wu['id']} {upload}"
    assert not upload.exists(), "file_deleter removes the upload after assimilation"
    assert not toy.download_path("job1.in").exists(), "and the input"


def test_soft_link_layout(toy: Project, tmp_path: Path) -> None:
    host = VolunteerHost(toy, client_dir=tmp_path / "softclient", soft_links=True)
    submit(toy, "soft", content="linked\n")
    host.run_until(lambda: (toy.workunit("soft") or {}).get("assimilate_state") == 2)
    (result,) = toy.results("soft")
    assert result["outcome"] == 1
    lines = result["stderr_out"].split("\n")
    assert "in.txt" in lines and "out.txt" in lines, "outputs get a link file before the run"
    submit(toy, "bad", "--command_line", "logical")
    host.run_until(lambda: (toy.workunit("bad") or {}).get("assimilate_state") == 2)
    (bad,) = toy.results("bad")
    assert (bad["outcome"], bad["client_state"], bad["exit_status"]) == (3, 3, 0), \
        "writing to the open name in soft-link mode leaves the output absent"


def test_one_client_error_gives_error_mask_8(toy: Project,
                                              volunteer_host: VolunteerHost) -> None:
    submit(toy, "fails", "--batch", "4")
    volunteer_host.fail_next(1, exit_code=3)
    volunteer_host.run_until(lambda: finished(toy, "fails"))
    wu = toy.workunit("fails")
    assert wu is not None
    (result,) = toy.results("fails")
    assert (result["outcome"], result["client_state"], result["exit_status"]) == (3, 3, 3)
    assert "process exited with code 3 (0x3, -253)" in result["stderr_out"]
    assert (wu["error_mask"], wu["canonical_resultid"]) == (8, 0)
    assert assimilator_calls(toy) == [f"cwd={toy.tmp_dir} args=--error 8 fails {wu['id']} 4"]


def test_app_exit_code_and_missing_finish_file(toy: Project,
                                               volunteer_host: VolunteerHost) -> None:
    submit(toy, "exit7", "--command_line", "exit 7")
    submit(toy, "nofinish", "--command_line", "nofinish")
    volunteer_host.run_until(lambda: finished(toy, "exit7") and finished(toy, "nofinish"))
    (exit7,) = toy.results("exit7")
    assert (exit7["outcome"], exit7["exit_status"]) == (3, 7)
    (nofinish,) = toy.results("nofinish")
    assert (nofinish["outcome"], nofinish["exit_status"]) == (3, -226)
    assert nofinish["stderr_out"].count("toy: cwd=") == 4, "started once and restarted 3 times"


def test_abort_gives_203_and_mask_8(toy: Project, volunteer_host: VolunteerHost) -> None:
    submit(toy, "aborted")
    volunteer_host.abort_next(1)
    volunteer_host.run_until(lambda: finished(toy, "aborted"))
    (result,) = toy.results("aborted")
    assert (result["outcome"], result["client_state"], result["exit_status"]) == (3, 6, 203)
    assert wu_row(toy, "aborted")["error_mask"] == 8


def test_cancel_jobs_gives_24(toy: Project, volunteer_host: VolunteerHost) -> None:
    toy.query("update app_version set deprecated=1")  # nothing can be sent
    submit(toy, "cancelled")
    volunteer_host.step()
    (result,) = toy.results("cancelled")
    assert result["server_state"] == 2
    wu_id = str(wu_row(toy, "cancelled")["id"])
    assert toy.run("cancel_jobs", wu_id, wu_id).returncode == 0
    volunteer_host.run_until(lambda: finished(toy, "cancelled"))
    (result,) = toy.results("cancelled")
    assert (result["server_state"], result["outcome"]) == (5, 5)
    assert wu_row(toy, "cancelled")["error_mask"] == 24
    assert assimilator_calls(toy) == [f"cwd={toy.tmp_dir} args=--error 24 cancelled {wu_id} 0"]


def test_no_reply_then_replacement(toy: Project, volunteer_host: VolunteerHost) -> None:
    submit(toy, "late", "--delay_bound", "1", "--max_total_results", "2",
           "--max_error_results", "2")
    volunteer_host.no_reply_next(1)
    volunteer_host.run_until(lambda: finished(toy, "late"), timeout=15)
    first, second = toy.results("late")
    assert (first["name"], first["outcome"], first["server_state"]) == ("late_0", 4, 5)
    assert (second["name"], second["outcome"]) == ("late_1", 1)
    assert wu_row(toy, "late")["canonical_resultid"] == second["id"]


def test_hostile_output_and_oversized_output(toy: Project,
                                             volunteer_host: VolunteerHost) -> None:
    volunteer_host.tamper_output(lambda data: b"EVIL" * 500)
    submit(toy, "evil")
    volunteer_host.run_until(lambda: (toy.workunit("evil") or {}).get("assimilate_state") == 2)
    (call,) = assimilator_calls(toy)
    assert (toy.results("evil")[0]["outcome"], call.count(" ")) == (1, 2)
    volunteer_host.tamper_output(None)
    submit(toy, "big", content="x" * 2000)
    volunteer_host.run_until(lambda: finished(toy, "big"))
    (big,) = toy.results("big")
    assert (big["outcome"], big["client_state"]) == (3, 3), "bigger than max_nbytes"


def test_failing_assimilator_stops_until_restarted(toy: Project,
                                                   volunteer_host: VolunteerHost) -> None:
    (toy.bin_dir / "toy_assim").write_text("#!/bin/sh\nexit 2\n")
    submit(toy, "stuck")
    with pytest.raises(AssimilatorStopped, match="handler error 512; exiting"):
        volunteer_host.run_until(lambda: False, timeout=10)
    assert wu_row(toy, "stuck")["assimilate_state"] == 1
    volunteer_host.step()
    assert wu_row(toy, "stuck")["assimilate_state"] == 1
    (toy.bin_dir / "toy_assim").write_text(ASSIMILATOR)
    volunteer_host.restart_daemons()
    volunteer_host.run_until(lambda: finished(toy, "stuck"))


def test_script_tokens_are_dropped_by_the_split_bug(toy: Project,
                                                    volunteer_host: VolunteerHost) -> None:
    text = toy.config_path.read_text().replace("--script toy_assim",
                                               '--script "toy_assim wu_id files"')
    toy.config_path.write_text(text)
    submit(toy, "tokens")
    volunteer_host.run_until(lambda: finished(toy, "tokens"))
    assert assimilator_calls(toy) == [f"cwd={toy.tmp_dir} args="]


def test_without_validator_the_project_stalls(toy: Project,
                                              volunteer_host: VolunteerHost) -> None:
    text = toy.config_path.read_text()
    toy.config_path.write_text(text.replace("sample_bitwise_validator", "# no validator"))
    submit(toy, "stall")
    for _ in range(4):
        volunteer_host.step()
    wu = toy.workunit("stall")
    assert wu is not None
    assert (wu["need_validate"], wu["assimilate_state"]) == (1, 0)
    log = (toy.log_dir / "harness.log").read_text()
    assert "a real project would stall" in log


def test_script_validator_rejects(toy: Project, volunteer_host: VolunteerHost) -> None:
    text = toy.config_path.read_text().replace(
        "sample_bitwise_validator -d 3 --app toy",
        'script_validator -d 3 --app toy --init_script "toy_check"')
    toy.config_path.write_text(text)
    (toy.bin_dir / "toy_check").write_text('#!/bin/sh\ngrep -q good "$1"\n')
    (toy.bin_dir / "toy_check").chmod(0o755)
    submit(toy, "good", content="good\n")
    submit(toy, "bad", content="bad\n")
    volunteer_host.run_until(lambda: finished(toy, "good") and finished(toy, "bad"))
    assert toy.results("good")[0]["validate_state"] == 1
    (bad,) = toy.results("bad")
    assert (bad["outcome"], bad["validate_state"]) == (6, 2)
    assert wu_row(toy, "bad")["error_mask"] == 8


def add_version_1_1(project: Project) -> None:
    app_dir = project.root / "apps/toy/1.1/x86_64-pc-linux-gnu"
    app_dir.mkdir(parents=True)
    (app_dir / "toy_1.1.sh").write_text(TOY_APP.replace("toy_1.0.sh", "toy_1.1.sh"))
    (app_dir / "toy_1.1.sh").chmod(0o755)
    assert project.run("update_versions", "--noconfirm").returncode == 0


def test_file_deleter_removes_shared_inputs(toy: Project, volunteer_host: VolunteerHost) -> None:
    """Facts §8.1: a later job that shares an input of an assimilated job cannot download it."""
    submit(toy, "first")
    assert toy.run("create_work", "--appname", "toy", "--wu_name", "later",
                   "--app_version_num", "101", "first.in").returncode == 0
    volunteer_host.run_until(lambda: finished(toy, "first"))
    assert not toy.download_path("first.in").exists()
    add_version_1_1(toy)  # now "later" (pinned to 1.1) can be sent
    volunteer_host.run_until(lambda: finished(toy, "later"))
    (later,) = toy.results("later")
    assert (later["outcome"], later["client_state"], later["exit_status"]) == (3, 1, -186)
    assert "Giving up on download of first.in" in later["stderr_out"]


def test_quorum_of_two_and_older_versions(toy: Project, volunteer_host: VolunteerHost) -> None:
    submit(toy, "pair", "--min_quorum", "2", "--target_nresults", "2")
    volunteer_host.run_until(lambda: finished(toy, "pair"))
    assert [r["validate_state"] for r in toy.results("pair")] == [1, 1]
    add_version_1_1(toy)
    submit(toy, "pinned", "--app_version_num", "100")
    for _ in range(3):
        volunteer_host.step()
    assert [r["server_state"] for r in toy.results("pinned")] == [2], "never sent"


def test_background_host(toy: Project, volunteer_host: VolunteerHost) -> None:
    with volunteer_host.running():
        submit(toy, "bg")
        deadline = time.monotonic() + 20
        while not finished(toy, "bg"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
