"""Commands on named projects and the registry: `init`, `ensure`, `status`, `list` (`drop` is in lifecycle.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from workspace_tool.cli.context import AppContext, pass_app, require_projects
from workspace_tool.cli.logs import note
from workspace_tool.cli.options import adopt_option, jobs_option, json_option, read_ids
from workspace_tool.cli.render import NO_REGISTRY, action_word, emit, print_fleet_summary, to_json


@click.command()
@pass_app
def init(app: AppContext) -> None:
    """Create the registry and the vector extension (once, under a lock), and store the catalog the chain
    builds, which `check` compares schemas with (so a read-only role can run check)."""
    from workspace_tool.urls import redact

    extension_schema = app.manager.init()
    registry = app.manager.chain.namespace.registry_schema
    note(f"Registry ready in {registry}; vector extension in schema {extension_schema}; database {redact(app.url)}")


@click.command()
@click.argument("project_ids", nargs=-1)
@click.option(
    "--ids-from",
    type=click.Path(exists=True, dir_okay=False),
    metavar="FILE",
    help="Also the project ids in FILE (one a line): provisioned by the fleet runner, in parallel.",
)
@jobs_option
@click.option("--no-upgrade", is_flag=True, help="Fail if a schema is behind instead of upgrading it.")
@click.option(
    "--owner-role",
    metavar="ROLE",
    help="Grant ROLE (created NOLOGIN if missing) the schema's tables, in the same transaction; "
    "ROLE gets nothing on other schemas or the registry.",
)
@adopt_option
@json_option
@pass_app
def ensure(
    app: AppContext,
    project_ids: tuple[str, ...],
    ids_from: str | None,
    jobs: int | None,
    no_upgrade: bool,
    owner_role: str | None,
    adopt: bool,
    as_json: bool,
) -> None:
    """Create each project's schema (or bring it to head) and print what was done (in the registry's words:
    create, upgrade; current when it was at head already) and how long it took. With --ids-from or --jobs,
    through the fleet runner: in parallel, with progress and the fleet's report."""
    from workspace_tool.schema.roles import validate_role_name

    ids = list(project_ids) + (read_ids(ids_from, "--ids-from") if ids_from else [])
    if not ids:
        ctx = click.get_current_context()
        param = next(p for p in ctx.command.params if p.name == "project_ids")
        raise click.MissingParameter("Or pass --ids-from FILE.", ctx=ctx, param=param)
    if adopt and no_upgrade:  # an adoption runs the chain into the schema: an upgrade from base
        raise click.UsageError(
            "--adopt runs the chain into an existing schema, which --no-upgrade forbids: pass one of them"
        )
    for project_id in ids:  # every id is checked before any SQL is sent
        app.manager.chain.namespace.schema_for(project_id)
    if ids_from is not None or jobs is not None:
        if owner_role is not None:
            raise click.UsageError("--owner-role is for named projects, not with --ids-from or --jobs")
        from workspace_tool.cli.fleet import run_and_report
        from workspace_tool.fleet import RunSpec
        from workspace_tool.schema.operation import ENSURE_EXISTING, PROVISION

        operation = ENSURE_EXISTING if no_upgrade else PROVISION
        run_and_report(app, operation, RunSpec.build(ids, jobs=jobs, adopt=adopt, fail_fast=False), as_json)
        return
    project_ids = tuple(ids)
    if owner_role is not None:
        validate_role_name(owner_role)
    results: list[dict[str, Any]] = []
    try:
        for project_id in project_ids:
            result = app.manager.ensure_detailed(project_id, upgrade=not no_upgrade, owner_role=owner_role, adopt=adopt)
            row = dataclasses.asdict(result)
            row["action"] = action_word(row.pop("action"), row.pop("adopted"))  # the registry's word: adopt too
            del row["unchanged"]  # the fleet's (whether another run moved it); the JSON keys are unchanged
            results.append(row)
    finally:  # what was done before a failure is still reported, then the error
        emit(results, ["project_id", "schema", "action", "to_revision", "duration_ms", "path"], as_json=as_json)


@click.command()
@click.argument("project_ids", nargs=-1)
@json_option
@pass_app
def status(app: AppContext, project_ids: tuple[str, ...], as_json: bool) -> None:
    """Each named project's schema, revision, state and last duration; with no ids, the fleet: counts by
    state and revision (at-head, behind, ahead, failed), missing schemas and orphans, and the warm
    pool's spare schemas, counted apart. Read-only; on a database where nothing was provisioned yet it says
    so (exit 0). On a distributed database, also the node (host:port) holding each schema. An id that is
    no project (no schema, no registry row) is an error naming it (exit 1)."""
    statuses = require_projects(app, project_ids) if project_ids else app.manager.status()
    nothing_yet = not statuses and not app.manager.has_registry()
    if not project_ids:
        from workspace_tool import spares
        from workspace_tool.status import fleet_summary

        spare_counts = spares.status(app.engine, app.manager.chain).counts()
        summary = fleet_summary(app.manager.chain, statuses, spare_counts)
        if as_json:
            click.echo(to_json(summary))
        elif not nothing_yet:
            print_fleet_summary(summary)
    else:
        rows = [s.as_dict() for s in statuses]
        columns = ["project_id", "schema", "revision", "state", "last_action", "last_duration_ms", "updated_at"]
        if any(s.node for s in statuses):  # a distributed database: the node holding each schema
            columns.insert(2, "node")
        emit(rows, columns, as_json=as_json)
        if not rows and not as_json and not nothing_yet:
            note("No projects.")
    if nothing_yet:
        note(NO_REGISTRY)


@click.command(name="list")
@json_option
@pass_app
def list_(app: AppContext, as_json: bool) -> None:
    """Every project in the registry. Read-only. It needs no revision chain: when the chain can't be loaded
    (a revision file that doesn't import, say), it says so in one line and lists the registry anyway."""
    from workspace_tool import transactions
    from workspace_tool.dberrors import translating
    from workspace_tool.errors import ConfigurationError
    from workspace_tool.registry.inventory import has_registry, registry_rows

    namespace = app.namespace  # read from alembic.ini without loading the chain
    with translating(app.engine.url), transactions.connect(app.engine) as conn:
        rows = [dataclasses.asdict(r) for r in registry_rows(conn, namespace)]
        registered = bool(rows) or has_registry(conn, namespace)
    try:
        app.manager.chain  # noqa: B018 (loaded to tell a broken chain now, not at the next command)
    except ConfigurationError as exc:
        click.echo(f"Warning: the revision chain can't be loaded: {exc}; the registry is shown as it is", err=True)
    emit(rows, ["project_id", "schema_name", "revision", "status", "created_at"], as_json=as_json)
    if not rows and not as_json:
        note("No projects." if registered else NO_REGISTRY)
