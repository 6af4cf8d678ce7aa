"""The ``workspace-tool`` command: the ``main`` group and every command, registered here.

Each command parses its arguments, calls one library function and renders the result (render.py); the
shared options are in options.py (the fleet commands' in fleet_spec.py), the database context and the
error handling in context.py."""

from __future__ import annotations

from typing import NoReturn

import click

from workspace_tool.cli import chain, doctor, fleet, lifecycle, logs, pool, program, project
from workspace_tool.cli.context import AppContext, WorkspaceGroup
from workspace_tool.cli.options import output_options


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
@output_options
@click.version_option(package_name="workspace-tool")
@click.pass_context
def main(
    ctx: click.Context,
    database_url: str | None,
    direct_url: str | None,
    config: str | None,
    traceback: bool,
) -> None:
    """Provision and manage one PostgreSQL schema per project from one shared Alembic chain."""
    app = AppContext(database_url, config, traceback, direct_url)
    ctx.obj = app
    ctx.call_on_close(app.close)
    logs.configure(ctx, app.passwords)


for command in (
    project.init,
    project.ensure,
    project.status,
    project.list_,
    lifecycle.drop,
    lifecycle.restore,
    lifecycle.purge,
    lifecycle.exec_,
    fleet.upgrade,
    fleet.downgrade,
    fleet.check,
    chain.lint,
    chain.verify_fast_path,
    chain.revision,
    chain.init_chain,
    pool.pool,
    doctor.doctor,
    lifecycle.history,
    lifecycle.heads,
    lifecycle.show,
    lifecycle.current,
    lifecycle.stamp,
    lifecycle.export,
    lifecycle.import_,
    lifecycle.clone,
    lifecycle.move,
):
    main.add_command(output_options(command))  # -q/-v after the command's name too
for command in pool.pool.commands.values():
    output_options(command)


def run() -> NoReturn:
    """The ``workspace-tool`` program (the console script, ``python -m workspace_tool``): ``main``, then a fast
    exit (program.py). Code running the commands in its own process calls ``main`` (or CliRunner)."""
    program.run(main)


__all__ = ["main", "run"]
