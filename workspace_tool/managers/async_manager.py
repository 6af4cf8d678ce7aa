"""ProjectWorkspaceManager: the same operations for an AsyncEngine (asyncpg).

The work runs through ``AsyncConnection.run_sync`` on the shared provisioning core, so every database
wait is an await: ``asyncio.gather`` of distinct projects really overlaps.  Compiled SQL needs no
Alembic globals; only the registry bootstrap and revisions that must run online go through Alembic,
and those are serialised per event loop (a thread lock can't keep two coroutines of one thread apart).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from workspace_tool import registry, transactions
from workspace_tool.chain import Chain
from workspace_tool.dberrors import translate_for
from workspace_tool.errors import ConfigurationError, WorkspaceError
from workspace_tool.fleet.reader import ProjectStatus, collect_status
from workspace_tool.managers import cache, sessions
from workspace_tool.managers.sync_manager import ConfigPath
from workspace_tool.naming import schema_for
from workspace_tool.schema.migrate import EnsureResult, drop_on, migrate_on, version_table
from workspace_tool.schema.roles import validate_role_name
from workspace_tool.urls import check_url

T = TypeVar("T")
_ONLINE_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def _online_lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _ONLINE_LOCKS.get(loop)
    if lock is None:
        lock = _ONLINE_LOCKS[loop] = asyncio.Lock()
    return lock


class ProjectWorkspaceManager:
    """Async twin of WorkspaceManager; safe under ``asyncio.gather`` and with NullPool engines."""

    def __init__(self, engine: AsyncEngine, config: ConfigPath = None) -> None:
        if engine.dialect.name != "postgresql" or engine.dialect.driver != "asyncpg":
            raise ConfigurationError(
                f"ProjectWorkspaceManager needs a postgresql+asyncpg engine, not "
                f"{engine.dialect.name}+{engine.dialect.driver}"
            )
        self.engine = engine
        check_url(engine.url)
        self.chain = Chain.load(config)
        self.cache_key = cache.database_key(engine.url, self.chain.config_path)
        self._ready = cache.ready_map(self.cache_key)
        self._needs_online = self.chain.has_online
        self._granted: set[tuple[str, str]] = set()  # (project, owner role) granted by this manager

    @property
    def head(self) -> str:
        return self.chain.head

    async def ensure_workspace_exists(
        self,
        project_id: str,
        *,
        upgrade: bool = True,
        verify: bool = False,
        owner_role: str | None = None,
        adopt: bool = False,
    ) -> str:
        """Return the project's schema, creating or upgrading it first if needed (``owner_role`` and
        ``adopt``: see WorkspaceManager.ensure)."""
        if not verify and (owner_role is None or (project_id, owner_role) in self._granted):
            try:
                schema = self._ready.get(project_id)
            except TypeError:  # unhashable: schema_for below names the rule it breaks
                schema = None
            if schema is not None:
                return schema
        return (
            await self.ensure_detailed(project_id, upgrade=upgrade, verify=verify, owner_role=owner_role, adopt=adopt)
        ).schema

    ensure = ensure_workspace_exists

    async def ensure_detailed(
        self,
        project_id: str,
        *,
        upgrade: bool = True,
        verify: bool = False,
        owner_role: str | None = None,
        adopt: bool = False,
    ) -> EnsureResult:
        started = time.perf_counter()
        schema = schema_for(project_id)
        if owner_role is not None:
            validate_role_name(owner_role)
        head = self.chain.head
        granted = owner_role is None or (project_id, owner_role) in self._granted
        if not verify and granted and project_id in self._ready:
            return EnsureResult(project_id, schema, "cached", head, head, _ms(started), "none")
        if verify and granted and await self._read_version(schema) == head:
            self._ready[project_id] = schema
            return EnsureResult(project_id, schema, "verified", head, head, _ms(started), "none")
        self._ready.pop(project_id, None)
        extension_schema = await self.bootstrap()

        def work(conn: Connection) -> EnsureResult:
            return migrate_on(
                conn,
                self.chain,
                project_id,
                schema,
                extension_schema,
                target=head,
                allow_upgrade=upgrade,
                started=started,
                owner_role=owner_role,
                adopt=adopt,
            )

        if self._needs_online:
            async with _online_lock():
                result = await self._run(schema, work)
        else:
            result = await self._run(schema, work)
        self._ready[project_id] = schema
        if owner_role is not None:
            self._granted.add((project_id, owner_role))
        return result

    async def _read_version(self, schema: str) -> str | None:
        try:
            async with self.engine.connect() as conn:
                # Autocommit: no BEGIN/ROLLBACK around the read, so it is one statement on the wire.
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                rows = (await conn.execute(text(f"SELECT version_num FROM {version_table(schema)}"))).all()
        except DBAPIError:
            return None
        return str(rows[0][0]) if len(rows) == 1 else None

    async def bootstrap(self, force: bool = False) -> str:
        extension_schema = None if force else cache.bootstrapped(self.cache_key)
        if extension_schema is None:
            async with _online_lock():
                extension_schema = await self._run(None, registry.bootstrap)
            cache.set_bootstrapped(self.cache_key, extension_schema)
        return extension_schema

    init = bootstrap

    async def drop_workspace(self, project_id: str) -> bool:
        schema = schema_for(project_id)
        self._ready.pop(project_id, None)
        await self.bootstrap()

        dropped = await self._run(schema, lambda conn: drop_on(conn, project_id, schema))
        self._ready.pop(project_id, None)
        return dropped

    drop = drop_workspace

    async def status(self, project_ids: list[str] | None = None) -> list[ProjectStatus]:
        """Like WorkspaceManager.status (versions read on this connection). Read-only."""
        if project_ids is not None:
            for project_id in project_ids:
                schema_for(project_id)

        def read(conn: Connection) -> list[ProjectStatus]:
            with conn.begin():
                return collect_status(conn, self.chain, project_ids)

        return await self._run(None, read)

    def invalidate(self, project_ids: list[str] | None = None) -> None:
        cache.invalidate(self.cache_key, project_ids)

    async def _run(self, schema: str | None, work: Callable[[Connection], T]) -> T:
        try:
            async with self.engine.connect() as conn:
                return await conn.run_sync(lambda sync_conn: work(transactions.own(sync_conn)))
        except WorkspaceError:
            raise
        except (DBAPIError, OSError) as exc:
            raise translate_for(self.engine.url, exc, schema) from exc
        except Exception as exc:
            if type(exc).__module__.startswith("asyncpg"):
                raise translate_for(self.engine.url, exc, schema) from exc
            raise

    # ------------------------------------------------------------ application
    def connect(self, project_id: str) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        """``async with amgr.connect(project_id) as conn:`` an AsyncConnection on the project's schema
        (ensured first), through ``schema_translate_map``; see workspace_tool.sessions."""
        return sessions.async_connect(self, project_id)

    def session(self, project_id: str, **session_options: Any) -> contextlib.AbstractAsyncContextManager[AsyncSession]:
        """``async with amgr.session(project_id) as s:`` an AsyncSession on the project's schema."""
        return sessions.async_session(self, project_id, **session_options)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
