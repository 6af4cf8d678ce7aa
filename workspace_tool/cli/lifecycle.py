"""Commands of a tenant's life beyond provisioning: `export`, `import`, `clone`, `move`, `restore`,
`purge`, `exec`, and the per-project Alembic verbs; thin over workspace_tool.lifecycle."""

from __future__ import annotations

import click

from workspace_tool.cli.context import AppContext, pass_app
from workspace_tool.cli.logs import note
from workspace_tool.cli.options import DurationType, json_option
from workspace_tool.cli.render import to_json

lock_timeout_option = click.option(
    "--lock-timeout",
    type=DurationType(),
    default="5s",
    show_default=True,
    help="Longest wait for the project's lock (e.g. 200ms, 5s).",
)


@click.command(name="export")
@click.argument("project_id")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, writable=True), metavar="FILE")
@json_option
@pass_app
def export(app: AppContext, project_id: str, output: str, as_json: bool) -> None:
    """Write one project's rows (binary COPY, in one snapshot) and a manifest (revision, chain identity, row
    counts, checksums) to FILE. No DDL: the chain rebuilds the schema at the export's revision, so FILE
    restores into any database running the same chain."""
    from workspace_tool.lifecycle import export_project
    from workspace_tool.naming import schema_for

    schema_for(project_id)
    result = export_project(app.engine, app.manager.chain, project_id, output)
    if as_json:
        click.echo(to_json(result.as_dict()))
    else:
        note(f"Exported {project_id} at {result.revision}: {result.tables} tables, {result.rows} rows to {output}.")


@click.command(name="import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--as", "as_id", metavar="ID", help="Import under this project id (default: the exported one).")
@click.option(
    "--upgrade", is_flag=True, help="Run the chain on to head after the rows are in, in the same transaction."
)
@lock_timeout_option
@json_option
@pass_app
def import_(app: AppContext, file: str, as_id: str | None, upgrade: bool, lock_timeout: int, as_json: bool) -> None:
    """Build a project's schema at FILE's revision, copy its rows in, set its sequences and register it: one
    transaction under the project's lock (a damaged file, an unknown revision, an existing id leave nothing)."""
    from workspace_tool.lifecycle import import_project
    from workspace_tool.naming import schema_for

    if as_id is not None:
        schema_for(as_id)
    result = import_project(
        app.engine, app.manager.chain, file, as_id=as_id, upgrade=upgrade, lock_timeout_ms=lock_timeout
    )
    if as_json:
        click.echo(to_json(result.as_dict()))
    else:
        note(f"Imported {result.project_id} at {result.to_revision}: {result.tables} tables, {result.rows} rows.")


@click.command()
@click.argument("source")
@click.argument("target")
@click.option("--no-data", is_flag=True, help="Only the schema, at SOURCE's revision: no rows.")
@lock_timeout_option
@json_option
@pass_app
def clone(app: AppContext, source: str, target: str, no_data: bool, lock_timeout: int, as_json: bool) -> None:
    """Copy project SOURCE to a new project TARGET in the same database, server-side, in one transaction:
    TARGET is built at SOURCE's revision, gets its rows and is registered; independent of SOURCE afterwards."""
    from workspace_tool.lifecycle import clone_project
    from workspace_tool.naming import schema_for

    schema_for(source), schema_for(target)
    result = clone_project(
        app.engine, app.manager.chain, source, target, data=not no_data, lock_timeout_ms=lock_timeout
    )
    if as_json:
        click.echo(to_json(result.as_dict()))
    else:
        note(f"Cloned {source} to {target} at {result.revision}: {result.tables} tables, {result.rows} rows.")
