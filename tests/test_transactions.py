"""The library owns its transactions (issue 9, item 1): an engine or a connection in AUTOCOMMIT (or at
REPEATABLE READ) changes nothing about where migrations land, what a failure leaves, or who waits for
whom. Each test has a same-named table in ``public`` or a second party racing for the same schema."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from support.chains import ALEMBIC_INI, ChainBuilder
from support.cli import ALEMBIC
from support.concurrency import GATE, Gate
from support.data import make_public_twins, public_state
from support.db import bootstrap_state, columns, schema_tables, schema_version

from workspace_tool import ConfigurationError, MigrationFailed, ProjectWorkspaceManager, WorkspaceManager, fleet
from workspace_tool.chain import Chain
from workspace_tool.flavor import Flavor
from workspace_tool.schema.migrate import EnsureResult, run_plan
from workspace_tool.schema.operation import Action
from workspace_tool.urls import async_url

# How a caller's engine can say "no transactions" (or "not the transactions you expect").
ENGINES: dict[str, Callable[[URL], sa.Engine]] = {
    "autocommit-engine": lambda url: sa.create_engine(url, isolation_level="AUTOCOMMIT"),
    "autocommit-view": lambda url: sa.create_engine(url).execution_options(isolation_level="AUTOCOMMIT"),
}
RACING_ENGINES: dict[str, Callable[[URL], sa.Engine]] = {
    **ENGINES,
    "repeatable-read-engine": lambda url: sa.create_engine(url, isolation_level="REPEATABLE READ"),
}

REPOSITORIES = 'op.create_table("repositories", sa.Column("id", sa.Integer, primary_key=True))'
ADD_NOTE = 'op.add_column("repositories", sa.Column("note", sa.Text))'  # ALTER: ignores the translate map
ONLINE = "workspace_online = True\n"
GATED = f'op.execute("SELECT pg_advisory_xact_lock_shared({GATE})")'


@pytest.fixture(params=list(ENGINES))
def autocommit_engine(request: pytest.FixtureRequest, engine: sa.Engine, database_url: URL) -> Iterator[sa.Engine]:
    made: sa.Engine = ENGINES[request.param](database_url)
    yield made
    made.dispose()


@pytest.fixture
def twins(engine: sa.Engine) -> Callable[[], dict[str, Any]]:
    """public.repositories and public.code_files with rows; returns a function reading their state."""
    make_public_twins(engine)
    return lambda: public_state(engine)


@pytest.fixture
def note_chain(chain_builder: ChainBuilder) -> Path:
    """r1 creates repositories (compiled); r2 adds a column to it online, where only the search_path
    keeps the ALTER in the project's schema."""
    chain_builder.add("r1", REPOSITORIES, 'op.drop_table("repositories")')
    chain_builder.add("r2", ADD_NOTE, 'op.drop_column("repositories", "note")', extra=ONLINE)
    return chain_builder.ini


def schemas_like(engine: sa.Engine, pattern: str) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(sa.text("SELECT nspname FROM pg_namespace WHERE nspname LIKE :p ORDER BY 1"), {"p": pattern})
            .scalars()
            .all()
        )


def lock_waiters(engine: sa.Engine) -> int:
    """Backends of this database waiting for a lock (advisory, row, transaction id...)."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        )


def wait_until(condition: Callable[[], bool], limit: float = 30.0) -> bool:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def registry_rows(engine: sa.Engine) -> list[tuple[str, str | None, str]]:
    with engine.connect() as conn:
        return [
            (r[0], r[1], r[2])
            for r in conn.execute(
                sa.text("SELECT project_id, revision, status FROM project_registry.workspace_config ORDER BY 1")
            )
        ]


# ------------------------------------------------------------------------------ sync manager
def test_an_online_alter_on_an_autocommit_engine_lands_in_the_project_not_public(
    autocommit_engine: sa.Engine, engine: sa.Engine, note_chain: Path, twins: Callable[[], dict[str, Any]]
) -> None:
    before = twins()
    mgr = WorkspaceManager(autocommit_engine, note_chain)
    result = mgr.ensure_detailed("twin")
    assert (result.action, result.path) == ("created", "mixed")
    assert columns(engine, "project_twin", "repositories") == ["id", "note"]
    assert twins() == before  # public.repositories has no "note", and its rows are as they were
    mgr.close()


def test_a_failing_revision_on_an_autocommit_engine_leaves_no_schema(
    autocommit_engine: sa.Engine, engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    chain_builder.add("r1", REPOSITORIES)
    chain_builder.add(
        "r2", 'op.create_table("second", sa.Column("id", sa.Integer, primary_key=True))\nraise RuntimeError("boom")'
    )
    mgr = WorkspaceManager(autocommit_engine, chain_builder.ini)
    with pytest.raises(MigrationFailed, match="boom"):
        mgr.ensure("half")
    assert schemas_like(engine, "project\\_half") == []
    assert registry_rows(engine) == []
    mgr.close()


def race(
    engine: sa.Engine, first: Callable[[], EnsureResult], second: Callable[[], EnsureResult]
) -> tuple[bool, list[Future[EnsureResult]]]:
    """``first`` migrates a schema whose revision waits on the gate; once it waits, ``second`` works on
    the same schema. True if both ended up waiting at once (second on first's schema lock)."""
    gate = Gate(engine)
    with ThreadPoolExecutor(2) as pool:
        one = pool.submit(first)
        inside = gate.wait_for(1, limit=30)
        two = pool.submit(second)
        both_waiting = wait_until(lambda: lock_waiters(engine) >= 2, limit=10)
        gate.open()
        for future in (one, two):
            future.exception(timeout=60)
    return inside == 1 and both_waiting, [one, two]


@pytest.mark.parametrize("kind", list(RACING_ENGINES))
def test_the_schema_lock_serialises_ensure_whatever_the_engines_isolation(
    kind: str, engine: sa.Engine, database_url: URL, chain_builder: ChainBuilder
) -> None:
    chain_builder.add("g1", f"{REPOSITORIES}\n{GATED}")
    racing = RACING_ENGINES[kind](database_url)
    first, second = WorkspaceManager(racing, chain_builder.ini), WorkspaceManager(racing, chain_builder.ini)
    first.bootstrap()
    try:
        waited, futures = race(
            engine, lambda: first.ensure_detailed("same"), lambda: second.ensure_detailed("same", verify=True)
        )
        one, two = (f.result() for f in futures)  # neither failed (no duplicate schema)
        assert (one.action, two.action) == ("created", "current")
        assert waited
        assert registry_rows(engine) == [("same", "g1", "ready")]
    finally:
        first.close()
        second.close()
        racing.dispose()


def test_drop_status_and_bootstrap_on_an_autocommit_engine(autocommit_engine: sa.Engine, engine: sa.Engine) -> None:
    mgr = WorkspaceManager(autocommit_engine, ALEMBIC_INI)
    mgr.bootstrap(force=True)
    mgr.ensure("plain")
    assert [(s.project_id, s.state) for s in mgr.status()] == [("plain", "at-head")]
    assert mgr.drop("plain") is True
    assert schemas_like(engine, "project\\_plain") == [] and registry_rows(engine) == []
    mgr.close()


def test_a_connection_handed_in_autocommit_is_refused(engine: sa.Engine) -> None:
    from workspace_tool.schema.migrate import Migration, Sending, migrate

    mgr = WorkspaceManager(engine, ALEMBIC_INI)
    extension_schema = mgr.bootstrap()
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        with pytest.raises(ConfigurationError, match="autocommit"):
            migrate(conn, Sending(mgr.chain, Flavor(extension_schema)), Migration("handed", "project_handed", mgr.head))
    assert schemas_like(engine, "project\\_handed") == []


# ----------------------------------------------------------------------------- async manager
def async_engine(database_url: URL, **kwargs: Any) -> AsyncEngine:
    return create_async_engine(async_url(database_url), **kwargs)


def test_async_online_alter_on_an_autocommit_engine_lands_in_the_project_not_public(
    engine: sa.Engine, database_url: URL, note_chain: Path, twins: Callable[[], dict[str, Any]]
) -> None:
    before = twins()

    async def main() -> EnsureResult:
        aengine = async_engine(database_url, isolation_level="AUTOCOMMIT")
        try:
            return await ProjectWorkspaceManager(aengine, note_chain).ensure_detailed("atwin")
        finally:
            await aengine.dispose()

    assert asyncio.run(main()).action == "created"
    assert columns(engine, "project_atwin", "repositories") == ["id", "note"]
    assert twins() == before


def test_async_schema_lock_serialises_ensure_on_an_autocommit_engine(
    engine: sa.Engine, database_url: URL, chain_builder: ChainBuilder
) -> None:
    chain_builder.add("g1", f"{REPOSITORIES}\n{GATED}")

    async def main() -> tuple[bool, list[EnsureResult | BaseException]]:
        aengine = async_engine(database_url, isolation_level="AUTOCOMMIT", pool_size=4)
        try:
            amgr = ProjectWorkspaceManager(aengine, chain_builder.ini)
            await amgr.bootstrap()
            gate = Gate(engine)
            first = asyncio.ensure_future(amgr.ensure_detailed("asame"))
            await asyncio.to_thread(gate.wait_for, 1)
            second = asyncio.ensure_future(amgr.ensure_detailed("asame", verify=True))
            waited = await asyncio.to_thread(wait_until, lambda: lock_waiters(engine) >= 2, 10)
            gate.open()
            results = await asyncio.gather(first, second, return_exceptions=True)
            return waited, list(results)
        finally:
            await aengine.dispose()

    waited, results = asyncio.run(main())
    assert [r.action if isinstance(r, EnsureResult) else repr(r) for r in results] == ["created", "current"]
    assert waited
    assert registry_rows(engine) == [("asame", "g1", "ready")]


# ---------------------------------------------------------------------------------- sessions
def test_sessions_on_an_autocommit_engine_read_and_write_the_projects_tables(
    autocommit_engine: sa.Engine, engine: sa.Engine, twins: Callable[[], dict[str, Any]]
) -> None:
    before = twins()
    mgr = WorkspaceManager(autocommit_engine, ALEMBIC_INI)
    count = sa.text("SELECT count(*) FROM repositories")
    with mgr.session("scoped") as s:
        assert s.execute(count).scalar() == 0  # the project's table, not public's two rows
        s.execute(sa.text("INSERT INTO repositories (path, name) VALUES ('/p', 'p')"))
        s.commit()
    with mgr.connect("scoped") as conn:
        assert conn.execute(count).scalar() == 1
        conn.execute(sa.text("DELETE FROM repositories"))  # not committed: rolled back at the end
    with mgr.connect("scoped") as conn:
        assert conn.execute(count).scalar() == 1
    assert twins() == before
    with autocommit_engine.connect() as conn:  # the application's own connections are still autocommit
        assert conn.connection.dbapi_connection.autocommit  # type: ignore[union-attr]
    mgr.close()


def test_a_scoped_connection_switched_to_autocommit_is_refused(manager: WorkspaceManager) -> None:
    with manager.connect("switch") as conn:
        with pytest.raises(ConfigurationError, match="AUTOCOMMIT"):
            conn.execution_options(isolation_level="AUTOCOMMIT")
        assert conn.execute(sa.text("SELECT count(*) FROM repositories")).scalar() == 0  # still usable
    with manager.session("switch") as s, pytest.raises(ConfigurationError, match="AUTOCOMMIT"):
        s.connection(execution_options={"isolation_level": "autocommit"})


def test_async_sessions_on_an_autocommit_engine_read_the_projects_tables(
    engine: sa.Engine, database_url: URL, twins: Callable[[], dict[str, Any]]
) -> None:
    count = sa.text("SELECT count(*) FROM repositories")

    async def main() -> tuple[int, int, str]:
        aengine = async_engine(database_url, isolation_level="AUTOCOMMIT")
        try:
            amgr = ProjectWorkspaceManager(aengine, ALEMBIC_INI)
            async with amgr.session("ascoped") as s:
                in_session = (await s.execute(count)).scalar_one()
            async with amgr.connect("ascoped") as conn:
                in_connection = (await conn.execute(count)).scalar_one()
            async with amgr.connect("ascoped") as conn:
                try:
                    await conn.execution_options(isolation_level="AUTOCOMMIT")
                except ConfigurationError as exc:
                    refused = str(exc)
                else:
                    refused = "not refused"
            return int(in_session), int(in_connection), refused
        finally:
            await aengine.dispose()

    in_session, in_connection, refused = asyncio.run(main())
    assert (in_session, in_connection) == (0, 0)  # public.repositories has two rows
    assert "AUTOCOMMIT" in refused


# ------------------------------------------------------------------------------------- fleet
def test_fleet_upgrade_on_an_autocommit_engine_alters_the_projects_not_public(
    autocommit_engine: sa.Engine, engine: sa.Engine, note_chain: Path, twins: Callable[[], dict[str, Any]]
) -> None:
    chain = Chain.load(note_chain)
    ids = [f"f{i}" for i in range(6)]
    assert fleet.provision(engine, chain, ids, target="r1", jobs=3).ok
    before = twins()

    report = fleet.upgrade(autocommit_engine, chain, jobs=3)

    assert [(r.project_id, r.status, r.path) for r in report.results] == [(p, "ok", "online") for p in ids]
    assert all(columns(engine, f"project_{p}", "repositories") == ["id", "note"] for p in ids)
    assert twins() == before


def test_the_fleets_schema_lock_holds_on_an_autocommit_engine(
    autocommit_engine: sa.Engine, engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    """The careful path (an online revision): a concurrent ensure waits for the fleet's schema lock."""
    chain_builder.add("g1", f"{REPOSITORIES}\n{GATED}", extra=ONLINE)
    chain = Chain.load(chain_builder.ini)
    mgr = WorkspaceManager(engine, chain_builder.ini)
    mgr.bootstrap()

    def provision() -> EnsureResult:
        (result,) = fleet.provision(autocommit_engine, chain, ["fsame"], jobs=1).results
        assert result.status == "ok", result.error
        return EnsureResult("fsame", result.schema, Action.CREATED, None, "g1", result.ms, result.path)

    waited, futures = race(engine, provision, lambda: mgr.ensure_detailed("fsame", verify=True))
    one, two = (f.result() for f in futures)
    assert (one.action, two.action) == ("created", "current")
    assert waited
    assert registry_rows(engine) == [("fsame", "g1", "ready")]
    mgr.close()


# ----------------------------------------------------------- drift, verify-fast-path, authoring
def test_check_and_verify_on_an_autocommit_engine_leave_no_scratch_schema(
    autocommit_engine: sa.Engine, engine: sa.Engine, twins: Callable[[], dict[str, Any]]
) -> None:
    from workspace_tool import drift
    from workspace_tool.verification import verify_fast_path

    before = twins()
    chain = Chain.load(ALEMBIC_INI)
    WorkspaceManager(engine, ALEMBIC_INI).ensure("checked")

    report = drift.check(autocommit_engine, chain)
    verified = verify_fast_path(autocommit_engine, chain, cases=[(None, chain.head, True)])

    assert report.ok, report.as_dict()
    assert verified.identical
    assert schemas_like(engine, "workspace\\_%") == ["workspace_extensions"]
    assert twins() == before


def test_autogenerate_on_an_autocommit_engine_compares_with_the_scratch_schema_not_public(
    autocommit_engine: sa.Engine, engine: sa.Engine, chain_builder: ChainBuilder, twins: Callable[[], dict[str, Any]]
) -> None:
    from workspace_tool.authoring import create_revision

    chain_builder.copy_main_chain()
    before = twins()
    result = create_revision(
        "nothing", config=chain_builder.ini, autogenerate=True, engine=autocommit_engine, allow_empty=True
    )
    assert result.operations == 0  # the models match the head; public's twins were not compared
    assert schemas_like(engine, "project\\_autogen\\_%") == []
    assert twins() == before


# ---------------------------------------------------------------- plain alembic (migrations/env.py)
def test_plain_alembic_reads_the_state_after_the_lock_under_repeatable_read_defaults(
    engine: sa.Engine, database_url: URL
) -> None:
    """A server or role whose default isolation is REPEATABLE READ: plain ``alembic upgrade`` waiting for
    the schema's lock must see what the lock holder committed (here: the whole chain) and do nothing."""
    mgr = WorkspaceManager(engine, ALEMBIC_INI)
    extension_schema = mgr.bootstrap()
    holder = engine.connect()
    holder.begin()
    holder.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended('workspace_tool:project_plainrr', 0))"))
    env = {
        **os.environ,
        "WORKSPACE_TOOL_DATABASE_URL": database_url.render_as_string(hide_password=False),
        "PGOPTIONS": "-c default_transaction_isolation=repeatable\\ read",
    }
    proc = subprocess.Popen(
        [ALEMBIC, "-c", str(ALEMBIC_INI), "-x", "schema=project_plainrr", "upgrade", "head"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_until(lambda: lock_waiters(engine) >= 1, limit=60)
        run_plan(
            holder,
            mgr.chain,
            "project_plainrr",
            Flavor(extension_schema),
            mgr.chain.plan(None, mgr.head),
            create_schema=True,
        )
        holder.commit()
    finally:
        holder.close()
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert schema_version(engine, "project_plainrr") == mgr.head
    assert "repositories" in schema_tables(engine, "project_plainrr")
    mgr.close()


def test_registry_bootstrap_on_an_autocommit_engine_raced_by_threads(database_url: URL) -> None:

    threads = 6
    barrier = threading.Barrier(threads)
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    name = f"wst_txboot_{os.getpid()}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = database_url.set(database=name)
    racing = sa.create_engine(url, isolation_level="AUTOCOMMIT", pool_size=threads)
    try:

        def boot(i: int) -> str:
            barrier.wait()
            return WorkspaceManager(racing, ALEMBIC_INI).bootstrap()

        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(boot, range(threads)))
        assert results == ["workspace_extensions"] * threads
        extensions, versions, _ = bootstrap_state(url)
        assert (extensions, len(versions)) == (1, 1)
    finally:
        racing.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
