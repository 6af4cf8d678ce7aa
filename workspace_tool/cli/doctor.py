"""`doctor`: what to change on the server before a big rollout (workspace_tool.doctor), read-only."""

from __future__ import annotations

import click

from workspace_tool.cli.context import AppContext, pass_app
from workspace_tool.cli.logs import note
from workspace_tool.cli.options import jobs_option, json_option
from workspace_tool.cli.render import emit, to_json


@click.command()
@jobs_option
@click.option(
    "--schemas-per-transaction",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Schemas one transaction of the planned run migrates: what the lock table must hold, per job.",
)
@json_option
@pass_app
def doctor(app: AppContext, jobs: int | None, schemas_per_transaction: int, as_json: bool) -> None:
    """Check the server before a big rollout: its version, pgvector, the lock table and max_connections
    against --jobs, Citus nodes, schemas with no registry row and projects with no schema, a pooler in
    between, stale spares. One line per finding with what to change; exit 1 on a problem. Read-only."""
    from workspace_tool import doctor as checks

    report = checks.diagnose(
        app.engine,
        app.manager.chain,
        jobs=jobs,
        schemas_per_transaction=schemas_per_transaction,
        direct_url=app.direct_url is not None,
    )
    if as_json:
        click.echo(to_json(report.as_dict()))
    else:
        emit([f.as_dict() for f in report.findings], ["check", "status", "finding"], as_json=False)
        problems, warnings = len(report.problems), sum(1 for f in report.findings if f.status == "warn")
        note(f"{problems} problem(s), {warnings} warning(s)")
    if not report.ok:
        click.get_current_context().exit(1)
