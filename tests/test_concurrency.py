"""Concurrent ensure (issue #2, section 6): threads, processes and asyncio.gather, of the same project
(exactly one schema and one registry row) and of different projects (all succeed, and really run at the
same time: no database-wide or process-wide serialisation); the registry bootstrap raced on a new database."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from support.chains import ALEMBIC_INI, ChainBuilder
from support.concurrency import GATE, Gate, ensure_in_processes
from support.db import bootstrap_state, schema_version

from workspace_tool import ProjectWorkspaceManager, WorkspaceManager
from workspace_tool.urls import async_url


def head() -> str:
    from workspace_tool.chain import Chain

    return Chain.load(ALEMBIC_INI).head


def project_rows(engine: sa.Engine) -> list[tuple[str, str, str]]:
    with engine.connect() as conn:
        return [
            (r[0], r[1], r[2])
            for r in conn.execute(
                sa.text("SELECT project_id, schema_name, revision FROM project_registry.workspace_config ORDER BY 1")
            )
        ]


def project_schemas(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'project\\_%' ORDER BY 1")
            ).scalars()
        )


# ------------------------------------------------------------------------------ threads
def run_threads(n: int, fn: Callable[[int], str]) -> list[str]:
    barrier = threading.Barrier(n)

    def call(i: int) -> str:
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(call, range(n)))


@pytest.mark.parametrize("shared", [True, False], ids=["one-manager", "manager-per-thread"])
def test_same_project_from_eight_threads(engine: sa.Engine, shared: bool) -> None:
    managers = (
        [WorkspaceManager(engine, ALEMBIC_INI)] * 8
        if shared
        else [WorkspaceManager(engine, ALEMBIC_INI) for _ in range(8)]
    )
    results = run_threads(8, lambda i: managers[i].ensure("contended"))
    assert results == ["project_contended"] * 8
    assert project_schemas(engine) == ["project_contended", "project_registry"]
    assert project_rows(engine) == [("contended", "project_contended", head())]
    assert schema_version(engine, "project_contended") == head()


def test_different_projects_from_eight_threads(manager: WorkspaceManager) -> None:
    results = run_threads(8, lambda i: manager.ensure(f"thread-{i}"))
    assert results == [f"project_thread_{i}" for i in range(8)]
    assert [r[0] for r in project_rows(manager.engine)] == [f"thread-{i}" for i in range(8)]
    for i in range(8):
        assert schema_version(manager.engine, f"project_thread_{i}") == head()


# ------------------------------------------------------- overlap: nothing serialises them
@pytest.fixture
def gated_chain(chain_builder: ChainBuilder) -> Path:
    """A chain whose only revision waits on a shared advisory lock the test can hold."""
    chain_builder.add(
        "g1",
        f"""
        op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))
        op.execute("SELECT pg_advisory_xact_lock_shared({GATE})")
        """,
    )
    return chain_builder.ini


def test_different_projects_in_threads_really_overlap(engine: sa.Engine, gated_chain: Path) -> None:
    mgr = WorkspaceManager(engine, gated_chain)
    mgr.bootstrap()
    gate = Gate(engine)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(mgr.ensure, f"overlap-{i}") for i in range(4)]
        blocked = gate.wait_for(4)
        gate.open()
        results = [f.result() for f in futures]
    assert blocked == 4  # all four were inside their migration at the same time
    assert results == [f"project_overlap_{i}" for i in range(4)]


# ---------------------------------------------------------------------------- processes
@pytest.mark.slow
def test_processes_same_and_distinct_projects(engine: sa.Engine, url_string: str) -> None:
    same = ensure_in_processes(url_string, ["multi"] * 4)
    assert same == [("multi", "project_multi", None)] * 4
    distinct = ensure_in_processes(url_string, [f"proc-{i}" for i in range(4)])
    assert distinct == [(f"proc-{i}", f"project_proc_{i}", None) for i in range(4)]
    assert project_rows(engine) == sorted(
        [("multi", "project_multi", head())] + [(f"proc-{i}", f"project_proc_{i}", head()) for i in range(4)]
    )
    assert project_schemas(engine) == sorted(
        ["project_multi", "project_registry"] + [f"project_proc_{i}" for i in range(4)]
    )


@pytest.mark.slow
def test_registry_bootstrap_raced_by_processes_on_a_new_database(new_database: URL) -> None:
    url = new_database.render_as_string(hide_password=False)
    results = ensure_in_processes(url, ["boot-a", "boot-b", "boot-c", "boot-d"])
    assert [r[2] for r in results] == [None] * 4  # no unique violation, no error at all
    extensions, versions, projects = bootstrap_state(new_database)
    assert extensions == 1
    assert len(versions) == 1
    assert projects == ["boot-a", "boot-b", "boot-c", "boot-d"]


def test_registry_bootstrap_raced_by_threads_on_a_new_database(new_database: URL) -> None:
    engine = sa.create_engine(new_database, pool_size=8)
    try:
        results = run_threads(8, lambda i: WorkspaceManager(engine, ALEMBIC_INI).ensure(f"tboot-{i % 3}"))
        assert sorted(set(results)) == ["project_tboot_0", "project_tboot_1", "project_tboot_2"]
    finally:
        engine.dispose()
    extensions, versions, projects = bootstrap_state(new_database)
    assert (extensions, len(versions), projects) == (1, 1, ["tboot-0", "tboot-1", "tboot-2"])


# ------------------------------------------------------------------------ asyncio.gather
@pytest.mark.parametrize("pool", ["null", "queue"])
def test_gather_distinct_and_same_projects(engine: sa.Engine, database_url: URL, pool: str) -> None:
    async def main() -> tuple[list[str], list[str]]:
        kwargs: dict[str, Any] = {"poolclass": sa.pool.NullPool} if pool == "null" else {"pool_size": 4}
        aengine = create_async_engine(async_url(database_url), **kwargs)
        try:
            amgr = ProjectWorkspaceManager(aengine, ALEMBIC_INI)
            distinct = await asyncio.gather(*(amgr.ensure_workspace_exists(f"async-{i}") for i in range(6)))
            amgr.invalidate()
            same = await asyncio.gather(*(amgr.ensure_workspace_exists("async-same") for _ in range(6)))
            return list(distinct), list(same)
        finally:
            await aengine.dispose()

    distinct, same = asyncio.run(main())
    assert distinct == [f"project_async_{i}" for i in range(6)]
    assert same == ["project_async_same"] * 6
    assert project_rows(engine) == sorted(
        [(f"async-{i}", f"project_async_{i}", head()) for i in range(6)]
        + [("async-same", "project_async_same", head())]
    )
    assert project_schemas(engine) == sorted(
        [f"project_async_{i}" for i in range(6)] + ["project_async_same", "project_registry"]
    )


def test_gather_of_distinct_projects_really_overlaps(engine: sa.Engine, database_url: URL, gated_chain: Path) -> None:
    async def main() -> tuple[int, list[str]]:
        aengine = create_async_engine(async_url(database_url), poolclass=sa.pool.NullPool)
        try:
            amgr = ProjectWorkspaceManager(aengine, gated_chain)
            await amgr.bootstrap()
            gate = Gate(engine)

            async def release() -> int:
                blocked = await asyncio.to_thread(gate.wait_for, 4)
                gate.open()
                return blocked

            *schemas, blocked = await asyncio.gather(
                *(amgr.ensure_workspace_exists(f"aover-{i}") for i in range(4)), release()
            )
            return int(str(blocked)), [str(s) for s in schemas]
        finally:
            await aengine.dispose()

    blocked, schemas = asyncio.run(main())
    assert blocked == 4
    assert schemas == [f"project_aover_{i}" for i in range(4)]
