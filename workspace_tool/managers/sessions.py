"""A project's tables from application code: connections and ORM sessions scoped to one project schema.

Statements reach the project's schema through ``schema_translate_map={None: schema}`` (the models have
``schema=None``), set on the connection's execution options, never on the pooled DBAPI connection.
Each transaction additionally starts with ``SET LOCAL search_path TO <project schema>, <extension
schema>``: pgvector's operators (``<=>`` behind ``cosine_distance``) live in the extension's schema, and
``text()`` SQL finds the project's tables.  ``SET LOCAL`` ends with the transaction, so a connection goes
back to the pool with its default search_path and the next borrower (another project, or code that knows
nothing about projects) sees nothing of this one.

So these connections always run in transactions: on an engine in AUTOCOMMIT a connection is switched to
READ COMMITTED as its transaction begins (the engine's level comes back with the pool's reset), and a
caller switching a project's connection to AUTOCOMMIT gets a ConfigurationError.

The project is ensured first (a dict lookup once it is known to be at head), so a project dropped by
another process after this one cached it is only noticed by the statement that misses it (SQLSTATE
3F000 or 42P01 out of the block): the project is then forgotten here and, if its schema is really gone,
WorkspaceNotFound is raised instead of the driver's error; the next connect/session/ensure creates it
again.  (Re-ensuring inside the block can't help: the caller's statements and pending ORM objects can't
be replayed, and a deliberate drop would be silently undone under them.)

Each manager keeps the scoped engines of the projects used most recently (``ScopedEngines``, an LRU of
``workspace_scoped_engines`` in alembic.ini, default 1,000, or the manager's ``scoped_engines=``): about
5.5 KB each, so a service that touches 100,000 projects does not keep 100,000 of them (550 MB). A project
whose engine was let go gets a new one on its next use (about 0.1 ms).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.exc import DBAPIError

from workspace_tool import transactions
from workspace_tool.dberrors import INVALID_SCHEMA_NAME, UNDEFINED_TABLE, sqlstate
from workspace_tool.errors import ConfigurationError, WorkspaceNotFound
from workspace_tool.sql import search_path_sql

if TYPE_CHECKING:  # the ORM and asyncio extension load when a session (or the async manager) is used
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
    from sqlalchemy.orm import Session

    from workspace_tool.chain import Chain

SCOPED_ENGINES_OPTION = "workspace_scoped_engines"
DEFAULT_SCOPED_ENGINES = 1000


def scoped_engines_size(chain: Chain, size: int | None = None) -> int:
    """``size`` (checked), else ``workspace_scoped_engines`` in the chain's alembic.ini, else the default:
    how many projects' scoped engines a manager keeps."""
    if size is not None:
        if size < 1:
            raise ConfigurationError(f"scoped_engines is a number of projects, at least 1; got {size}")
        return size
    return chain.whole_number(
        SCOPED_ENGINES_OPTION,
        DEFAULT_SCOPED_ENGINES,
        f"it must be a whole number of projects whose scoped engines a manager keeps, at least 1 "
        f"({DEFAULT_SCOPED_ENGINES} by default)",
        at_least=1,
    )


class ScopedEngines:
    """The scoped engines (``scoped_engine``) of the ``size`` projects used most recently, for one manager;
    thread-safe. An engine let go stays valid for whoever still holds it (a connection or session open on
    it keeps it), and is garbage once they are done."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._engines: OrderedDict[tuple[str, str], Engine] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, engine: Engine, schema: str, extension_schema: str) -> Engine:
        key = (schema, extension_schema)
        with self._lock:
            scoped = self._engines.get(key)
            if scoped is None:
                scoped = self._engines[key] = scoped_engine(engine, schema, extension_schema)
                while len(self._engines) > self.size:
                    self._engines.popitem(last=False)
            else:
                self._engines.move_to_end(key)
            return scoped

    def __len__(self) -> int:
        return len(self._engines)


class Manager(Protocol):
    """What these need of a WorkspaceManager."""

    @property
    def engine(self) -> Engine: ...

    scoped_engines: ScopedEngines

    chain: Chain

    def ensure(self, project_id: str) -> str: ...

    def bootstrap(self) -> str: ...

    def invalidate(self, project_ids: list[str] | None = None) -> None: ...


class AsyncManager(Protocol):
    """What these need of an AsyncWorkspaceManager."""

    @property
    def engine(self) -> AsyncEngine: ...

    scoped_engines: ScopedEngines

    chain: Chain

    async def ensure(self, project_id: str) -> str: ...

    async def bootstrap(self) -> str: ...

    def invalidate(self, project_ids: list[str] | None = None) -> None: ...


def scoped_engine(engine: Engine, schema: str, extension_schema: str) -> Engine:
    """A view of ``engine`` (same pool) whose statements target ``schema``, always inside a transaction."""
    scoped = engine.execution_options(schema_translate_map={None: schema})
    sql = search_path_sql(schema, extension_schema)

    def set_local_search_path(conn: Connection) -> None:
        # Fired as a transaction begins, before any statement of it: the DBAPI cursor starts the
        # transaction (psycopg2 and SQLAlchemy's asyncpg adapter begin implicitly on first execute).
        if transactions.in_autocommit(conn):  # the engine's AUTOCOMMIT: this connection runs a real one
            transactions.own(conn)
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(sql)
        finally:
            cursor.close()

    event.listen(scoped, "begin", set_local_search_path)
    event.listen(scoped, "set_connection_execution_options", refuse_autocommit)
    return scoped


def refuse_autocommit(conn: Connection, options: dict[str, Any]) -> None:
    """A project's connection or session can't be switched to AUTOCOMMIT: its SET LOCAL search_path would
    end with the first statement, and the next one could reach another schema's (or public's) tables."""
    level = options.get("isolation_level")
    if isinstance(level, str) and level.replace("_", " ").upper() == "AUTOCOMMIT":
        raise ConfigurationError(
            "a project's connection or session can't use isolation_level='AUTOCOMMIT': its statements reach "
            "the project's schema through a SET LOCAL search_path, which needs a transaction; commit as you go "
            "(conn.commit()), or use the engine directly for autocommit work outside the project"
        )


# --------------------------------------------------------- a project dropped elsewhere
MISSING_SQLSTATES = {INVALID_SCHEMA_NAME, UNDEFINED_TABLE}
_SCHEMA_EXISTS = text("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :schema)")


def _forget_if_missing(manager: Manager | AsyncManager, project_id: str, exc: DBAPIError) -> bool:
    """On "schema/relation does not exist", forget the project (the next ensure reads the database)."""
    if sqlstate(exc) not in MISSING_SQLSTATES:
        return False
    manager.invalidate([project_id])
    return True


def _dropped(project_id: str, schema: str, schema_exists: object) -> WorkspaceNotFound | None:
    return None if schema_exists else WorkspaceNotFound(project_id, schema, dropped=True)


@contextmanager
def _not_found_if_dropped(manager: Manager, project_id: str) -> Iterator[None]:
    try:
        yield
    except DBAPIError as exc:
        if not _forget_if_missing(manager, project_id, exc):
            raise
        schema = manager.chain.namespace.schema_for(project_id)
        with manager.engine.connect() as conn:
            missing = _dropped(project_id, schema, conn.execute(_SCHEMA_EXISTS, {"schema": schema}).scalar())
        if missing is None:
            raise
        raise missing from exc


@asynccontextmanager
async def _async_not_found_if_dropped(manager: AsyncManager, project_id: str) -> AsyncIterator[None]:
    try:
        yield
    except DBAPIError as exc:
        if not _forget_if_missing(manager, project_id, exc):
            raise
        async with manager.engine.connect() as conn:
            schema = manager.chain.namespace.schema_for(project_id)
            missing = _dropped(project_id, schema, (await conn.execute(_SCHEMA_EXISTS, {"schema": schema})).scalar())
        if missing is None:
            raise
        raise missing from exc


# ------------------------------------------------------------------------- sync
def project_engine(manager: Manager, project_id: str) -> Engine:
    """Ensure the project, and return an Engine view of the manager's engine that targets its schema."""
    schema = manager.ensure(project_id)
    return manager.scoped_engines.get(manager.engine, schema, manager.bootstrap())


@contextmanager
def connect(manager: Manager, project_id: str) -> Iterator[Connection]:
    """``with connect(mgr, "my-project") as conn:`` a Connection whose statements target the project's
    schema. Like ``engine.connect()``: commit as you go (``conn.commit()``); what isn't committed is
    rolled back when the block ends."""
    engine = project_engine(manager, project_id)
    with _not_found_if_dropped(manager, project_id), engine.connect() as conn:
        yield conn


@contextmanager
def session(manager: Manager, project_id: str, **session_options: Any) -> Iterator[Session]:
    """``with session(mgr, "my-project") as s:`` an ORM Session on the project's schema; closed (and
    anything uncommitted rolled back) when the block ends. ``session_options`` go to ``Session()``."""
    from sqlalchemy.orm import Session

    engine = project_engine(manager, project_id)
    with _not_found_if_dropped(manager, project_id), Session(bind=engine, **session_options) as orm_session:
        yield orm_session


# ------------------------------------------------------------------------ async
async def async_project_engine(manager: AsyncManager, project_id: str) -> AsyncEngine:
    """Ensure the project, and return an AsyncEngine view of the manager's engine that targets its schema."""
    from sqlalchemy.ext.asyncio import AsyncEngine

    schema = await manager.ensure(project_id)
    extension_schema = await manager.bootstrap()
    return AsyncEngine(manager.scoped_engines.get(manager.engine.sync_engine, schema, extension_schema))


@asynccontextmanager
async def async_connect(manager: AsyncManager, project_id: str) -> AsyncIterator[AsyncConnection]:
    """``async with async_connect(amgr, "my-project") as conn:`` the AsyncConnection counterpart."""
    engine = await async_project_engine(manager, project_id)
    async with _async_not_found_if_dropped(manager, project_id), engine.connect() as conn:
        yield conn


@asynccontextmanager
async def async_session(manager: AsyncManager, project_id: str, **session_options: Any) -> AsyncIterator[AsyncSession]:
    """``async with async_session(amgr, "my-project") as s:`` the AsyncSession counterpart."""
    from sqlalchemy.ext.asyncio import AsyncSession

    engine = await async_project_engine(manager, project_id)
    async with _async_not_found_if_dropped(manager, project_id), AsyncSession(bind=engine, **session_options) as s:
        yield s
