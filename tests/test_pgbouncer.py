"""Behind PgBouncer in transaction mode (issue 19): a real PgBouncer 1.18 (tests/pgbouncer.py) with two server
connections in front of the test server.

Through the pooler alone: concurrent ensures, per-project reads through ``mgr.connect()`` that never cross
tenants, fleet upgrades of transactional revisions, the async manager on asyncpg set up for PgBouncer, the
warm pool's fill and claims, and the tenant lifecycle (export, import, clone, move, drop, quarantine,
restore, purge, purge of the expired, stamp, exec, bulk ensure). A revision that runs outside a transaction
needs a session: it goes over the direct URL, and without one it is refused in one line before anything
changes. After each test, every server connection of the pooler is checked for state a session left behind
for the next client: the search_path, the lock_timeout, advisory locks (``pgbouncer.assert_no_leak``)."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pgbouncer
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from support.chains import ALEMBIC_INI, HEAD, ITEMS, MAIN_REVISIONS, ChainBuilder
from support.cli import assert_one_line_error, run_alembic, run_cli
from support.data import add_chunks, data_rows
from support.db import StatementCounter, assert_consistent, database_state, registry_row, schema_version
from wire import WireRecorder

from workspace_tool import AsyncWorkspaceManager, WorkspaceManager, fleet, spares
from workspace_tool.chain import Chain
from workspace_tool.chain.plan import Path as PlanPath
from workspace_tool.errors import SessionRequired
from workspace_tool.flavor import pooler
from workspace_tool.lifecycle.drop import purge_expired, quarantined
from workspace_tool.lifecycle.exec import exec_operation
from workspace_tool.sql import POOL_LOCK_KEY
from workspace_tool.urls import async_url

pytestmark = pytest.mark.pgbouncer

REFUSAL = (
    "runs outside a transaction and needs a session: set --direct-url / WORKSPACE_TOOL_DIRECT_URL to a URL "
    "that bypasses the pooler"
)
CONCURRENT = """
with op.get_context().autocommit_block():
    op.create_index("ix_items_name", "items", ["name"], postgresql_concurrently=True)
"""
DROP_CONCURRENT = """
with op.get_context().autocommit_block():
    op.drop_index("ix_items_name", table_name="items", postgresql_concurrently=True)
"""
NOTE = ('op.add_column("items", sa.Column("note", sa.Text))', 'op.drop_column("items", "note")')


@pytest.fixture
def pooled(engine: sa.Engine, pooled_url: URL) -> Iterator[sa.Engine]:
    """An engine through PgBouncer on the test database (reset, as ``engine`` is)."""
    pooled_engine = sa.create_engine(pooled_url, pool_size=8, max_overflow=24)
    yield pooled_engine
    pooled_engine.dispose()


def url_text(url: URL) -> str:
    return url.render_as_string(hide_password=False)


def outside_chain(builder: ChainBuilder) -> Chain:
    """r1 items, r2 an index built CONCURRENTLY (outside any transaction), r3 a column."""
    builder.add("r1", ITEMS, 'op.drop_table("items")')
    builder.add("r2", CONCURRENT, DROP_CONCURRENT)
    builder.add("r3", *NOTE)
    return Chain.load(builder.ini)


def at_r1(pooled: sa.Engine, chain: Chain, count: int) -> list[str]:
    """``count`` projects provisioned at r1 through the pooler; their ids."""
    ids = [f"pb-{i}" for i in range(count)]
    report = fleet.provision(pooled, chain, ids, target="r1", jobs=4)
    assert report.failed == []
    return ids


def index_valid(engine: sa.Engine, schema: str) -> bool | None:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :s AND c.relname = 'ix_items_name'"
            ),
            {"s": schema},
        ).scalar()


# ------------------------------------------------------------------------------------ detection
def test_a_transaction_pooler_is_detected_once_per_engine_and_a_direct_server_is_not(
    pooled: sa.Engine, engine: sa.Engine, pooled_url: URL
) -> None:
    fresh = sa.create_engine(pooled_url, poolclass=sa.pool.NullPool)
    try:
        with StatementCounter(fresh) as counter:
            assert pooler.detect(fresh) is True
            assert pooler.detect(fresh) is True  # cached for the engine: no second round trip
        assert [s for s in counter.statements if "pg_backend_pid" in s] == ["SELECT pg_backend_pid()"]
    finally:
        fresh.dispose()
    assert pooler.detect(engine) is False
    with pooled.connect() as conn, conn.begin():
        assert pooler.behind_pooler(conn) is True
    pgbouncer.assert_no_leak(pooled.url, engine)


def test_threads_asking_at_once_probe_for_the_pooler_once(pooled_url: URL) -> None:
    """A fleet run's workers each ask before their first project (exec): one probe for all of them."""
    threads = 6
    fresh = sa.create_engine(pooled_url, pool_size=threads)
    barrier = threading.Barrier(threads)
    answers: list[bool] = []

    def ask() -> None:
        with fresh.connect() as conn:
            barrier.wait()
            answers.append(pooler.behind_pooler(conn))

    try:
        with StatementCounter(fresh) as counter:
            workers = [threading.Thread(target=ask) for _ in range(threads)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
        assert answers == [True] * threads
        assert [s for s in counter.statements if "pg_backend_pid" in s] == ["SELECT pg_backend_pid()"]
    finally:
        fresh.dispose()


def test_the_ensure_path_never_probes_for_a_pooler(pooled: sa.Engine, engine: sa.Engine) -> None:
    mgr = WorkspaceManager(pooled, ALEMBIC_INI)
    try:
        with StatementCounter(pooled) as counter:
            assert mgr.ensure_detailed("pb-new").path == PlanPath.FAST
            mgr.ensure("pb-new")
            mgr.ensure_detailed("pb-new", verify=True)
        assert not [s for s in counter.statements if "pg_backend_pid" in s]
        assert schema_version(engine, "project_pb_new") == HEAD
    finally:
        mgr.close()
    pgbouncer.assert_no_leak(pooled.url, engine)


# ------------------------------------------------------------------------ through the pooler alone
def test_concurrent_ensures_through_the_pooler(pooled: sa.Engine, engine: sa.Engine) -> None:
    mgr = WorkspaceManager(pooled, ALEMBIC_INI)
    ids = [f"pb-{i}" for i in range(24)]
    errors: list[BaseException] = []

    def ensure(project_id: str) -> None:
        try:
            mgr.ensure(project_id)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=ensure, args=(p,)) for p in ids]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        mgr.close()
    assert errors == []
    assert assert_consistent(engine) == {f"project_pb_{i}": HEAD for i in range(24)}
    pgbouncer.assert_no_leak(pooled.url, engine)


def test_reads_through_connect_see_only_their_own_project(pooled: sa.Engine, engine: sa.Engine) -> None:
    mgr = WorkspaceManager(pooled, ALEMBIC_INI)
    ids = [f"pb-{i}" for i in range(6)]
    for project_id in ids:
        with mgr.connect(project_id) as conn:
            conn.execute(sa.text("INSERT INTO repositories (path, name) VALUES (:p, :p)"), {"p": project_id})
            conn.commit()
    seen: list[tuple[str, list[str]]] = []
    errors: list[BaseException] = []

    def read(seed: int) -> None:
        chooser = random.Random(seed)
        try:
            for _ in range(60):
                project_id = chooser.choice(ids)
                with mgr.connect(project_id) as conn:
                    seen.append((project_id, list(conn.execute(sa.text("SELECT name FROM repositories")).scalars())))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(n,)) for n in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        mgr.close()
    assert errors == []
    assert len(seen) == 480
    assert all(names == [project_id] for project_id, names in seen)
    pgbouncer.assert_no_leak(pooled.url, engine)


def test_upgrade_all_of_a_transactional_revision_through_the_pooler(
    pooled: sa.Engine, engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    chain_builder.add("r1", ITEMS, 'op.drop_table("items")').add("r2", *NOTE)
    chain = Chain.load(chain_builder.ini)
    ids = at_r1(pooled, chain, 12)
    pooled_text, ini = url_text(pooled.url), str(chain.config_path)
    result = run_cli("--database-url", pooled_text, "-c", ini, "upgrade", "--all", "-j", "4")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert assert_consistent(engine) == {f"project_{p.replace('-', '_')}": "r2" for p in ids}
    pgbouncer.assert_no_leak(pooled.url, engine)
    down = run_cli("--database-url", pooled_text, "-c", ini, "downgrade", "pb-0", "--to", "r1", "--yes")
    assert down.exit_code == 0, (down.stdout, down.stderr)
    assert schema_version(engine, "project_pb_0") == "r1"
    pgbouncer.assert_no_leak(pooled.url, engine)


def test_init_status_and_check_through_the_pooler(pooled: sa.Engine, engine: sa.Engine) -> None:
    pooled_text, ini = url_text(pooled.url), str(ALEMBIC_INI)
    assert run_cli("--database-url", pooled_text, "-c", ini, "init").exit_code == 0
    assert run_cli("--database-url", pooled_text, "-c", ini, "ensure", "pb-0", "pb-1").exit_code == 0
    status = run_cli("--database-url", pooled_text, "-c", ini, "status", "--json")
    assert status.exit_code == 0 and '"at-head": 2' in status.stdout, status.stdout
    check = run_cli("--database-url", pooled_text, "-c", ini, "check")
    assert check.exit_code == 0, (check.stdout, check.stderr)
    pgbouncer.assert_no_leak(pooled.url, engine)


def test_the_fleets_lock_timeout_holds_for_each_transaction_only(
    pooled: sa.Engine, engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    """The fleet bounds its lock waits with SET LOCAL: a schema locked by someone else times out (and is
    marked failed, in a transaction bounded the same way), and another client of the pooler, served while
    the run goes on, never gets the run's lock_timeout in its session."""
    chain_builder.add("r1", ITEMS, 'op.drop_table("items")').add("r2", *NOTE)
    chain = Chain.load(chain_builder.ini)
    at_r1(pooled, chain, 3)
    other = sa.create_engine(pooled.url, poolclass=sa.pool.NullPool)
    seen: list[str] = []

    def meanwhile(progress: fleet.Progress) -> None:  # in the calling thread, as each schema finishes
        with other.connect() as conn:
            seen.append(conn.execute(sa.text("SHOW lock_timeout")).scalar_one())

    try:
        with engine.connect() as holder, holder.begin():
            holder.execute(sa.text("LOCK TABLE project_pb_1.items IN ACCESS EXCLUSIVE MODE"))
            report = fleet.upgrade(pooled, chain, jobs=2, lock_timeout_ms=100, retries=0, progress=meanwhile)
    finally:
        other.dispose()
    assert len(seen) == 4 and set(seen) == {"0"}
    assert [r.schema for r in report.failed] == ["project_pb_1"]
    assert "lock timeout (100 ms" in str(report.failed[0].error)
    assert schema_version(engine, "project_pb_1") == "r1" and schema_version(engine, "project_pb_2") == "r2"
    pgbouncer.assert_no_leak(pooled.url, engine)


# ------------------------------------------------------------------------- what needs a session
def test_a_revision_outside_a_transaction_goes_over_the_direct_url(
    pooled: sa.Engine, engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    chain = outside_chain(chain_builder)
    ids = at_r1(pooled, chain, 12)
    result = run_cli(
        "--database-url", url_text(pooled.url), "--direct-url", url_text(engine.url),
        "-c", str(chain.config_path), "upgrade", "--all", "-j", "4",
    )  # fmt: skip
    assert result.exit_code == 0, (result.stdout, result.stderr)
    schemas = [f"project_{p.replace('-', '_')}" for p in ids]
    assert assert_consistent(engine) == dict.fromkeys(schemas, "r3")
    assert all(index_valid(engine, s) for s in schemas)
    pgbouncer.assert_no_leak(pooled.url, engine)


def test_check_builds_its_reference_over_the_direct_url(
    pooled: sa.Engine, engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    """With no stored reference, `check` builds one in a scratch schema, in parts for such a chain."""
    chain = outside_chain(chain_builder)
    pooled_text, direct_text, ini = url_text(pooled.url), url_text(engine.url), str(chain.config_path)
    provided = run_cli("--database-url", pooled_text, "--direct-url", direct_text, "-c", ini, "ensure", "pb-0")
    assert provided.exit_code == 0, (provided.stdout, provided.stderr)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM project_registry.reference_catalog"))
    assert_one_line_error(run_cli("--database-url", pooled_text, "-c", ini, "check"), REFUSAL, "revision r2")
    checked = run_cli("--database-url", pooled_text, "--direct-url", direct_text, "-c", ini, "check")
    assert checked.exit_code == 0, (checked.stdout, checked.stderr)
    with engine.connect() as conn:
        assert (
            conn.execute(sa.text("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'workspace_drift%'")).scalar()
            == 0
        )
    pgbouncer.assert_no_leak(pooled.url, engine)


def test_without_a_direct_url_it_is_refused_in_one_line_before_anything_changes(
    pooled: sa.Engine, engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    chain = outside_chain(chain_builder)
    at_r1(pooled, chain, 6)
    before = database_state(engine)
    result = run_cli("--database-url", url_text(pooled.url), "-c", str(chain.config_path), "upgrade", "--all")
    line = assert_one_line_error(result, REFUSAL, "revision r2")
    assert "6 schemas" in line
    assert database_state(engine) == before
    assert {schema_version(engine, f"project_pb_{i}") for i in range(6)} == {"r1"}
    pgbouncer.assert_no_leak(pooled.url, engine)


def test_the_manager_sends_what_needs_a_session_over_its_direct_engine(
    pooled: sa.Engine, engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    chain = outside_chain(chain_builder)
    at_r1(pooled, chain, 2)
    alone = WorkspaceManager(pooled, chain.config_path)
    with pytest.raises(SessionRequired) as refused:
        alone.ensure("pb-0")
    assert REFUSAL in str(refused.value) and "\n" not in str(refused.value)
    assert schema_version(engine, "project_pb_0") == "r1"
    alone.close()
    mgr = WorkspaceManager(pooled, chain.config_path, direct_engine=engine)
    try:
        result = mgr.ensure_detailed("pb-0")
        assert (result.from_revision, result.to_revision) == ("r1", "r3")
        assert mgr.ensure_detailed("pb-new").to_revision == "r3"  # a new schema: built in parts too
        assert mgr.ensure_detailed("pb-1").to_revision == "r3"
    finally:
        mgr.close()
    assert assert_consistent(engine) == {"project_pb_0": "r3", "project_pb_1": "r3", "project_pb_new": "r3"}
    assert index_valid(engine, "project_pb_new")
    pgbouncer.assert_no_leak(pooled.url, engine)


def test_the_direct_url_is_read_from_the_environment_and_alembic_ini(
    pooled: sa.Engine, engine: sa.Engine, chain_builder: ChainBuilder, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain = outside_chain(chain_builder)
    at_r1(pooled, chain, 2)
    pooled_text = url_text(pooled.url)
    monkeypatch.setenv("WORKSPACE_TOOL_DIRECT_URL", url_text(engine.url))
    result = run_cli("--database-url", pooled_text, "-c", str(chain.config_path), "ensure", "pb-0")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    monkeypatch.delenv("WORKSPACE_TOOL_DIRECT_URL")
    ini = Path(chain.config_path)
    escaped = url_text(engine.url).replace("%", "%%")  # as in sqlalchemy.url: % is written %%
    ini.write_text(ini.read_text().replace("[alembic]\n", f"[alembic]\nworkspace_direct_url = {escaped}\n", 1))
    Chain.forget(ini)
    result = run_cli("--database-url", pooled_text, "-c", str(ini), "upgrade", "pb-1")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert assert_consistent(engine) == {"project_pb_0": "r3", "project_pb_1": "r3"}
    pgbouncer.assert_no_leak(pooled.url, engine)


def test_a_direct_urls_password_is_never_shown(
    pooled: sa.Engine, engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    chain = outside_chain(chain_builder)
    at_r1(pooled, chain, 1)
    secret = "s3cret-" + uuid.uuid4().hex[:8]
    unreachable = f"postgresql://someone:{secret}@127.0.0.1:1/nowhere"
    result = run_cli(
        "--database-url", url_text(pooled.url), "--direct-url", unreachable, "-c", str(chain.config_path),
        "ensure", "pb-0",
    )  # fmt: skip
    line = assert_one_line_error(result)
    assert secret not in result.stderr + result.stdout
    assert 'connection to server at "127.0.0.1", port 1 failed' in line
    assert schema_version(engine, "project_pb_0") == "r1"
    pgbouncer.assert_no_leak(pooled.url, engine)


def test_the_plain_alembic_command_through_the_pooler(
    pooled: sa.Engine, engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    """``alembic upgrade`` on a connection of its own holds the schema's lock and search_path for the
    session only where a revision needs it; through a pooler it keeps to transaction-scoped ones, and a
    chain with a revision outside a transaction is refused there unless a direct URL is set."""
    done = run_alembic(pooled.url, "-x", "schema=project_plain", "upgrade", "head")
    assert done.returncode == 0, done.stderr
    assert schema_version(engine, "project_plain") == HEAD
    pgbouncer.assert_no_leak(pooled.url, engine)
    chain = outside_chain(chain_builder)
    refused = run_alembic(pooled.url, "-x", "schema=project_outside", "upgrade", "head", ini=chain.config_path)
    assert refused.returncode == 1 and REFUSAL in refused.stderr
    assert "Traceback" not in refused.stderr
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regnamespace('project_outside')")).scalar() is None
    direct = run_alembic(
        pooled.url, "-x", "schema=project_outside", "upgrade", "head", ini=chain.config_path,
        env={"WORKSPACE_TOOL_DIRECT_URL": url_text(engine.url)},
    )  # fmt: skip
    assert direct.returncode == 0, direct.stderr
    assert schema_version(engine, "project_outside") == "r3" and index_valid(engine, "project_outside")
    pgbouncer.assert_no_leak(pooled.url, engine)


# ------------------------------------------------------------------------------- the async manager
def pgbouncer_async_engine(url: URL) -> AsyncEngine:
    """asyncpg through PgBouncer as SQLAlchemy's documentation sets it up: no pool of its own, no
    statement caches, unique names for the statements it prepares."""
    return create_async_engine(
        async_url(url),
        poolclass=sa.pool.NullPool,
        connect_args={
            "statement_cache_size": 0,
            "prepared_statement_cache_size": 0,
            "prepared_statement_name_func": lambda: f"__asyncpg_{uuid.uuid4()}__",
        },
    )


def test_the_async_manager_through_the_pooler(
    pooled: sa.Engine, engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    outside = outside_chain(chain_builder)
    at_r1(pooled, outside, 1)

    ids = [f"pb-async-{i}" for i in range(6)]

    async def main() -> list[list[str]]:
        aengine = pgbouncer_async_engine(pooled.url)
        adirect = create_async_engine(async_url(engine.url), poolclass=sa.pool.NullPool)
        amgr = AsyncWorkspaceManager(aengine, ALEMBIC_INI)
        try:
            await asyncio.gather(*(amgr.ensure(p) for p in ids))
            for project_id in ids:
                async with amgr.connect(project_id) as conn:
                    await conn.execute(
                        sa.text("INSERT INTO repositories (path, name) VALUES (:p, CAST(:p AS text))"),
                        {"p": project_id},
                    )
                    await conn.commit()

            async def names(project_id: str) -> list[str]:
                async with amgr.connect(project_id) as conn:
                    return list((await conn.execute(sa.text("SELECT name FROM repositories"))).scalars())

            seen = await asyncio.gather(*(names(p) for p in ids * 4))
            alone = AsyncWorkspaceManager(aengine, outside.config_path)
            with pytest.raises(SessionRequired):
                await alone.ensure("pb-0")
            direct = AsyncWorkspaceManager(aengine, outside.config_path, direct_engine=adirect)
            assert (await direct.ensure_detailed("pb-0")).to_revision == "r3"
            return seen
        finally:
            await aengine.dispose()
            await adirect.dispose()

    seen = asyncio.run(main())
    assert seen == [[p] for p in ids * 4]
    assert schema_version(engine, "project_pb_0") == "r3"
    pgbouncer.assert_no_leak(pooled.url, engine)


# ----------------------------------------------------------------------------------- the warm pool
def test_pool_fill_and_claims_through_the_pooler(pooled: sa.Engine, engine: sa.Engine) -> None:
    chain = Chain.load(ALEMBIC_INI)
    assert spares.fill(pooled, chain, 4, jobs=2).built == 4
    pgbouncer.assert_no_leak(pooled.url, engine)
    mgr = WorkspaceManager(pooled, ALEMBIC_INI, warm_pool=4)
    try:
        assert [mgr.ensure_detailed(f"pb-{i}").path for i in range(4)] == [PlanPath.POOL] * 4
        assert mgr.ensure_detailed("pb-4").path == PlanPath.FAST
    finally:
        mgr.close()
    refilling = WorkspaceManager(pooled, ALEMBIC_INI, warm_pool=2, refill=True)
    try:
        refilling.ensure("pb-5")  # built (the pool is empty), which kicks the background refill
        assert refilling.refiller is not None
        refilling.refiller.wait(60)
    finally:
        refilling.close()
    assert spares.status(pooled, chain, 2).ready == 2
    assert spares.drain(pooled) == 2
    assert assert_consistent(engine) == {f"project_pb_{i}": HEAD for i in range(6)}
    pgbouncer.assert_no_leak(pooled.url, engine)


def test_one_filler_at_a_time_through_the_pooler(pooled: sa.Engine, engine: sa.Engine) -> None:
    """The pool's lock is held by a transaction open for the whole fill: another filler through the
    pooler finds it taken (busy), and once the fill is over nothing holds it."""
    chain = Chain.load(ALEMBIC_INI)
    spares.fill(pooled, chain, 0)
    with pooled.connect() as holder, holder.begin():
        holder.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": POOL_LOCK_KEY})
        assert spares.fill(pooled, chain, 2, wait=False).busy
    assert spares.fill(pooled, chain, 2, wait=False).built == 2
    pgbouncer.assert_no_leak(pooled.url, engine)


def test_doctor_names_the_pooler_and_what_to_set(
    pooled: sa.Engine, engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    """`doctor` through the pooler: with a chain that has a revision outside a transaction and no direct URL, a
    problem saying what to set (exit 1); with the direct URL, fine; on the server itself, no pooler."""
    chain = outside_chain(chain_builder)
    at_r1(pooled, chain, 1)
    pooled_text, direct_text, ini = url_text(pooled.url), url_text(engine.url), str(chain.config_path)

    def pooler_finding(*args: str) -> tuple[int, str, str]:
        result = run_cli(*args, "-c", ini, "doctor", "--json")
        [found] = [f for f in json.loads(result.stdout)["findings"] if f["check"] == "pooler"]
        return result.exit_code, found["status"], found["finding"]

    code, status, finding = pooler_finding("--database-url", pooled_text)
    assert (code, status) == (1, "problem")
    assert finding.startswith("a connection pooler (PgBouncer or the like)") and "revision r2 runs outside" in finding
    assert "set --direct-url (or $WORKSPACE_TOOL_DIRECT_URL, or workspace_direct_url in alembic.ini)" in finding
    assert pooler_finding("--database-url", pooled_text, "--direct-url", direct_text)[1:] == (
        "ok",
        "a connection pooler (PgBouncer or the like): the login reported another backend than the one serving; "
        "what needs a session goes through the direct URL",
    )
    assert pooler_finding("--database-url", direct_text)[1:] == ("ok", "no connection pooler detected")
    pgbouncer.assert_no_leak(pooled.url, engine)


# ------------------------------------------------------------------------ the tenant lifecycle
def ensure_through(pooled: sa.Engine, ids: list[str]) -> list[str]:
    """Make each project of ``ids`` through the pooler; return ``ids``."""
    mgr = WorkspaceManager(pooled, ALEMBIC_INI)
    try:
        for project_id in ids:
            mgr.ensure(project_id)
    finally:
        mgr.close()
    return ids


@pytest.fixture
def tenant(pooled: sa.Engine) -> str:
    """Project pb-src (40 chunks) and pb-other, made through the pooler."""
    mgr = WorkspaceManager(pooled, ALEMBIC_INI)
    try:
        mgr.ensure("pb-src")
        mgr.ensure("pb-other")
        with mgr.session("pb-src") as s:
            add_chunks(s)
            s.commit()
    finally:
        mgr.close()
    return "pb-src"


def test_export_and_import_through_the_pooler(
    pooled: sa.Engine, engine: sa.Engine, tenant: str, tmp_path: Path
) -> None:
    before = data_rows(engine, "project_pb_src")
    pooled_text, path = url_text(pooled.url), str(tmp_path / "pb-src.wstx")
    exported = run_cli("--database-url", pooled_text, "export", tenant, "-o", path, "--json")
    assert exported.exit_code == 0, (exported.stdout, exported.stderr)
    assert json.loads(exported.stdout)["rows"] == sum(len(rows) for rows in before.values())
    pgbouncer.assert_no_leak(pooled.url, engine)
    imported = run_cli("--database-url", pooled_text, "import", path, "--as", "pb-copy", "--json")
    assert imported.exit_code == 0, (imported.stdout, imported.stderr)
    assert data_rows(engine, "project_pb_copy") == before and len(before["code_chunks"]) == 40
    row = registry_row(engine, "pb-copy")
    assert row is not None and (row["revision"], row["status"], row["last_action"]) == (HEAD, "ready", "import")
    again = run_cli("--database-url", pooled_text, "import", path, "--as", "pb-copy")
    assert_one_line_error(again, "pb-copy")
    assert data_rows(engine, "project_pb_copy") == before
    pgbouncer.assert_no_leak(pooled.url, engine)


def test_clone_through_the_pooler(pooled: sa.Engine, engine: sa.Engine, tenant: str) -> None:
    before = data_rows(engine, "project_pb_src")
    pooled_text = url_text(pooled.url)
    cloned = run_cli("--database-url", pooled_text, "clone", tenant, "pb-clone")
    assert cloned.exit_code == 0, (cloned.stdout, cloned.stderr)
    empty = run_cli("--database-url", pooled_text, "clone", tenant, "pb-bare", "--no-data")
    assert empty.exit_code == 0, (empty.stdout, empty.stderr)
    assert data_rows(engine, "project_pb_clone") == before
    assert data_rows(engine, "project_pb_bare") == {t: [] for t in before}
    row = registry_row(engine, "pb-clone")
    assert row is not None and (row["revision"], row["last_action"]) == (HEAD, "clone")
    assert_consistent(engine)
    pgbouncer.assert_no_leak(pooled.url, engine)


def test_drop_one_and_in_bulk_through_the_pooler(pooled: sa.Engine, engine: sa.Engine) -> None:
    ensure_through(pooled, [f"pb-{i}" for i in range(6)])
    pooled_text = url_text(pooled.url)
    one = run_cli("--database-url", pooled_text, "drop", "pb-0", "--yes")
    assert one.exit_code == 0, (one.stdout, one.stderr)
    pgbouncer.assert_no_leak(pooled.url, engine)
    bulk = run_cli("--database-url", pooled_text, "drop", "--match", "pb-[123]", "-j", "2", "--yes", "--json")
    assert bulk.exit_code == 0, (bulk.stdout, bulk.stderr)
    assert sorted(r["project_id"] for r in json.loads(bulk.stdout)["results"] if r["status"] == "ok") == [
        "pb-1",
        "pb-2",
        "pb-3",
    ]
    assert assert_consistent(engine) == {"project_pb_4": HEAD, "project_pb_5": HEAD}
    assert all(registry_row(engine, f"pb-{i}") is None for i in range(4))
    pgbouncer.assert_no_leak(pooled.url, engine)


def test_quarantine_restore_and_purge_through_the_pooler(pooled: sa.Engine, engine: sa.Engine) -> None:
    ensure_through(pooled, [f"pb-{i}" for i in range(3)])
    pooled_text = url_text(pooled.url)
    aside = run_cli("--database-url", pooled_text, "drop", "--match", "pb-*", "--retain", "7d", "-j", "2", "--yes")
    assert aside.exit_code == 0, (aside.stdout, aside.stderr)
    row = registry_row(engine, "pb-1")
    assert row is not None and (row["status"], row["last_action"]) == ("dropped", "quarantine")
    pgbouncer.assert_no_leak(pooled.url, engine)
    restored = run_cli("--database-url", pooled_text, "restore", "pb-1")
    assert restored.exit_code == 0, (restored.stdout, restored.stderr)
    purged = run_cli("--database-url", pooled_text, "purge", "pb-0", "pb-2", "--yes")
    assert purged.exit_code == 0, (purged.stdout, purged.stderr)
    assert assert_consistent(engine) == {"project_pb_1": HEAD}
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'dropped_%'")).scalar() == 0
    assert registry_row(engine, "pb-0") is None
    pgbouncer.assert_no_leak(pooled.url, engine)


def test_purge_expired_through_the_pooler(pooled: sa.Engine, engine: sa.Engine) -> None:
    """`drop --purge-expired` purges the quarantined projects past their date, each in a transaction of its
    own with its lock's timeout, and leaves the one not due yet; the library's purge_expired too."""
    ensure_through(pooled, [f"pb-{i}" for i in range(4)])
    pooled_text = url_text(pooled.url)
    aside = run_cli("--database-url", pooled_text, "drop", "--match", "pb-*", "--retain", "7d", "-j", "2", "--yes")
    assert aside.exit_code == 0, (aside.stdout, aside.stderr)
    with engine.begin() as conn:  # pb-0 and pb-1 past their date
        conn.execute(
            sa.text(
                "UPDATE project_registry.workspace_config SET metadata = jsonb_set(metadata, '{quarantine,until}', "
                "to_jsonb(now() - interval '1 minute')) WHERE project_id IN ('pb-0', 'pb-1')"
            )
        )
    purged = run_cli(
        "--database-url", pooled_text, "drop", "--purge-expired", "--lock-timeout", "2s", "--yes", "--json"
    )
    assert purged.exit_code == 0, (purged.stdout, purged.stderr)
    assert [q["project_id"] for q in json.loads(purged.stdout)] == ["pb-0", "pb-1"]
    assert registry_row(engine, "pb-0") is None and registry_row(engine, "pb-1") is None
    assert [q.project_id for q in quarantined(engine)] == ["pb-2", "pb-3"]
    pgbouncer.assert_no_leak(pooled.url, engine)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE project_registry.workspace_config SET metadata = jsonb_set(metadata, '{quarantine,until}', "
                "to_jsonb(now() - interval '1 minute')) WHERE project_id = 'pb-3'"
            )
        )
    assert [q.project_id for q in purge_expired(pooled, lock_timeout_ms=2000)] == ["pb-3"]
    with engine.connect() as conn:
        aside_schemas = conn.execute(sa.text("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'dropped_%'"))
        assert aside_schemas.scalars().all() == ["dropped_pb_2"]
    assert [q.project_id for q in quarantined(engine)] == ["pb-2"] and registry_row(engine, "pb-3") is None
    pgbouncer.assert_no_leak(pooled.url, engine)


def test_stamp_through_the_pooler(pooled: sa.Engine, engine: sa.Engine) -> None:
    """stamp moves the version row and the registry row in one transaction under the project's lock; its
    refusals (an unknown revision, the revision it is at) are one line and change nothing."""
    ensure_through(pooled, ["pb-0", "pb-1"])
    pooled_text, first = url_text(pooled.url), MAIN_REVISIONS[0]
    stamped = run_cli("--database-url", pooled_text, "stamp", "pb-0", first, "--lock-timeout", "2s", "--yes", "--json")
    assert stamped.exit_code == 0, (stamped.stdout, stamped.stderr)
    assert json.loads(stamped.stdout) == {"project_id": "pb-0", "from_revision": HEAD, "to_revision": first}
    assert schema_version(engine, "project_pb_0") == first
    row = registry_row(engine, "pb-0")
    assert row is not None and (row["revision"], row["last_action"]) == (first, "stamp")
    pgbouncer.assert_no_leak(pooled.url, engine)
    before = database_state(engine)
    assert_one_line_error(run_cli("--database-url", pooled_text, "stamp", "pb-0", first, "--yes"), "already")
    assert_one_line_error(run_cli("--database-url", pooled_text, "stamp", "pb-1", "nope", "--yes"), "nope")
    assert database_state(engine) == before
    back = run_cli("--database-url", pooled_text, "stamp", "pb-0", "head", "--yes")
    assert back.exit_code == 0, (back.stdout, back.stderr)
    assert assert_consistent(engine) == {"project_pb_0": HEAD, "project_pb_1": HEAD}
    pgbouncer.assert_no_leak(pooled.url, engine)


def test_bulk_ensure_through_the_pooler(pooled: sa.Engine, engine: sa.Engine, tmp_path: Path) -> None:
    """Many ids at once: named (one after the other), from a file with --jobs (the fleet runner) and the
    library's fleet.provision; projects to make, to upgrade and at head already, each reported as such."""
    chain = Chain.load(ALEMBIC_INI)
    behind = [f"pb-old-{i}" for i in range(3)]
    assert fleet.provision(pooled, chain, behind, target=MAIN_REVISIONS[1], jobs=2).failed == []
    pgbouncer.assert_no_leak(pooled.url, engine)
    pooled_text = url_text(pooled.url)
    named = run_cli("--database-url", pooled_text, "ensure", "pb-old-0", "pb-new-0", "pb-new-1", "--json")
    assert named.exit_code == 0, (named.stdout, named.stderr)
    assert [(r["project_id"], r["action"]) for r in json.loads(named.stdout)] == [
        ("pb-old-0", "upgrade"),
        ("pb-new-0", "create"),
        ("pb-new-1", "create"),
    ]
    pgbouncer.assert_no_leak(pooled.url, engine)
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("pb-old-0\npb-old-1\npb-old-2\npb-new-2\npb-new-3\n")
    from_file = run_cli("--database-url", pooled_text, "ensure", "--ids-from", str(ids_file), "-j", "3", "--json")
    assert from_file.exit_code == 0, (from_file.stdout, from_file.stderr)
    results = {r["project_id"]: r["status"] for r in json.loads(from_file.stdout)["results"]}
    assert set(results) == {"pb-old-0", "pb-old-1", "pb-old-2", "pb-new-2", "pb-new-3"}
    assert "failed" not in results.values()
    pgbouncer.assert_no_leak(pooled.url, engine)
    many = [f"pb-lib-{i}" for i in range(8)]
    report = fleet.provision(pooled, chain, [*many, "pb-new-0"], jobs=4)
    assert report.failed == [] and len(report.results) == 9
    expected = {f"project_{p.replace('-', '_')}": HEAD for p in [*behind, *many]}
    expected |= {f"project_pb_new_{i}": HEAD for i in range(4)}
    assert assert_consistent(engine) == expected
    pgbouncer.assert_no_leak(pooled.url, engine)


def test_exec_across_tenants_through_the_pooler(pooled: sa.Engine, engine: sa.Engine) -> None:
    """Each project's SQL runs with its own search_path: the rows land in each project's table, and nothing
    of that search_path (nor of the lock's timeout) is left for the next client of the pooler."""
    ids = ensure_through(pooled, [f"pb-{i}" for i in range(6)])
    done = run_cli(
        "--database-url", url_text(pooled.url), "exec", "--all", "-j", "3", "--json",
        "-c", "INSERT INTO repositories (path, name) SELECT current_schema(), 'x'",
    )  # fmt: skip
    assert done.exit_code == 0, (done.stdout, done.stderr)
    assert {r["project_id"] for r in json.loads(done.stdout)["results"] if r["status"] == "ok"} == set(ids)
    with engine.connect() as conn:
        for project_id in ids:
            schema = f"project_{project_id.replace('-', '_')}"
            paths = conn.execute(sa.text(f"SELECT path FROM {schema}.repositories")).scalars().all()
            assert paths == [schema]
    pgbouncer.assert_no_leak(pooled.url, engine)


def test_exec_through_the_pooler_is_two_round_trips_per_project(pooled: sa.Engine, engine: sa.Engine) -> None:
    """Behind a pooler each project's transaction is BEGIN with the lock, the guard, the search_path and the
    SQL; then the session reset with COMMIT: two queries, nothing else per project."""
    ids = ensure_through(pooled, [f"pb-{i}" for i in range(7)])
    chain = Chain.load(ALEMBIC_INI)
    sql = "INSERT INTO repositories (path, name) SELECT current_schema(), 'x'"
    with WireRecorder(pooled.url) as wire:
        counted = sa.create_engine(wire.url)
        try:
            sent = []
            for some in (ids[:1], ids[1:3], ids[3:]):
                wire.clear()
                spec = fleet.RunSpec(jobs=1, selection=fleet.Selection(ids=some))
                assert fleet.run(counted, chain, exec_operation(sql), spec).counts()["ok"] == len(some)
                sent.append(wire.queries)
        finally:
            counted.dispose()
    two, four = sent[1], sent[2]  # the first run probed for the pooler
    assert len(four) - len(two) == 4, four
    resets = [q for q in four if q.startswith("RESET ALL") and q.rstrip().endswith("COMMIT")]
    assert len(resets) == 4, four
    assert_consistent(engine)
    pgbouncer.assert_no_leak(pooled.url, engine)


def test_move_through_the_pooler(
    pooled: sa.Engine,
    engine: sa.Engine,
    tenant: str,
    new_database: URL,
    pgbouncer_server: pgbouncer.PgBouncer,
) -> None:
    """Both databases through the pooler: the rows arrive, the source is purged, the target registers it."""
    before = data_rows(engine, "project_pb_src")
    target_pooled = pgbouncer_server.url(new_database.database)
    target = sa.create_engine(new_database)
    try:
        done = run_cli(
            "--database-url", url_text(pooled.url), "move", tenant, "--to-url", url_text(target_pooled),
            "--yes", "--json",
        )  # fmt: skip
        assert done.exit_code == 0, (done.stdout, done.stderr)
        assert json.loads(done.stdout)["steps"] == ["quarantine", "export", "import", "verify", "purge"]
        assert data_rows(target, "project_pb_src") == before
        assert registry_row(engine, tenant) is None
        row = registry_row(target, tenant)
        assert row is not None and (row["revision"], row["status"]) == (HEAD, "ready")
        pgbouncer.assert_no_leak(target_pooled, target)
    finally:
        target.dispose()
    pgbouncer.assert_no_leak(pooled.url, engine)


def test_session_state_an_exec_sets_stays_in_its_transaction_through_the_pooler(
    pooled: sa.Engine, engine: sa.Engine
) -> None:
    """The SQL of `exec` is the user's: a `SET` without LOCAL or a session advisory lock in it would stay on
    the pooler's server connection for its next client. Through a pooler the SQL keeps them for its own
    statements, and its transaction ends with the session reset (the lock released). One job: another project's
    transaction running at the same time would find the lock taken."""
    ids = ensure_through(pooled, [f"pb-{i}" for i in range(6)])
    done = run_cli(
        "--database-url", url_text(pooled.url), "exec", "--all", "-j", "1",
        "-c", "SET lock_timeout = '9s'; "
        "INSERT INTO repositories (path, name) SELECT current_schema(), "
        "current_setting('lock_timeout') || ' ' || pg_try_advisory_lock(42)::text",
    )  # fmt: skip
    assert done.exit_code == 0, (done.stdout, done.stderr)
    with engine.connect() as conn:
        for project_id in ids:
            schema = f"project_{project_id.replace('-', '_')}"
            rows = conn.execute(sa.text(f"SELECT path, name FROM {schema}.repositories")).all()
            assert [tuple(r) for r in rows] == [(schema, "9s true")]  # its settings, and the lock, for its SQL
    pgbouncer.assert_no_leak(pooled.url, engine)

    # SQL that fails rolls back; what outlives a rollback (a session lock it took) is reset all the same
    failed = run_cli(
        "--database-url", url_text(pooled.url), "exec", ids[0],
        "-c", "SELECT pg_try_advisory_lock(43); INSERT INTO repositories (path, name) VALUES (current_schema(), 'x')",
    )  # fmt: skip
    assert failed.exit_code == 1 and "duplicate key" in failed.stderr, failed.stderr
    pgbouncer.assert_no_leak(pooled.url, engine)


def test_a_move_the_target_cannot_import_is_refused_before_the_source_changes(
    pooled: sa.Engine,
    engine: sa.Engine,
    chain_builder: ChainBuilder,
    new_database: URL,
    pgbouncer_server: pgbouncer.PgBouncer,
) -> None:
    """The import builds the schema and copies its rows in one transaction: a chain with a revision outside a
    transaction can't, direct URL or not. The move says so before it quarantines the source."""
    chain = outside_chain(chain_builder)
    pooled_text, ini = url_text(pooled.url), str(chain.config_path)
    made = run_cli("--database-url", pooled_text, "--direct-url", url_text(engine.url), "-c", ini, "ensure", "pb-0")
    assert made.exit_code == 0, (made.stdout, made.stderr)
    before = database_state(engine)
    target_pooled = url_text(pgbouncer_server.url(new_database.database))
    moved = run_cli(
        "--database-url", pooled_text, "--direct-url", url_text(engine.url), "-c", ini,
        "move", "pb-0", "--to-url", target_pooled, "--yes",
    )  # fmt: skip
    assert_one_line_error(moved, "revision r2", "nothing was changed")
    assert database_state(engine) == before
    row = registry_row(engine, "pb-0")
    assert row is not None and row["status"] == "ready"
    pgbouncer.assert_no_leak(pooled.url, engine)


def test_a_move_to_the_same_database_by_its_direct_url_is_refused(
    pooled: sa.Engine, engine: sa.Engine, tenant: str
) -> None:
    before = database_state(engine)
    moved = run_cli("--database-url", url_text(pooled.url), "move", tenant, "--to-url", url_text(engine.url), "--yes")
    assert_one_line_error(moved, "the target is the source's database", "nothing was changed")
    assert database_state(engine) == before
    pgbouncer.assert_no_leak(pooled.url, engine)
