"""The ``workspace-tool`` command: parse, call one library function, render. Errors become one line."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from functools import cached_property
from typing import Any, TypeVar

import click
from sqlalchemy import Engine, create_engine

from workspace_tool import embedded
from workspace_tool import fleet as fleet_runs
from workspace_tool.cli.render import emit
from workspace_tool.dberrors import translate, translate_for
from workspace_tool.errors import WorkspaceError
from workspace_tool.managers.sync_manager import WorkspaceManager
from workspace_tool.urls import redact, redact_text, sync_url

F = TypeVar("F", bound=Callable[..., Any])
URL_ENVS = ("WORKSPACE_TOOL_DATABASE_URL", "DATABASE_URL")
POOL_SIZE = 8
# What read commands (status, list, check) say on a database with no registry; they exit 0.
NO_REGISTRY = "No registry yet in this database: nothing has been provisioned (run `workspace-tool init` or `ensure`)"


class AppContext:
    """Built once per invocation; the engine is created lazily and disposed on close."""

    def __init__(self, database_url: str | None, config: str | None, traceback: bool) -> None:
        self.database_url = database_url
        self.config = config
        self.traceback = traceback
        self.jobs: int | None = None  # a fleet command's --jobs, set before the engine is made

    @cached_property
    def url(self) -> str:
        url = self.database_url or next((os.environ[e] for e in URL_ENVS if os.environ.get(e)), None)
        if url:
            return url
        data_dir = embedded.default_data_dir()
        url = embedded.start(data_dir)
        click.echo(f"Using the embedded PostgreSQL in {data_dir}", err=True)
        return url

    @cached_property
    def engine(self) -> Engine:
        """The pool holds what a fleet run of ``jobs`` needs at once (fleet_runs.connections_needed)."""
        connections = fleet_runs.connections_needed(self.jobs or fleet_runs.default_jobs())
        overflow = max(POOL_SIZE, connections - POOL_SIZE)
        return create_engine(sync_url(self.url), pool_size=POOL_SIZE, max_overflow=overflow, pool_pre_ping=True)

    @cached_property
    def manager(self) -> WorkspaceManager:
        return WorkspaceManager(self.engine, self.config)

    def close(self) -> None:
        if "manager" in self.__dict__:
            self.manager.close()
        if "engine" in self.__dict__:
            self.engine.dispose()


pass_app = click.make_pass_decorator(AppContext)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Write JSON to stdout instead of a table.")(f)


def adopt_option(f: F) -> F:
    return click.option(
        "--adopt",
        is_flag=True,
        help="Run the chain into an existing schema that holds tables but no alembic_version (refused "
        "otherwise) and register it.",
    )(f)


class WorkspaceGroup(click.Group):
    """Turns WorkspaceErrors (and database errors) into `Error: ...` on stderr, exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort, click.ClickException):
            raise
        except Exception as exc:
            app = ctx.find_object(AppContext)
            if app is not None and app.traceback:  # the whole chain, still without the password
                import traceback

                shown = "".join(traceback.format_exception(exc))
                click.echo(redact_text(shown, *_passwords(app)).rstrip(), err=True)
                sys.exit(1)
            error = exc if isinstance(exc, WorkspaceError) else _translate(exc, app)
            if error is None:
                raise
            click.echo(f"Error: {redact_text(str(error), *_passwords(app))}", err=True)
            sys.exit(1)


def _translate(exc: Exception, app: AppContext | None) -> WorkspaceError | None:
    from sqlalchemy.exc import DBAPIError

    if not isinstance(exc, (DBAPIError, OSError)):
        return None
    if app is not None and "engine" in app.__dict__:
        return translate_for(app.engine.url, exc)
    return translate(exc, None, _passwords(app))


def _passwords(app: AppContext | None) -> list[str]:
    if app is None or "url" not in app.__dict__:
        return []
    from workspace_tool.urls import url_secrets

    return url_secrets(app.url)


@click.group(cls=WorkspaceGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--database-url",
    metavar="URL",
    help="PostgreSQL URL. Default: $WORKSPACE_TOOL_DATABASE_URL, then $DATABASE_URL, then the embedded server.",
)
@click.option(
    "-c",
    "--config",
    metavar="PATH",
    help="alembic.ini of the shared chain. Default: $WORKSPACE_TOOL_CONFIG, then ./alembic.ini.",
)
@click.option("--traceback", is_flag=True, help="Show the full traceback of an error.")
@click.version_option(package_name="workspace-tool")
@click.pass_context
def main(ctx: click.Context, database_url: str | None, config: str | None, traceback: bool) -> None:
    """Provision and manage one PostgreSQL schema per project from one shared Alembic chain."""
    app = AppContext(database_url, config, traceback)
    ctx.obj = app
    ctx.call_on_close(app.close)


@main.command()
@pass_app
def init(app: AppContext) -> None:
    """Create the registry and the vector extension (once, under a lock), and store the catalog the chain
    builds, which `check` compares schemas with (so a read-only role can run check)."""
    extension_schema = app.manager.init()
    click.echo(
        f"Registry ready in project_registry; vector extension in schema {extension_schema}; "
        f"database {redact(app.url)}",
        err=True,
    )


@main.command()
@click.argument("project_ids", nargs=-1, required=True)
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
    no_upgrade: bool,
    owner_role: str | None,
    adopt: bool,
    as_json: bool,
) -> None:
    """Create each project's schema (or bring it to head) and print what was done and how long it took."""
    from workspace_tool.naming import schema_for
    from workspace_tool.schema.roles import validate_role_name

    for project_id in project_ids:  # every id is checked before any SQL is sent
        schema_for(project_id)
    if owner_role is not None:
        validate_role_name(owner_role)
    results: list[dict[str, Any]] = []
    try:
        for project_id in project_ids:
            result = app.manager.ensure_detailed(project_id, upgrade=not no_upgrade, owner_role=owner_role, adopt=adopt)
            results.append(dataclasses.asdict(result))
    finally:  # what was done before a failure is still reported, then the error
        emit(results, ["project_id", "schema", "action", "to_revision", "duration_ms", "path"], as_json=as_json)


@main.command()
@click.argument("project_ids", nargs=-1)
@json_option
@pass_app
def status(app: AppContext, project_ids: tuple[str, ...], as_json: bool) -> None:
    """Each named project's schema, revision, state and last duration; with no ids, the fleet: counts by
    state and revision (at head, behind, ahead/unknown, failed), missing schemas and orphans. Read-only;
    on a database where nothing was provisioned yet it says so (exit 0)."""
    statuses = app.manager.status(list(project_ids) or None)
    nothing_yet = not statuses and not app.manager.has_registry()
    if not project_ids:
        from workspace_tool.cli.render import to_json
        from workspace_tool.status import fleet_summary

        summary = fleet_summary(app.manager.chain, statuses)
        if as_json:
            click.echo(to_json(summary))
        elif not nothing_yet:
            render_fleet_summary(summary)
    else:
        rows = [s.as_dict() for s in statuses]
        emit(
            rows,
            ["project_id", "schema", "revision", "state", "last_action", "last_duration_ms", "updated_at"],
            as_json=as_json,
        )
        if not rows and not as_json and not nothing_yet:
            click.echo("No projects.", err=True)
    if nothing_yet:
        click.echo(NO_REGISTRY, err=True)


def render_fleet_summary(summary: dict[str, Any]) -> None:
    counts = [{"state": k, "schemas": v} for k, v in summary["counts"].items() if v]
    click.echo(f"{summary['total']} project(s); head is {summary['head']}")
    if counts:
        click.echo(_table(counts, ["state", "schemas"]))
        click.echo()
        click.echo(_table(summary["revisions"], ["revision", "state", "schemas"]))
    for key, title, columns in (
        ("missing", "Registered, schema missing", ["project_id", "schema", "registry_revision"]),
        ("orphans", "Project schemas not in the registry (orphans)", ["project_id", "schema", "revision"]),
        ("failed", "Failed on the last run", ["project_id", "schema", "revision", "last_error"]),
    ):
        if summary[key]:
            click.echo(f"\n{title}:")
            click.echo(_table(summary[key], columns))


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    from workspace_tool.cli.render import table

    return table(rows, columns)


@main.command(name="list")
@json_option
@pass_app
def list_(app: AppContext, as_json: bool) -> None:
    """Every project in the registry. Read-only."""
    rows = [dataclasses.asdict(r) for r in app.manager.projects()]
    emit(rows, ["project_id", "schema_name", "revision", "status", "created_at"], as_json=as_json)
    if not rows and not as_json:
        click.echo("No projects." if app.manager.has_registry() else NO_REGISTRY, err=True)


@main.command()
@click.argument("project_id")
@click.option("--yes", is_flag=True, help="Confirm dropping the schema and all its data.")
@pass_app
def drop(app: AppContext, project_id: str, yes: bool) -> None:
    """Drop a project's schema, with all its data, and its registry row."""
    from workspace_tool.naming import schema_for

    schema = schema_for(project_id)
    if not yes:
        raise click.UsageError(f"dropping {schema} deletes all its data: add --yes to confirm")
    if app.manager.drop(project_id):
        click.echo(f"Dropped {schema}.", err=True)
    else:
        click.echo(f"Nothing to drop: {schema} did not exist.", err=True)


# Each command module registers its commands on ``main`` when imported.
from workspace_tool.cli import authoring, fleet, lint, verify  # noqa: E402,F401
