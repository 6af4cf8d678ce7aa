"""Commands on the whole fleet of project schemas: `upgrade`, `downgrade`, `check`."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from workspace_tool.cli.context import AppContext, pass_app
from workspace_tool.cli.logs import quiet
from workspace_tool.cli.options import adopt_option, fleet_options, jobs_option, json_option
from workspace_tool.cli.render import ProgressPrinter, print_drift_report, print_fleet_report, print_sql

if TYPE_CHECKING:
    from workspace_tool.schema.operation import Operation

INTERRUPTED = 130  # the exit code of a run stopped by Ctrl-C, as a shell reports SIGINT


@click.command()
@fleet_options
@click.option("--to", "target", default="head", show_default=True, metavar="REV", help="Target revision.")
@adopt_option
@pass_app
def upgrade(app: AppContext, /, target: str, adopt: bool, **options: Any) -> None:
    """Bring project schemas (--all, or the named ones) up to a revision, in parallel.

    Each schema migrates in its own transaction under its own lock; a failure leaves that schema at its
    old revision. Exit 1 if any schema failed; rerunning picks up only what is left."""
    from workspace_tool import fleet

    _run_fleet(app, fleet.UPGRADE, target, adopt=adopt, **options)


@click.command()
@fleet_options
@click.option("--to", "target", required=True, metavar="REV", help="Target revision ('base' for empty).")
@pass_app
def downgrade(app: AppContext, /, target: str, **options: Any) -> None:
    """Bring project schemas (--all, or the named ones) down to a revision, in parallel."""
    from workspace_tool import fleet

    _run_fleet(app, fleet.DOWNGRADE, target, **options)


def _run_fleet(
    app: AppContext,
    operation: Operation,
    target: str,
    *,
    project_ids: tuple[str, ...],
    all_: bool,
    jobs: int | None,
    fail_fast: bool | None,
    lock_timeout: int,
    retries: int,
    show_sql: bool,
    as_json: bool,
    adopt: bool = False,
) -> None:
    from workspace_tool import fleet

    if bool(project_ids) == all_:
        raise click.UsageError("name the projects, or pass --all (not both)")
    ids = None if all_ else list(project_ids)
    app.jobs = jobs  # before the engine is made: its pool is sized for them
    chain = app.manager.chain
    if show_sql:
        scripts = fleet.sql(app.engine, chain, ids, target=target, operation=operation, lock_timeout_ms=lock_timeout)
        print_sql(scripts, as_json)
        return
    printer = None if quiet() else ProgressPrinter(sys.stderr)
    report = fleet.run(
        app.engine,
        chain,
        operation,
        ids,
        target=target,
        jobs=jobs,
        fail_fast=(not all_) if fail_fast is None else fail_fast,
        lock_timeout_ms=lock_timeout,
        retries=retries,
        progress=printer,
        adopt=adopt,
    )
    if printer is not None:
        printer.finish()
    print_fleet_report(report, as_json)
    if report.interrupted:
        click.get_current_context().exit(INTERRUPTED)
    if report.failed:
        click.get_current_context().exit(1)


@click.command()
@click.argument("project_ids", nargs=-1)
@jobs_option
@json_option
@pass_app
def check(app: AppContext, project_ids: tuple[str, ...], jobs: int | None, as_json: bool) -> None:
    """Exit 0 only if every project schema is registered, at head, and matches the head model.

    The model is the catalog the chain builds at head: stored in the registry by `init` and fleet runs,
    else built in a scratch schema in a transaction that is rolled back. Each schema's tables, columns,
    indexes and constraints are compared with it (a fingerprint per schema, then the differences of those
    that differ). Read-only; on a database where nothing was provisioned yet it says so (exit 0)."""
    from workspace_tool import drift

    app.jobs = jobs  # before the engine is made: its pool is sized for them
    report = drift.check(app.engine, app.manager.chain, list(project_ids) or None, jobs=jobs)
    print_drift_report(report, as_json)
    if not report.ok:
        click.get_current_context().exit(1)
