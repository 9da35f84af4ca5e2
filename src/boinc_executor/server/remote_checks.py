"""``doctor`` checks for remote submission (run when the project takes remote submissions).

They report what :func:`boinc_executor.server.remote.setup_remote` prepares
(group-writable download hierarchy, the ``pyboinc_remote_*`` templates, PHP's upload
limits) and whether any user may submit pyboinc jobs at all (``grant-submit``).
Registered through :data:`boinc_executor.server.doctor.CHECK_MODULES`.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..protocol.names import APP_NAME
from .doctor import Context, Finding, check
from .remote import RemoteCheck, remote_checks

__all__: list[str] = []


def _findings(ctx: Context, names: tuple[str, ...]) -> Iterator[Finding]:
    if not ctx.remote:
        return
    for found in remote_checks(ctx.root):
        if found.name.startswith(names) and not found.ok:
            yield Finding.failed(found.message, _fix(ctx, found))


def _fix(ctx: Context, found: RemoteCheck) -> str:
    if found.name.startswith("php"):
        return "raise the limit in the web server's php.ini, then reload the web server"
    return f"boinc-executor setup-project --remote {ctx.root}"


@check("remote: download hierarchy")
def _download(ctx: Context) -> Iterator[Finding]:
    yield from _findings(ctx, ("download",))


@check("remote: templates")
def _templates(ctx: Context) -> Iterator[Finding]:
    yield from _findings(ctx, ("templates/",))


@check("remote: PHP upload limits")
def _php(ctx: Context) -> Iterator[Finding]:
    yield from _findings(ctx, ("php",))


@check("remote: submit rights")
def _rights(ctx: Context) -> Finding | None:
    if not ctx.remote:
        return None
    rows = ctx.db().query(
        "SELECT COUNT(*) FROM user_submit s WHERE s.submit_all=1 OR EXISTS (SELECT 1 FROM "
        "user_submit_app a JOIN app p ON p.id=a.app_id WHERE a.user_id=s.user_id AND p.name=%s)",
        (APP_NAME,),
        doing="counting users with submit rights",
    )
    if rows and int(rows[0][0]):
        return None
    return Finding.failed(
        f"no user may submit {APP_NAME} jobs remotely (no user_submit/user_submit_app rows)",
        f"boinc-executor grant-submit {ctx.root} USER_ID_OR_EMAIL",
    )
