"""Project-scoped connections and ORM sessions: isolation on a shared pool, and pgvector queries."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from support.chains import ALEMBIC_INI, ChainBuilder
from support.data import NEAREST, add_chunks, nearest_statement

from migrations.models import Repository
from workspace_tool import ConfigurationError, ProjectWorkspaceManager, WorkspaceManager, WorkspaceNotFound
from workspace_tool.urls import async_url


@pytest.fixture
def small_pool(engine: sa.Engine, database_url: URL) -> Iterator[sa.Engine]:
    """One pooled connection for everyone (the fixture ``engine`` has reset the database)."""
    small = sa.create_engine(database_url, pool_size=1, max_overflow=0, pool_timeout=5)
    yield small
    small.dispose()


class Recorder:
    """The SQL the driver was given, with its parameters (schema names already translated)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def __call__(self, conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        self.sent.append((statement, parameters))

    def last(self, containing: str) -> tuple[str, Any]:
        found: tuple[str, Any] = next(s for s in reversed(self.sent) if containing in s[0])
        return found


def search_path(conn: sa.Connection) -> str:
    return str(conn.execute(sa.text("SHOW search_path")).scalar())


def test_sessions_of_two_projects_share_one_pooled_connection_without_leaking(small_pool: sa.Engine) -> None:
    with small_pool.connect() as conn:
        default_path = search_path(conn)
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    mgr = WorkspaceManager(small_pool, ALEMBIC_INI)
    with mgr.session("tenant-a") as a, mgr.session("tenant-b") as b:
        a.add(Repository(path="/a", name="a"))
        a.commit()
        b.add(Repository(path="/b", name="b"))
        b.commit()
        for _ in range(2):  # interleaved transactions, each on the one pooled connection
            assert a.scalars(sa.select(Repository.path)).all() == ["/a"]
            assert a.execute(sa.text("SELECT pg_backend_pid()")).scalar() == pid
            assert a.execute(sa.text("SELECT path FROM repositories")).scalars().all() == ["/a"]  # text() too
            assert search_path(a.connection()) == "project_tenant_a, workspace_extensions"
            a.commit()
            assert b.scalars(sa.select(Repository.path)).all() == ["/b"]
            assert b.execute(sa.text("SELECT pg_backend_pid()")).scalar() == pid
            assert search_path(b.connection()) == "project_tenant_b, workspace_extensions"
            b.rollback()
    with small_pool.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar() == pid
        assert search_path(conn) == default_path
        # nothing landed outside the project schemas
        assert conn.execute(sa.text("SELECT to_regclass('public.repositories')")).scalar() is None
    mgr.close()


def test_connect_targets_the_project_in_every_transaction(small_pool: sa.Engine) -> None:
    mgr = WorkspaceManager(small_pool, ALEMBIC_INI)
    with small_pool.connect() as conn:
        default_path = search_path(conn)
    with mgr.connect("tenant-c") as conn:
        conn.execute(sa.insert(Repository).values(path="/c", name="c"))
        conn.commit()
        # the next transaction (autobegun after commit) is scoped as well
        assert search_path(conn) == "project_tenant_c, workspace_extensions"
        assert conn.execute(sa.select(Repository.path)).scalars().all() == ["/c"]
        conn.execute(sa.insert(Repository).values(path="/not-committed", name="x"))
    with mgr.connect("tenant-d") as conn:
        assert conn.execute(sa.select(Repository.path)).scalars().all() == []
    with small_pool.connect() as conn:
        assert search_path(conn) == default_path
        rows = conn.execute(sa.text("SELECT path FROM project_tenant_c.repositories")).scalars().all()
        assert rows == ["/c"]  # committed work stays, the rest was rolled back
    mgr.close()


def test_vector_similarity_through_a_project_session_uses_the_hnsw_index(manager: WorkspaceManager) -> None:
    with manager.session("vectors") as s:
        add_chunks(s)
        s.commit()
        recorder = Recorder()
        sa.event.listen(s.get_bind(), "before_cursor_execute", recorder)
        s.execute(sa.text("SET LOCAL enable_seqscan = off"))  # 40 rows: make the planner show its index
        found = s.scalars(nearest_statement()).all()
        assert [c.content for c in found] == [f"chunk {i}" for i in range(NEAREST)]
        statement, parameters = recorder.last("<=>")
        assert "project_vectors.code_chunks" in statement  # the translate map named the schema
        plan = s.connection().exec_driver_sql("EXPLAIN " + statement, parameters).scalars().all()
        assert any("ix_code_chunks_embedding_hnsw" in line for line in plan), plan
        s.rollback()
    with manager.session("other") as s:
        assert s.scalars(nearest_statement()).all() == []


def test_async_sessions_are_isolated_and_use_the_hnsw_index(engine: sa.Engine, database_url: URL) -> None:
    async def scenario() -> None:
        small = create_async_engine(async_url(database_url), pool_size=1, max_overflow=0, pool_timeout=5)
        try:
            async with small.connect() as conn:
                default_path = (await conn.execute(sa.text("SHOW search_path"))).scalar()
            amgr = ProjectWorkspaceManager(small, ALEMBIC_INI)
            async with amgr.session("async-a") as a, amgr.session("async-b") as b:
                add_chunks(a)
                await a.commit()
                b.add(Repository(path="/b", name="b"))
                await b.commit()
                for _ in range(2):
                    recorder = Recorder()
                    sa.event.listen(a.sync_session.get_bind(), "before_cursor_execute", recorder)
                    await a.execute(sa.text("SET LOCAL enable_seqscan = off"))
                    found = (await a.scalars(nearest_statement())).all()
                    assert [c.content for c in found] == [f"chunk {i}" for i in range(NEAREST)]
                    statement, parameters = recorder.last("<=>")
                    conn = await a.connection()
                    plan = (await conn.exec_driver_sql("EXPLAIN " + statement, tuple(parameters))).scalars().all()
                    assert any("ix_code_chunks_embedding_hnsw" in line for line in plan), plan
                    await a.commit()
                    assert (await b.scalars(sa.select(Repository.path))).all() == ["/b"]
                    assert (await b.scalars(nearest_statement())).all() == []
                    await b.commit()
            async with amgr.connect("async-a") as conn:
                paths = (await conn.execute(sa.select(Repository.path))).scalars().all()
                assert paths == ["/repo"]
            async with small.connect() as conn:
                assert (await conn.execute(sa.text("SHOW search_path"))).scalar() == default_path
        finally:
            await small.dispose()

    asyncio.run(scenario())


# ------------------------------------------- a project dropped elsewhere (issue 9 item 9: stale cache)
def drop_elsewhere(engine: sa.Engine, project_id: str) -> None:
    """What `workspace-tool drop` in another process does: this process's cache knows nothing of it."""
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA project_{project_id.replace('-', '_')} CASCADE"))
        conn.execute(sa.text("DELETE FROM project_registry.workspace_config WHERE project_id = :p"), {"p": project_id})


def test_a_project_dropped_elsewhere_is_reported_forgotten_and_recreated_next_time(
    small_pool: sa.Engine, engine: sa.Engine
) -> None:
    mgr = WorkspaceManager(small_pool, ALEMBIC_INI)
    with mgr.session("stale") as s:
        s.add(Repository(path="/r", name="r"))
        s.commit()
    drop_elsewhere(engine, "stale")

    with (
        pytest.raises(WorkspaceNotFound, match="dropped after this process ensured it") as info,
        mgr.session("stale") as s,
    ):
        s.scalars(sa.select(Repository)).all()
    assert (info.value.project_id, info.value.schema) == ("stale", "project_stale")
    with mgr.session("stale") as s:  # forgotten: this session ensured it again, empty
        assert s.scalars(sa.select(Repository)).all() == []
        s.add(Repository(path="/again", name="again"))
        s.commit()

    drop_elsewhere(engine, "stale")
    with pytest.raises(WorkspaceNotFound), mgr.connect("stale") as conn:  # text() SQL via the search_path
        conn.execute(sa.text("SELECT count(*) FROM repositories"))
    assert mgr.ensure_detailed("stale").action == "created"
    mgr.close()


def test_a_missing_table_in_a_live_project_is_the_databases_own_error(manager: WorkspaceManager) -> None:
    with pytest.raises(sa.exc.ProgrammingError, match="no_such_table"), manager.connect("alive") as conn:
        conn.execute(sa.text("SELECT * FROM no_such_table"))
    with manager.connect("alive") as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(Repository)).scalar() == 0


def test_async_a_project_dropped_elsewhere_is_reported_and_recreated_next_time(
    engine: sa.Engine, database_url: URL
) -> None:
    async def scenario() -> tuple[str, str, list[str]]:
        small = create_async_engine(async_url(database_url), pool_size=1, max_overflow=0, pool_timeout=5)
        try:
            amgr = ProjectWorkspaceManager(small, ALEMBIC_INI)
            async with amgr.session("astale") as s:
                s.add(Repository(path="/r", name="r"))
                await s.commit()
            drop_elsewhere(engine, "astale")
            try:
                async with amgr.session("astale") as s:
                    await s.scalars(sa.select(Repository))
            except WorkspaceNotFound as exc:
                in_session = str(exc)
            assert (await amgr.ensure_detailed("astale")).action == "created"  # forgotten, so read again
            drop_elsewhere(engine, "astale")
            try:
                async with amgr.connect("astale") as conn:
                    await conn.execute(sa.text("SELECT count(*) FROM repositories"))
            except WorkspaceNotFound as exc:
                in_connection = str(exc)
            async with amgr.session("astale") as s:
                paths = list((await s.scalars(sa.select(Repository.path))).all())
            return in_session, in_connection, paths
        finally:
            await small.dispose()

    in_session, in_connection, paths = asyncio.run(scenario())
    assert "project astale has no schema" in in_session and "dropped after this process ensured it" in in_session
    assert "project astale has no schema" in in_connection
    assert paths == []


def test_a_manager_keeps_the_scoped_engines_of_the_projects_used_last_and_those_let_go_still_work(
    engine: sa.Engine,
) -> None:
    """A service touching 100,000 projects must not keep 100,000 scoped engines (about 5.5 KB each)."""
    mgr = WorkspaceManager(engine, ALEMBIC_INI, scoped_engines=2)
    used = []
    for p in ["lru-a", "lru-b", "lru-c", "lru-d"]:
        with mgr.connect(p) as conn:
            conn.execute(sa.insert(Repository).values(path=f"/{p}", name=p))
            conn.commit()
            used.append(weakref.ref(conn.engine))
        assert len(mgr.scoped_engines) == min(2, len(used))
    with mgr.connect("lru-d"):  # the most recent stays first in line: lru-c goes next, not lru-d
        pass
    gc.collect()
    assert [ref() is None for ref in used] == [True, True, False, False]  # let go, and freed
    with mgr.session("lru-a") as s:  # a new engine for it, on its own tables
        assert s.scalars(sa.select(Repository.path)).all() == ["/lru-a"]
        assert search_path(s.connection()) == "project_lru_a, workspace_extensions"
    gc.collect()
    assert used[2]() is None and used[3]() is not None and len(mgr.scoped_engines) == 2


def test_async_manager_keeps_its_scoped_engines_bounded(engine: sa.Engine, database_url: URL) -> None:
    async def scenario() -> list[list[str]]:
        small = create_async_engine(async_url(database_url), pool_size=1, max_overflow=0, pool_timeout=5)
        try:
            amgr = ProjectWorkspaceManager(small, ALEMBIC_INI, scoped_engines=1)
            paths: list[list[str]] = []
            for p in ["alru-a", "alru-b", "alru-a"]:
                async with amgr.session(p) as s:
                    if p == "alru-b" or not paths:
                        s.add(Repository(path=f"/{p}", name=p))
                        await s.commit()
                    paths.append(list((await s.scalars(sa.select(Repository.path))).all()))
                assert len(amgr.scoped_engines) == 1
            return paths
        finally:
            await small.dispose()

    assert asyncio.run(scenario()) == [["/alru-a"], ["/alru-b"], ["/alru-a"]]


def test_a_bad_scoped_engines_setting_is_one_line(engine: sa.Engine, chain_builder: ChainBuilder) -> None:
    chain_builder.copy_main_chain()
    text = chain_builder.ini.read_text().replace("[alembic]\n", "[alembic]\nworkspace_scoped_engines = none\n", 1)
    chain_builder.ini.write_text(text)
    with pytest.raises(ConfigurationError, match=r"workspace_scoped_engines = 'none' in .*at least 1"):
        WorkspaceManager(engine, chain_builder.ini)
    with pytest.raises(ConfigurationError, match="at least 1"):
        WorkspaceManager(engine, ALEMBIC_INI, scoped_engines=0)
