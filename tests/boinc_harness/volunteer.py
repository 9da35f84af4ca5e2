"""TEST STAND-IN for a running BOINC project plus one volunteer host. Not product code.

``VolunteerHost.step()`` runs ONE pass of each daemon, in order: transitioner, feeder +
scheduler (sending to this host), the client (download, run, upload) and its report,
validator, script_assimilator, file_deleter; it returns what they did (empty when
nothing happened). ``run_until()`` repeats steps until a condition holds. Daemons are
the ones config.xml's ``<daemons>`` configures and bin/start's model says run
(``start_stop.running_daemons``): before bin/start was ever run, every entry as if it
had been started once (of entries sharing a lock only the first); afterwards exactly
those whose process holds their lock. So a project without a validator, or whose
validator lost its lock, stalls at need_validate=1 exactly like a real one. A
script_assimilator whose script fails raises ``AssimilatorStopped`` and stays down until
``restart_daemons()`` (the real daemon exits and only ``bin/start`` brings it back).

Test injections act on the next tasks the host receives, in the order they were asked
for: ``fail_next``, ``abort_next``, ``no_reply_next``; ``tamper_output`` rewrites every
output before upload (a hostile host) until it is set back to None.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .backend import assimilator_pass, file_deleter_pass, validator_pass
from .client import Client
from .common import read_config
from .project import Project
from .server import (
    AssimilatorStopped,
    DaemonExited,
    Server,
    handle_reports,
    scheduler_rpc,
    transitioner_pass,
)
from .start_stop import ever_started, exit_daemon, running_daemons

__all__ = ["AssimilatorStopped", "DaemonExited", "VolunteerHost"]

ADMIN_USER_ID = 1
MAX_WUS_TO_SEND = 50


class VolunteerHost:
    """The project's daemons and one x86_64 Linux client host, stepped by a test.

    ``soft_links=True`` lays every job input and output out as a ``<soft_link>`` file even
    when the templates say ``<copy_file/>`` (a harness knob, not a client option), so one
    set of templates exercises both slot layouts; app-version files keep their own
    ``<copy_file/>``, as the real client does. ``max_restarts`` caps the real client's
    endless restarts of an app that exits 0 without ``boinc_finish_called``; after that
    the task fails with exit_status -226. A task may run for ``rsc_fpops_bound / flops``
    seconds, and never longer than ``max_task_seconds``, then fails with exit_status 197.
    ``max_tasks_per_rpc`` models the client's work request: None takes up to the
    scheduler's cap (max_wus_to_send * ncpus, as the verified client with a work buffer
    did, facts §7); ``ncpus`` is a client with an empty work buffer, which asks only for
    enough jobs to fill its idle CPUs.
    """

    def __init__(self, project: Project, *, client_dir: Path, host_id: int = 1,
                 soft_links: bool = False, ncpus: int = 2, flops: float = 1e9,
                 max_restarts: int = 3, max_task_seconds: float = 60.0,
                 max_tasks_per_rpc: int | None = None) -> None:
        self.project = project
        self.max_tasks_per_rpc = max_tasks_per_rpc
        self.host_id = host_id
        self.ncpus = ncpus
        self.stopped: set[str] = set()
        self.client = Client(read_config(project.root), client_dir, host_id=host_id,
                             soft_links=soft_links, ncpus=ncpus, flops=flops,
                             max_restarts=max_restarts, max_task_seconds=max_task_seconds)

    # -- test injections ---------------------------------------------------------------
    def fail_next(self, n: int = 1, exit_code: int = 1) -> None:
        """The next ``n`` tasks "exit" with ``exit_code`` without running the app."""
        self.client.actions.extend([("fail", exit_code)] * n)

    def abort_next(self, n: int = 1) -> None:
        """The next ``n`` tasks are aborted by the user (exit_status 203)."""
        self.client.actions.extend([("abort", 0)] * n)

    def no_reply_next(self, n: int = 1) -> None:
        """The next ``n`` tasks are never reported; the deadline passes (NO_REPLY)."""
        self.client.actions.extend([("no_reply", 0)] * n)

    def tamper_output(self, fn: Callable[[bytes], bytes] | None) -> None:
        """Rewrite every output's bytes with ``fn`` before upload (None: stop tampering)."""
        self.client.tamper = fn

    def restart_daemons(self) -> None:
        """``bin/start``: bring back daemons that exited (the script_assimilator)."""
        self.stopped.clear()
        if ever_started(read_config(self.project.root)):
            self.project.run("start")

    # -- running -----------------------------------------------------------------------
    def step(self) -> list[str]:
        """One pass of every daemon and one scheduler RPC of the client."""
        config = read_config(self.project.root)
        self.client.config = config
        if ever_started(config):
            self.stopped.clear()  # the daemons' processes say what runs, not this set
        srv = Server(config=config, conn=config.connect(), stopped=self.stopped,
                     running=running_daemons(config))
        try:
            if not self.client.authenticator:
                self.client.authenticator = srv.q(
                    "select authenticator from user where id=%s", ADMIN_USER_ID)[0]["authenticator"]
            events = transitioner_pass(srv)
            limit = MAX_WUS_TO_SEND * self.ncpus
            if self.max_tasks_per_rpc is not None:
                limit = min(limit, self.max_tasks_per_rpc)
            tasks = scheduler_rpc(srv, self.host_id, ADMIN_USER_ID, limit, events)
            if tasks:
                events += handle_reports(srv, self.client.run(tasks))
            events += validator_pass(srv)
            try:
                events += assimilator_pass(srv)
            except DaemonExited as exc:
                exit_daemon(config, exc.daemon)
                raise
            events += file_deleter_pass(srv)
        finally:
            srv.conn.close()
        return events

    def run_until(self, predicate: Callable[[], bool], timeout: float = 30.0,
                  interval: float = 0.05) -> list[str]:
        """Step until ``predicate()`` is true; all events, or TimeoutError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        events: list[str] = []
        while not predicate():
            if time.monotonic() > deadline:
                tail = "\n".join(events[-20:])
                raise TimeoutError(f"condition not met within {timeout} s; last events:\n{tail}")
            new = self.step()
            events += new
            if not new:
                time.sleep(interval)
        return events

    @contextmanager
    def running(self, interval: float = 0.05) -> Iterator[VolunteerHost]:
        """Step in a background thread while the block runs (e.g. around executor calls).

        A daemon error stops the thread; it is re-raised when the block exits.
        """
        stop = threading.Event()
        errors: list[BaseException] = []

        def loop() -> None:
            while not stop.is_set():
                try:
                    busy = self.step()
                except BaseException as exc:
                    errors.append(exc)
                    return
                if not busy:
                    stop.wait(interval)

        thread = threading.Thread(target=loop, name="boinc-harness-host", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
        if errors:
            raise errors[0]
