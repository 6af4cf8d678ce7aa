"""The ``workspace-tool`` command: the ``main`` group and every command, registered here.

Each command parses its arguments, calls one library function and renders the result (render.py); the
shared options are in options.py, the database context and the error handling in context.py."""

from __future__ import annotations

import click

from workspace_tool.cli import chain, doctor, fleet, lifecycle, logs, pool, project
from workspace_tool.cli.context import AppContext, WorkspaceGroup


@click.group(cls=WorkspaceGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--database-url",
    metavar="URL",
    help="PostgreSQL URL. Default: $WORKSPACE_TOOL_DATABASE_URL, then $DATABASE_URL, then the embedded server.",
)
@click.option(
    "--direct-url",
    metavar="URL",
    help="PostgreSQL URL that bypasses the connection pooler --database-url goes through (PgBouncer in "
    "transaction mode), for what needs a session: revisions that run outside a transaction. Default: "
    "$WORKSPACE_TOOL_DIRECT_URL, then workspace_direct_url in alembic.ini.",
)
@click.option(
    "-c",
    "--config",
    metavar="PATH",
    help="alembic.ini of the shared chain. Default: $WORKSPACE_TOOL_CONFIG, then ./alembic.ini.",
)
@click.option("--traceback", is_flag=True, help="Show the full traceback of an error.")
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Log to stderr what ran for each schema, with timings (-v); and the SQL sent (-vv).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress or messages on stderr: only warnings and errors.")
@click.version_option(package_name="workspace-tool")
@click.pass_context
def main(
    ctx: click.Context,
    database_url: str | None,
    direct_url: str | None,
    config: str | None,
    traceback: bool,
    verbose: int,
    quiet: bool,
) -> None:
    """Provision and manage one PostgreSQL schema per project from one shared Alembic chain."""
    if verbose and quiet:
        raise click.UsageError("-v/--verbose and -q/--quiet don't go together")
    app = AppContext(database_url, config, traceback, direct_url)
    ctx.obj = app
    ctx.meta[logs.QUIET] = quiet
    ctx.call_on_close(app.close)
    logs.configure(ctx, verbose, app.passwords)


main.add_command(project.init)
main.add_command(project.ensure)
main.add_command(project.status)
main.add_command(project.list_)
main.add_command(lifecycle.drop)
main.add_command(lifecycle.restore)
main.add_command(lifecycle.purge)
main.add_command(lifecycle.exec_)
main.add_command(lifecycle.history)
main.add_command(lifecycle.heads)
main.add_command(lifecycle.show)
main.add_command(lifecycle.current)
main.add_command(lifecycle.stamp)
main.add_command(fleet.upgrade)
main.add_command(fleet.downgrade)
main.add_command(fleet.check)
main.add_command(chain.lint)
main.add_command(chain.verify_fast_path)
main.add_command(chain.revision)
main.add_command(chain.init_chain)
main.add_command(pool.pool)
main.add_command(doctor.doctor)
main.add_command(lifecycle.export)
main.add_command(lifecycle.import_)
main.add_command(lifecycle.clone)
main.add_command(lifecycle.move)

__all__ = ["main"]
