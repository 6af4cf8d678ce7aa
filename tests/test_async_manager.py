"""ProjectWorkspaceManager (issue #2, section 7): the async API over an asyncpg AsyncEngine."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from support.chains import ALEMBIC_INI, HEAD, MAIN_REVISIONS, TABLES, truncated_chain
from support.data import make_schema_by_hand
from support.db import registry_row, schema_exists, schema_tables, schema_version

from workspace_tool import (
    ConfigurationError,
    InvalidProjectId,
    ProjectWorkspaceManager,
    UnknownRevision,
    UnmanagedSchema,
    WorkspaceManager,
    WorkspaceOutdated,
)
from workspace_tool.urls import async_url

T = TypeVar("T")


@pytest.fixture
def run(
    engine: sa.Engine, database_url: URL
) -> Iterator[Callable[[Callable[[ProjectWorkspaceManager], Awaitable[T]]], T]]:
    """run(fn): fn(amgr) in a fresh event loop with a NullPool asyncpg engine on the test database."""

    def runner(fn: Callable[[ProjectWorkspaceManager], Awaitable[T]], config: Path = ALEMBIC_INI) -> T:
        async def main() -> T:
            aengine = create_async_engine(async_url(database_url), poolclass=sa.pool.NullPool)
            try:
                return await fn(ProjectWorkspaceManager(aengine, config))
            finally:
                await aengine.dispose()

        return asyncio.run(main())

    yield runner


def count_async(aengine: AsyncEngine) -> list[str]:
    """Statements SQLAlchemy sends, plus what asyncpg sends on its own (BEGIN, ROLLBACK, ...)."""
    seen: list[str] = []
    sa.event.listen(aengine.sync_engine, "before_cursor_execute", lambda c, cur, stmt, *a: seen.append(stmt))

    def on_connect(dbapi_conn: Any, record: Any) -> None:
        dbapi_conn.driver_connection.add_query_logger(lambda r: seen.append(r.query))

    sa.event.listen(aengine.sync_engine, "connect", on_connect)
    return seen


def test_ensure_returns_the_schema_and_creates_it(run: Any, engine: sa.Engine) -> None:
    async def fn(amgr: ProjectWorkspaceManager) -> Any:
        first = await amgr.ensure_detailed("async-demo")
        second = await amgr.ensure_workspace_exists("async-demo")
        return first, second

    first, second = run(fn)
    assert (first.schema, first.action, first.to_revision, first.path) == (
        "project_async_demo",
        "created",
        HEAD,
        "fast",
    )
    assert first.duration_ms > 0
    assert second == "project_async_demo"
    assert schema_tables(engine, "project_async_demo") == TABLES
    assert schema_version(engine, "project_async_demo") == HEAD
    row = registry_row(engine, "async-demo")
    assert row is not None
    assert (row["revision"], row["status"], row["last_action"]) == (HEAD, "ready", "create")
    assert row["last_duration_ms"] > 0


def test_repeat_ensure_is_cached_without_a_statement(run: Any) -> None:
    async def fn(amgr: ProjectWorkspaceManager) -> tuple[list[str], list[str], str]:
        await amgr.ensure_workspace_exists("async-hot")
        seen = count_async(amgr.engine)
        for _ in range(50):
            await amgr.ensure_workspace_exists("async-hot")
        cached = list(seen)
        action = (await amgr.ensure_detailed("async-hot", verify=True)).action
        return cached, seen, action

    cached, seen, action = run(fn)
    assert cached == []
    assert action == "verified"
    assert seen == ['SELECT version_num FROM "project_async_hot".alembic_version']


def test_drop_workspace_removes_schema_row_and_cache(run: Any, engine: sa.Engine) -> None:
    async def fn(amgr: ProjectWorkspaceManager) -> tuple[bool, bool, str]:
        await amgr.ensure_workspace_exists("async-drop")
        dropped = await amgr.drop_workspace("async-drop")
        again = await amgr.drop_workspace("async-drop")
        assert not schema_exists(engine, "project_async_drop")
        assert registry_row(engine, "async-drop") is None
        action = (await amgr.ensure_detailed("async-drop")).action
        return dropped, again, action

    assert run(fn) == (True, False, "created")
    assert schema_exists(engine, "project_async_drop")


def test_upgrade_and_no_upgrade(run: Any, engine: sa.Engine, tmp_path: Path) -> None:
    older = MAIN_REVISIONS[0]
    WorkspaceManager(engine, truncated_chain(tmp_path / "c", older)).ensure("async-old")

    async def fn(amgr: ProjectWorkspaceManager) -> Any:
        with pytest.raises(WorkspaceOutdated, match=f"at revision {older}, behind head {HEAD}"):
            await amgr.ensure_workspace_exists("async-old", upgrade=False)
        assert schema_version(engine, "project_async_old") == older
        return await amgr.ensure_detailed("async-old")

    result = run(fn)
    assert (result.action, result.from_revision, result.to_revision) == ("upgraded", older, HEAD)
    assert schema_version(engine, "project_async_old") == HEAD


def test_unknown_revision_and_bad_id(run: Any, engine: sa.Engine) -> None:
    WorkspaceManager(engine, ALEMBIC_INI).ensure("async-future")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE project_async_future.alembic_version SET version_num = 'zzz'"))

    async def fn(amgr: ProjectWorkspaceManager) -> list[str]:
        amgr.invalidate()
        seen = count_async(amgr.engine)
        for bad in ("Bad", "registry", "a--b"):
            with pytest.raises(InvalidProjectId):
                await amgr.ensure_workspace_exists(bad)
        with pytest.raises(InvalidProjectId):
            await amgr.drop_workspace("Bad")
        assert seen == []  # refused before any SQL
        with pytest.raises(UnknownRevision, match="'zzz'"):
            await amgr.ensure_workspace_exists("async-future")
        return seen

    run(fn)
    assert schema_version(engine, "project_async_future") == "zzz"


def test_status_at_head_and_behind(run: Any, engine: sa.Engine, tmp_path: Path) -> None:
    WorkspaceManager(engine, truncated_chain(tmp_path / "c", MAIN_REVISIONS[1])).ensure("async-behind")

    async def fn(amgr: ProjectWorkspaceManager) -> dict[str, str]:
        await amgr.ensure_workspace_exists("async-head")
        return {s.project_id: s.state for s in await amgr.status()}

    assert run(fn) == {"async-behind": "behind", "async-head": "at-head"}


def test_a_sync_engine_is_refused(engine: sa.Engine) -> None:
    with pytest.raises(ConfigurationError, match="needs a postgresql\\+asyncpg engine"):
        ProjectWorkspaceManager(engine, ALEMBIC_INI)  # type: ignore[arg-type]


def test_works_inside_a_running_application_loop(engine: sa.Engine, database_url: URL) -> None:
    """Two managers on one pooled engine, used from tasks created by the application."""

    async def main() -> list[str]:
        aengine = create_async_engine(async_url(database_url), pool_size=2, max_overflow=0)
        try:
            a = ProjectWorkspaceManager(aengine, ALEMBIC_INI)
            b = ProjectWorkspaceManager(aengine, ALEMBIC_INI)
            tasks = [asyncio.create_task(m.ensure_workspace_exists(f"loop-{i % 3}")) for i, m in enumerate([a, b] * 3)]
            return list(await asyncio.gather(*tasks))
        finally:
            await aengine.dispose()

    assert sorted(set(asyncio.run(main()))) == ["project_loop_0", "project_loop_1", "project_loop_2"]


def test_a_hand_made_schema_is_refused_unless_adopted(run: Any, engine: sa.Engine) -> None:
    make_schema_by_hand(engine, "project_async_hand", "invoices")

    async def fn(amgr: ProjectWorkspaceManager) -> str:
        with pytest.raises(UnmanagedSchema, match="--adopt"):
            await amgr.ensure("async-hand")
        assert schema_tables(engine, "project_async_hand") == {"invoices"}
        return (await amgr.ensure_detailed("async-hand", adopt=True)).action

    assert run(fn) == "created"
    assert schema_tables(engine, "project_async_hand") == TABLES | {"invoices"}
    row = registry_row(engine, "async-hand")
    assert row is not None and row["last_action"] == "adopt"
