"""ProjectWorkspaceManager: the same operations for an AsyncEngine (asyncpg).

The work runs through ``AsyncConnection.run_sync`` on the shared provisioning core, so every database
wait is an await: ``asyncio.gather`` of distinct projects really overlaps.  Compiled SQL needs no
Alembic globals; only the registry bootstrap and revisions that must run online go through Alembic,
and those are serialised per event loop (a thread lock can't keep two coroutines of one thread apart).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from . import cache, registry
from .chain import Chain
from .errors import ConfigurationError, WorkspaceError
from .failures import translate
from .inspection import ProjectStatus, collect_status
from .manager import ConfigPath
from .naming import schema_for
from .provisioning import EnsureResult, migrate_on, version_table
from .targeting import lock_schema

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
        self.chain = Chain.load(config)
        self.cache_key = cache.database_key(engine.url, self.chain.config_path)
        self._ready = cache.ready_map(self.cache_key)
        self._needs_online = self.chain.has_online

    @property
    def head(self) -> str:
        return self.chain.head

    async def ensure_workspace_exists(self, project_id: str, *, upgrade: bool = True, verify: bool = False) -> str:
        """Return the project's schema, creating or upgrading it first if needed."""
        if not verify:
            schema = self._ready.get(project_id)
            if schema is not None:
                return schema
        return (await self.ensure_detailed(project_id, upgrade=upgrade, verify=verify)).schema

    ensure = ensure_workspace_exists

    async def ensure_detailed(self, project_id: str, *, upgrade: bool = True, verify: bool = False) -> EnsureResult:
        started = time.perf_counter()
        schema = schema_for(project_id)
        head = self.chain.head
        if not verify and project_id in self._ready:
            return EnsureResult(project_id, schema, "cached", head, head, _ms(started), "none")
        if verify and await self._read_version(schema) == head:
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
            )

        if self._needs_online:
            async with _online_lock():
                result = await self._run(schema, work)
        else:
            result = await self._run(schema, work)
        self._ready[project_id] = schema
        return result

    async def _read_version(self, schema: str) -> str | None:
        try:
            async with self.engine.connect() as conn:
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

        def drop_on(conn: Connection) -> bool:
            with conn.begin():
                lock_schema(conn, schema)
                existed = conn.execute(
                    text("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :s)"), {"s": schema}
                ).scalar()
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
                deleted = conn.execute(registry.DELETE, {"project_id": project_id}).rowcount
            return bool(existed) or deleted > 0

        dropped = await self._run(schema, drop_on)
        self._ready.pop(project_id, None)
        return dropped

    drop = drop_workspace

    async def status(self, project_ids: list[str] | None = None) -> list[ProjectStatus]:
        if project_ids is not None:
            for project_id in project_ids:
                schema_for(project_id)
        await self.bootstrap()

        def read(conn: Connection) -> list[ProjectStatus]:
            with conn.begin():
                return collect_status(conn, self.chain, project_ids)

        return await self._run(None, read)

    def invalidate(self, project_ids: list[str] | None = None) -> None:
        cache.invalidate(self.cache_key, project_ids)

    async def _run(self, schema: str | None, work: Callable[[Connection], T]) -> T:
        try:
            async with self.engine.connect() as conn:
                return await conn.run_sync(work)
        except WorkspaceError:
            raise
        except (DBAPIError, OSError) as exc:
            raise translate(exc, schema) from exc
        except Exception as exc:
            if type(exc).__module__.startswith("asyncpg"):
                raise translate(exc, schema) from exc
            raise


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
