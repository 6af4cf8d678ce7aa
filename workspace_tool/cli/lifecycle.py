"""Commands of a tenant's life beyond provisioning: `export`, `import`, `clone`, `move`, `restore`,
`purge`, `exec`, and the per-project Alembic verbs; thin over workspace_tool.lifecycle."""

from __future__ import annotations

from typing import Any

import click

from workspace_tool.cli.context import AppContext, pass_app, require_projects
from workspace_tool.cli.fleet import run_and_report
from workspace_tool.cli.fleet_spec import OPTION_NAMES, FleetOptions, task_options
from workspace_tool.cli.logs import note
from workspace_tool.cli.options import DurationType, confirm, given, json_option, read_text, yes_option
from workspace_tool.cli.render import emit, few, to_json

lock_timeout_option = click.option(
    "--lock-timeout",
    type=DurationType(),
    default="5s",
    show_default=True,
    help="Longest wait for the project's lock (e.g. 200ms, 5s).",
)


@click.command(name="export")
@click.argument("project_id")
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), metavar="FILE", help="The export file to write."
)
@json_option
@pass_app
def export(app: AppContext, project_id: str, output: str, as_json: bool) -> None:
    """Write one project's rows (binary COPY, in one snapshot) and a manifest (revision, chain identity, row
    counts, checksums) to FILE. No DDL: the chain rebuilds the schema at the export's revision, so FILE
    restores into any database running the same chain."""
    from workspace_tool.lifecycle import export_project

    app.manager.chain.namespace.schema_for(project_id)
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

    if as_id is not None:
        app.manager.chain.namespace.schema_for(as_id)
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

    app.manager.chain.namespace.schema_for(source), app.manager.chain.namespace.schema_for(target)
    result = clone_project(
        app.engine, app.manager.chain, source, target, data=not no_data, lock_timeout_ms=lock_timeout
    )
    if as_json:
        click.echo(to_json(result.as_dict()))
    else:
        note(f"Cloned {source} to {target} at {result.revision}: {result.tables} tables, {result.rows} rows.")


# ------------------------------------------------------------------ fleet-wide: drop, exec
class RetainType(click.ParamType[float]):
    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        from workspace_tool.lifecycle.drop import as_seconds

        if isinstance(value, float):
            return value
        try:
            return as_seconds(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.command()
@task_options
@yes_option
@click.option(
    "--retain",
    type=RetainType(),
    metavar="DURATION",
    help="Quarantine instead (e.g. 30d, 12h): each schema renamed aside and its registry row marked dropped, "
    "until `restore ID` brings it back or `purge ID` (or `drop --purge-expired`) removes it.",
)
@click.option(
    "--purge-expired",
    is_flag=True,
    help="Purge the quarantined projects past their --retain date; alone (with --lock-timeout, --json, --yes only).",
)
@pass_app
def drop(app: AppContext, /, fleet: FleetOptions, retain: float | None, purge_expired: bool) -> None:
    """Drop projects (named, selected with --state/--match/--ids-from, or --all): each schema with all its
    data and its registry row, in a transaction of its own (a run over any number of projects holds one
    schema's locks per connection), in parallel, with progress and a report (--json). It asks first on a
    terminal; without one, --yes confirms. A named id that is no project is an error naming it, and nothing
    is dropped."""
    from workspace_tool.lifecycle import drop as dropping

    ids = fleet.project_ids
    if purge_expired:  # a mode of its own: whatever else was given would be ignored, so it is refused
        others = (["project ids"] if ids else []) + given(
            *(name for name in (*OPTION_NAMES, "retain") if name not in {"project_ids", "lock_timeout", "as_json"})
        )
        if others:
            raise click.UsageError(
                f"--purge-expired runs alone (with --lock-timeout, --json, --yes): not with {', '.join(others)}; "
                "nothing was changed"
            )
    namespace = app.manager.chain.namespace
    selected = fleet.all_ or fleet.selects
    schemas = [namespace.schema_for(project_id) for project_id in ids]  # every id checked first
    lock_timeout_ms = fleet.lock_timeout
    if purge_expired:
        confirm("purging the quarantined projects past their date deletes their data")
        purged = dropping.purge_expired(app.engine, namespace=namespace, lock_timeout_ms=lock_timeout_ms)
        if fleet.as_json:
            click.echo(to_json([q.as_dict() for q in purged]))
        else:
            note(f"Purged {len(purged)} quarantined project(s) past their date.")
        return
    operation = dropping.drop_operation(retain, namespace)
    spec = fleet.run_spec(operation)  # bad options are refused before anything is asked or dropped
    if ids:  # named: each one a project (or a quarantined one), else nothing is dropped
        aside = {q.project_id for q in dropping.quarantined(app.engine, namespace)} if retain is None else set()
        require_projects(app, [p for p in ids if p not in aside])
    # one project and nothing else (but --lock-timeout): as `drop ID` always did; else a fleet run and its report
    if (
        len(ids) == 1
        and retain is None
        and not given(*(n for n in OPTION_NAMES if n not in {"project_ids", "lock_timeout"}))
    ):
        schema = schemas[0]
        confirm(f"dropping {schema} deletes all its data")
        dropped = dropping.drop_one(app.engine, ids[0], namespace=namespace, lock_timeout_ms=lock_timeout_ms)
        app.manager.invalidate([ids[0]])
        if dropped:
            note(f"Dropped {schema}.")
        else:
            note(f"Nothing to drop: {schema} did not exist.")
        return
    who = few(schemas) if ids and not selected else "the selected projects"
    if retain is None:
        confirm(f"dropping {who} deletes all {'its' if len(ids) == 1 and not selected else 'their'} data")
    else:
        confirm(f"quarantining {who} takes {'it' if len(ids) == 1 and not selected else 'them'} out of the fleet")
    run_and_report(app, operation, spec, fleet.as_json)


@click.command()
@click.argument("project_id")
@lock_timeout_option
@json_option
@pass_app
def restore(app: AppContext, project_id: str, lock_timeout: int, as_json: bool) -> None:
    """Bring back a project quarantined by `drop --retain`, as it was dropped."""
    from workspace_tool.lifecycle.drop import restore as restoring

    namespace = app.manager.chain.namespace
    namespace.schema_for(project_id)
    found = restoring(app.engine, project_id, namespace=namespace, lock_timeout_ms=lock_timeout)
    app.manager.invalidate([project_id])
    if as_json:
        click.echo(to_json(found.as_dict()))
    else:
        note(f"Restored {project_id} from {found.schema}.")


@click.command()
@click.argument("project_ids", nargs=-1)
@yes_option
@click.option("--list", "list_only", is_flag=True, help="List the quarantined projects (and their dates) instead.")
@lock_timeout_option
@json_option
@pass_app
def purge(app: AppContext, project_ids: tuple[str, ...], list_only: bool, lock_timeout: int, as_json: bool) -> None:
    """Remove quarantined projects (see `drop --retain`) for good; with --list, show them. It asks first on
    a terminal; without one, --yes confirms."""
    from workspace_tool.lifecycle import drop as dropping

    if list_only:  # every quarantined project: what else was given would be ignored, so it is refused
        others = (["project ids"] if project_ids else []) + given("lock_timeout")
        if others:
            raise click.UsageError(f"--list lists every quarantined project: not with {', '.join(others)}")
    namespace = app.manager.chain.namespace
    if list_only:
        found = [q.as_dict() for q in dropping.quarantined(app.engine, namespace)]
        emit(found, ["project_id", "schema", "dropped_at", "until"], as_json=as_json)
        return
    if not project_ids:
        raise click.UsageError("name the quarantined projects to purge (or --list them)")
    for project_id in project_ids:
        namespace.schema_for(project_id)
    confirm(f"purging {few(list(project_ids))} deletes the quarantined data")
    purged = [
        dropping.purge(app.engine, p, namespace=namespace, lock_timeout_ms=lock_timeout).as_dict() for p in project_ids
    ]
    if as_json:
        click.echo(to_json(purged))
    else:
        note(f"Purged {len(purged)} quarantined project(s).")


@click.command(name="exec")
@task_options
@click.option("-c", "--command", "command", metavar="SQL", help="The SQL to run in each project's schema.")
@click.option("-f", "--file", "sql_file", type=click.Path(exists=True, dir_okay=False), help="Read the SQL from FILE.")
@pass_app
def exec_(app: AppContext, /, fleet: FleetOptions, command: str | None, sql_file: str | None) -> None:
    """Run SQL in each project's schema (named, selected with --state/--match/--ids-from, or --all), each in
    its own transaction under the project's lock with the project's search_path, in parallel; a result per
    project (the rows the last statement touched or returned), --json for all of it."""
    from workspace_tool.lifecycle.exec import exec_operation

    if (command is None) == (sql_file is None):
        raise click.UsageError("pass the SQL with -c SQL or -f FILE (one of them)")
    if sql_file is not None:
        command = read_text(sql_file, "-f")
    assert command is not None
    operation = exec_operation(command)
    run_and_report(app, operation, fleet.run_spec(operation), fleet.as_json)


# ------------------------------------------------------------------ the Alembic verbs, per project
REVISION_COLUMNS = ["revision", "down_revision", "message", "is_head", "runs_outside_transaction"]


@click.command()
@json_option
@pass_app
def history(app: AppContext, as_json: bool) -> None:
    """The chain's revisions, head first, with what each says and whether it runs outside a transaction."""
    from workspace_tool.lifecycle import revisions

    emit([r.as_dict() for r in revisions.history(app.manager.chain)], REVISION_COLUMNS, as_json=as_json)


@click.command()
@json_option
@pass_app
def heads(app: AppContext, as_json: bool) -> None:
    """The chain's head revision."""
    from workspace_tool.lifecycle import revisions

    emit([r.as_dict() for r in revisions.heads(app.manager.chain)], REVISION_COLUMNS, as_json=as_json)


@click.command()
@click.argument("revision")
@json_option
@pass_app
def show(app: AppContext, revision: str, as_json: bool) -> None:
    """One revision (an id, a unique prefix, or head): what it says, its file, and the SQL it compiles to."""
    from workspace_tool.lifecycle import revisions

    info, sql = revisions.show(app.manager.chain, revision)
    if as_json:
        click.echo(to_json({**info.as_dict(), "sql": sql}))
        return
    for key, value in info.as_dict().items():
        click.echo(f"{key}: {value}")
    click.echo("")
    click.echo(sql or "-- runs online (through Alembic): no compiled SQL")


@click.command()
@click.argument("project_ids", nargs=-1)
@json_option
@pass_app
def current(app: AppContext, project_ids: tuple[str, ...], as_json: bool) -> None:
    """Each project's revision (its schema's alembic_version) and the registry's; with no ids, every project."""
    namespace = app.manager.chain.namespace
    for project_id in project_ids:
        namespace.schema_for(project_id)
    statuses = app.manager.status(list(project_ids) or None)
    if project_ids:
        found = {s.project_id for s in statuses if s.registered or s.revision is not None}
        missing = [p for p in project_ids if p not in found]
        if missing:
            from workspace_tool.errors import WorkspaceNotFound

            raise WorkspaceNotFound(missing[0], namespace.schema_for(missing[0]))
    rows = [s.as_dict() for s in statuses]
    emit(rows, ["project_id", "revision", "registry_revision", "state"], as_json=as_json)


@click.command()
@click.argument("project_id")
@click.argument("revision")
@yes_option
@lock_timeout_option
@json_option
@pass_app
def stamp(app: AppContext, project_id: str, revision: str, lock_timeout: int, as_json: bool) -> None:
    """Set PROJECT_ID's version row to REVISION (an id, head or base) without running any revision: its
    tables are taken to be as REVISION leaves them. Recorded in the registry (last_action 'stamp')."""
    from workspace_tool.lifecycle import revisions

    schema = app.manager.chain.namespace.schema_for(project_id)
    app.manager.chain.resolve(revision)  # an unknown revision is refused before asking
    confirm(f"stamping {schema} changes its revision without changing its tables")
    before, after = revisions.stamp(app.engine, app.manager.chain, project_id, revision, lock_timeout_ms=lock_timeout)
    app.manager.invalidate([project_id])
    if as_json:
        click.echo(to_json({"project_id": project_id, "from_revision": before, "to_revision": after}))
    else:
        note(f"Stamped {project_id}: {before or 'base'} -> {after or 'base'} (no revision ran).")


@click.command()
@click.argument("project_id")
@click.option("--to-url", required=True, metavar="URL", help="The database to move the project to (same chain).")
@click.option(
    "--work-dir", type=click.Path(file_okay=False), metavar="DIR", help="Where the export file is written meanwhile."
)
@yes_option
@lock_timeout_option
@json_option
@pass_app
def move(app: AppContext, project_id: str, to_url: str, work_dir: str | None, lock_timeout: int, as_json: bool) -> None:
    """Move a project to another database: quarantine it here, export, import there, verify row counts, purge
    it here. Safe to run again after a crash at any step: it resumes where the tenant is."""
    from sqlalchemy import create_engine

    from workspace_tool.lifecycle.move import move_project
    from workspace_tool.urls import redact, sync_url

    schema = app.manager.chain.namespace.schema_for(project_id)
    confirm(f"moving {schema} to {redact(to_url)} drops it from this database once it is there")
    target = create_engine(sync_url(to_url), pool_pre_ping=True)
    try:
        result = move_project(
            app.engine, target, app.manager.chain, project_id, work_dir=work_dir, lock_timeout_ms=lock_timeout
        )
    finally:
        target.dispose()
    app.manager.invalidate([project_id])
    if as_json:
        click.echo(to_json(result.as_dict()))
    elif result.steps:
        resumed = f" (resumed after {result.resumed_from})" if result.resumed_from else ""
        note(f"Moved {project_id} to {redact(to_url)}{resumed}: {', '.join(result.steps)}; {result.rows} rows.")
    else:
        note(f"Nothing to do: {project_id} was moved to {redact(to_url)} already.")
