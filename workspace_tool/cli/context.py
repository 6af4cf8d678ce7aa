"""What every command shares: the AppContext (database URL, engine, manager), and library errors turned into
click errors (``Error: <one line>`` on stderr, exit 1; the whole traceback with --traceback), never with a
password. Nothing heavy is imported here: SQLAlchemy and the library load when a command needs them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cached_property
from typing import IO, TYPE_CHECKING, Any

import click

from workspace_tool.cli.logs import note
from workspace_tool.cli.render import few
from workspace_tool.errors import WorkspaceError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from workspace_tool.chain import Chain
    from workspace_tool.managers.sync_manager import WorkspaceManager
    from workspace_tool.namespace import Namespace
    from workspace_tool.status import ProjectStatus

URL_ENVS = ("WORKSPACE_TOOL_DATABASE_URL", "DATABASE_URL")
# With no URL and without the embedded extra, what to do instead of installing it.
NAME_A_SERVER = f"or pass --database-url URL (or set {URL_ENVS[0]})"
POOL_SIZE = 8
ARGV = "workspace_tool.argv"  # the command line's arguments as given, in click's Context.meta


class AppContext:
    """Built once per invocation; the engine is created lazily and disposed on close."""

    def __init__(
        self, database_url: str | None, config: str | None, traceback: bool, direct_url: str | None = None
    ) -> None:
        self.database_url = database_url
        self.config = config
        self.traceback = traceback
        self.direct_url_given = direct_url
        self.jobs: int | None = None  # a fleet command's --jobs, set before the engine is made

    @cached_property
    def url(self) -> str:
        url = self.database_url or next((os.environ[e] for e in URL_ENVS if os.environ.get(e)), None)
        if url:
            return url
        from workspace_tool import embedded

        data_dir = embedded.default_data_dir()
        url = embedded.start(data_dir, otherwise=NAME_A_SERVER)
        note(f"Using the embedded PostgreSQL in {data_dir}")
        return url

    @cached_property
    def direct_url(self) -> str | None:
        """The URL that bypasses the pooler (see workspace_tool.flavor.pooler): --direct-url, else
        $WORKSPACE_TOOL_DIRECT_URL, else workspace_direct_url in alembic.ini; None when none is set."""
        from workspace_tool.chain.loading import DIRECT_URL_OPTION, main_option, resolve_config_path
        from workspace_tool.urls import DIRECT_URL_ENV

        given = self.direct_url_given or os.environ.get(DIRECT_URL_ENV)
        if given:
            return given
        return main_option(resolve_config_path(self.config), DIRECT_URL_OPTION)

    @cached_property
    def namespace(self) -> Namespace:
        """The chain's namespace as alembic.ini names it, read without loading the chain (``list`` shows the
        registry of a chain that can't be loaded)."""
        from workspace_tool.chain.loading import main_option, resolve_config_path
        from workspace_tool.namespace import REGISTRY_SCHEMA_OPTION, SCHEMA_PREFIX_OPTION, from_options

        path = resolve_config_path(self.config)
        return from_options(main_option(path, REGISTRY_SCHEMA_OPTION), main_option(path, SCHEMA_PREFIX_OPTION), path)

    @cached_property
    def engine(self) -> Engine:
        """The pool holds what a fleet run of ``jobs`` needs at once (fleet.connections_needed)."""
        return self._engine(self.url)

    @cached_property
    def direct_engine(self) -> Engine | None:
        """An engine on the direct URL, when one is set (see ``direct_url``): trusted to be a session."""
        if self.direct_url is None:
            return None
        from workspace_tool.flavor import pooler

        engine = self._engine(self.direct_url)
        pooler.trust(engine)
        return engine

    @property
    def session_engine(self) -> Engine:
        """Where a command that may build a schema in parts (outside a transaction) runs: the direct engine
        when there is one, else the engine."""
        return self.direct_engine or self.engine

    def _engine(self, url: str) -> Engine:
        from sqlalchemy import create_engine

        from workspace_tool import fleet
        from workspace_tool.cli import collector
        from workspace_tool.urls import sync_url

        connections = fleet.connections_needed(self.jobs or fleet.default_jobs())
        overflow = max(POOL_SIZE, connections - POOL_SIZE)
        # use_native_hstore=False: no hstore type is used, so the dialect's first connect skips its hstore
        # lookup (BEGIN, a pg_type query, ROLLBACK: three round trips before anything else)
        engine = create_engine(
            sync_url(url),
            pool_size=POOL_SIZE,
            max_overflow=overflow,
            pool_pre_ping=True,
            use_native_hstore=False,
        )
        collector.resume()  # the program's imports are done (psycopg2's too): its collector works from here
        return engine

    @cached_property
    def chain(self) -> Chain:
        """The chain alembic.ini names (the manager's: ``Chain.load`` loads it once per process), without a
        manager: a fleet command needs none, so `upgrade --all` starts without importing it (nor the warm
        pool's refill, nor status)."""
        from workspace_tool.chain import Chain

        return Chain.load(self.config)

    @cached_property
    def manager(self) -> WorkspaceManager:
        from workspace_tool.managers.sync_manager import WorkspaceManager

        return WorkspaceManager(self.engine, self.config, direct_engine=self.direct_engine)

    def passwords(self) -> list[str]:
        """The secrets of the URLs in use (the database URL's once it is known, the direct URL's)."""
        from workspace_tool.urls import DIRECT_URL_ENV, url_secrets

        urls = [self.direct_url_given, os.environ.get(DIRECT_URL_ENV), self.__dict__.get("direct_url")]
        if "url" in self.__dict__:
            urls.append(self.url)
        return sorted({s for url in urls if url for s in url_secrets(url)}, key=len, reverse=True)

    def close(self) -> None:
        if "manager" in self.__dict__:
            self.manager.close()
        for name in ("engine", "direct_engine"):
            engine = self.__dict__.get(name)
            if engine is not None:
                engine.dispose()


pass_app = click.make_pass_decorator(AppContext)


class CommandError(click.ClickException):
    """A library error as the CLI shows it: ``Error: <one line>``, or the whole traceback when ``shown``;
    exit 1."""

    def __init__(self, message: str, *, shown: str | None = None) -> None:
        super().__init__(message)
        self.shown = shown

    def show(self, file: IO[Any] | None = None) -> None:
        if self.shown is None:
            super().show(file)
        else:
            click.echo(self.shown, file=file, err=True)


def require_projects(app: AppContext, project_ids: Sequence[str]) -> list[ProjectStatus]:
    """The status of each named project; a one-line error (exit 1) naming every id that is no project (no
    schema and no registry row), before the command changes anything. Read-only."""
    statuses = app.manager.status(list(project_ids))
    found = {s.project_id for s in statuses}
    unknown = [i for i in dict.fromkeys(project_ids) if i not in found]
    if not unknown:
        return statuses
    shown = few(unknown)
    where = (
        "`workspace-tool list` lists the projects"
        if statuses or app.manager.has_registry()
        else "no registry yet in this database: nothing has been provisioned"
    )
    what = f"no project {shown}" if len(unknown) == 1 else f"{len(unknown)} unknown project ids: {shown}"
    raise CommandError(f"{what} (no schema, no registry row; {where}); nothing was changed")


class WorkspaceGroup(click.Group):
    """Turns WorkspaceErrors (and database errors, translated as the library does) into CommandErrors, and
    keeps the arguments as given (``ctx.meta[ARGV]``: a command can print the command that follows it)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[ARGV] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort, click.ClickException):
            raise
        except BrokenPipeError:
            raise  # the reader of stdout is gone (`| head -1`): click's main exits 1 and writes nothing more
        except Exception as exc:
            error = command_error(exc, ctx.find_object(AppContext))
            if error is None:
                raise
            raise error from exc


def command_error(exc: Exception, app: AppContext | None) -> CommandError | None:
    """The click error for ``exc``, with the URL's secrets scrubbed; None for a bug (its traceback shows)."""
    from workspace_tool.urls import redact_text

    passwords = app.passwords() if app is not None else []
    if app is not None and app.traceback:  # the whole chain, still without the password
        import traceback

        shown = redact_text("".join(traceback.format_exception(exc)), *passwords).rstrip()
        return CommandError(redact_text(str(exc), *passwords), shown=shown)
    error = exc if isinstance(exc, WorkspaceError) else _translate(exc, app)
    return None if error is None else CommandError(redact_text(str(error), *passwords))


def _translate(exc: Exception, app: AppContext | None) -> WorkspaceError | None:
    from sqlalchemy.exc import DBAPIError

    from workspace_tool.dberrors import translate, translate_for

    if not isinstance(exc, (DBAPIError, OSError)):
        return None
    if app is not None and "engine" in app.__dict__:
        return translate_for(app.engine.url, exc)
    return translate(exc, None, app.passwords() if app is not None else [])
