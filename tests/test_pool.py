"""The warm pool (issue 12): spare schemas at head that a new project's first ensure renames instead of
building its tables. Claiming (sync, async, the fleet's provision), falling back to the fast path, the pool's
size, filling, draining and refilling, spares following the chain, what status and check show, chains that
can't be renamed, faults and concurrency."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from support.chains import ALEMBIC_INI, HEAD, TABLES, ChainBuilder
from support.concurrency import WAIT, Victim, waiting_on_advisory
from support.db import (
    StatementCounter,
    assert_consistent,
    catalog,
    registry_row,
    schema_exists,
    schema_tables,
    schema_version,
)

from workspace_tool import (
    ConfigurationError,
    DatabaseUnavailable,
    PoolRefused,
    ProjectWorkspaceManager,
    WorkspaceManager,
    drift,
    fleet,
    spares,
)
from workspace_tool.chain import Chain
from workspace_tool.cli import main
from workspace_tool.managers import cache
from workspace_tool.schema.catalog import diff
from workspace_tool.spares.store import SPARE_PREFIX
from workspace_tool.sql import LOCK_SQL, POOL_LOCK_KEY, lock_id, lock_key
from workspace_tool.urls import async_url
from workspace_tool.verification import verify_fast_path

CHAIN = Chain.load(ALEMBIC_INI)


# --------------------------------------------------------------------------------- helpers
def with_pool_size(ini: Path, size: str, option: str = "workspace_pool_size") -> Path:
    """Set workspace_pool_size (or another option) in an alembic.ini's [alembic] section; returns the path."""
    text = re.sub(rf"(?m)^{option} = .*\n", "", ini.read_text())
    text = text.replace("[alembic]\n", f"[alembic]\n{option} = {size}\n", 1)
    ini.write_text(text)
    Chain.forget(ini)
    return ini


def spare_schemas(engine: sa.Engine) -> list[str]:
    """The spare-named schemas in the database (whatever the spares table says)."""
    with engine.connect() as conn:
        names = conn.execute(sa.text("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'workspace\\_spare\\_%'"))
        return sorted(names.scalars())


def spare_rows(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(sa.text("SELECT schema_name FROM project_registry.spare_schemas")).scalars())


def refused_fill(engine: sa.Engine, chain: Chain) -> str:
    """``spares.fill``'s refusal of ``chain``: one line saying how to turn the pool off, nothing made."""
    with pytest.raises(PoolRefused) as info:
        spares.fill(engine, chain)
    message = str(info.value)
    assert "\n" not in message and message.startswith("the warm pool can't be used with this chain")
    assert "set workspace_pool_size = 0" in message
    assert spare_schemas(engine) == [] and spare_rows(engine) == []  # nothing made
    return message


def ready(engine: sa.Engine, chain: Chain = CHAIN) -> int:
    return spares.status(engine, chain).ready


def last_path(engine: sa.Engine, project_id: str) -> Any:
    row = registry_row(engine, project_id)
    assert row is not None
    return (row["last_action"], row["last_path"], row["revision"])


@pytest.fixture
def pooled(engine: sa.Engine) -> Iterator[WorkspaceManager]:
    """A manager with a warm pool of 3, filled."""
    mgr = WorkspaceManager(engine, ALEMBIC_INI, warm_pool=3)
    assert spares.fill(engine, CHAIN, 3, jobs=2).built == 3
    yield mgr
    mgr.close()


# ------------------------------------------------------------------------------- claiming
def test_a_new_project_is_a_spare_renamed_with_the_catalog_of_a_fresh_one(
    pooled: WorkspaceManager, engine: sa.Engine
) -> None:
    before = set(spare_schemas(engine))
    result = pooled.ensure_detailed("from-pool")
    assert (result.action, result.path, result.from_revision, result.to_revision) == ("created", "pool", None, HEAD)
    assert last_path(engine, "from-pool") == ("create", "pool", HEAD)
    assert schema_tables(engine, "project_from_pool") == TABLES
    assert len(set(spare_schemas(engine)) ^ before) == 1 and ready(engine) == 2  # one spare is gone: renamed

    fresh = WorkspaceManager(engine, ALEMBIC_INI).ensure_detailed("built-fresh")  # the pool off: built
    assert fresh.path == "fast"
    assert diff(catalog(engine, "project_built_fresh"), catalog(engine, "project_from_pool")) == []
    assert pooled.ensure_detailed("from-pool").action == "cached"
    assert drift.check(engine, CHAIN).ok
    assert assert_consistent(engine) == {"project_from_pool": HEAD, "project_built_fresh": HEAD}


def test_a_project_made_from_a_spare_works_for_the_application(pooled: WorkspaceManager) -> None:
    from migrations.models import Repository

    with pooled.session("app-on-spare") as s:
        s.add(Repository(path="/src/a", name="a"))
        s.commit()
        assert s.scalar(sa.select(sa.func.count()).select_from(Repository)) == 1
    assert last_path(pooled.engine, "app-on-spare")[1] == "pool"


def test_with_no_spare_left_the_schema_is_built_in_one_more_round_trip(pooled: WorkspaceManager) -> None:
    with StatementCounter(pooled.engine) as counter:
        paths = [pooled.ensure_detailed(f"p{i}").path for i in range(4)]
    statements = counter.statements
    assert paths == ["pool", "pool", "pool", "fast"]
    assert last_path(pooled.engine, "p3") == ("create", "fast", HEAD)
    # each claim is one statement that takes the lock itself (registry r0009), alone in its round trip
    claims = [s for s in statements if "claim_project(" in s]
    assert len(claims) == 4 and all("pg_advisory_xact_lock" not in s for s in claims)
    # the last one: the claim found nothing (nothing changed), then the build, one round trip under the lock
    last = statements[statements.index(next(s for s in statements if "project_p3" in s)) :]
    assert len(last) == 2 and "claim_project(hashtextextended('workspace_tool:project_p3'" in last[0]
    assert "pg_advisory_xact_lock" in last[1] and '\nCREATE SCHEMA "project_p3";' in last[1]


def test_with_the_pool_off_nothing_is_looked_for(engine: sa.Engine) -> None:
    spares.fill(engine, CHAIN, 1)
    mgr = WorkspaceManager(engine, ALEMBIC_INI)  # workspace_pool_size is not set: 0
    with StatementCounter(engine) as counter:
        assert mgr.ensure_detailed("no-pool").path == "fast"
        assert fleet.provision(engine, CHAIN, ["no-pool-fleet"]).results[0].path == "fast"
    assert counter.statements and not any("spare" in s for s in counter.statements)
    assert ready(engine) == 1


def test_the_pool_size_comes_from_alembic_ini_and_a_bad_one_is_one_line(
    engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    ini = with_pool_size(chain_builder.copy_main_chain().ini, "2")
    chain = Chain.load(ini)
    assert spares.configured_size(chain) == 2
    assert spares.fill(engine, chain).built == 2  # the configured size
    assert WorkspaceManager(engine, ini).ensure_detailed("sized").path == "pool"
    assert WorkspaceManager(engine, ini, warm_pool=0).ensure_detailed("not-sized").path == "fast"  # the argument wins

    with_pool_size(ini, "lots")
    with pytest.raises(ConfigurationError) as info:
        WorkspaceManager(engine, ini)
    assert "workspace_pool_size = 'lots'" in str(info.value) and "whole number" in str(info.value)
    with pytest.raises(ConfigurationError, match="0 or more"):
        WorkspaceManager(engine, ALEMBIC_INI, warm_pool=-1)


def test_the_async_manager_claims_spares_and_gathers_them(engine: sa.Engine, database_url: URL) -> None:
    spares.fill(engine, CHAIN, 4)
    role = "wst_pool_async_owner"

    async def main() -> list[tuple[str, bool]]:
        aengine = create_async_engine(async_url(database_url), poolclass=sa.pool.NullPool)
        try:
            amgr = ProjectWorkspaceManager(aengine, ALEMBIC_INI, warm_pool=4)
            first = await asyncio.gather(*(amgr.ensure_detailed(f"async-{i}") for i in range(3)))
            granted = await amgr.ensure_detailed("async-granted", owner_role=role)
            last = await amgr.ensure_detailed("async-last")
            return [(r.path, r.duration_ms > 0) for r in [*first, granted, last]]
        finally:
            await aengine.dispose()

    assert asyncio.run(main()) == [("pool", True)] * 4 + [("fast", True)]
    assert set(assert_consistent(engine).values()) == {HEAD}
    with engine.begin() as conn:
        allowed = conn.execute(
            sa.text("SELECT has_table_privilege(:r, 'project_async_granted.repositories', 'INSERT')"), {"r": role}
        ).scalar()
        conn.execute(sa.text(f"DROP OWNED BY {role}"))
        conn.execute(sa.text(f"DROP ROLE {role}"))
    assert allowed is True


SEED = "op.get_bind().exec_driver_sql(\"INSERT INTO items (name) VALUES ('seed')\")  # reads the database: online"


def test_concurrent_first_ensures_from_the_pool_never_wait_for_one_another(
    engine: sa.Engine, database_url: URL, chain_builder: ChainBuilder
) -> None:
    """asyncio.gather of first ensures served from the warm pool: each gets a spare of its own, and none waits
    for another claim in flight, neither on the server (a claim holding its spare, uncommitted, in another
    session) nor in the manager (a claim waiting on the server, here for its schema's lock), even with a
    revision in the chain that runs online (through Alembic, one at a time per event loop: a claim runs none)."""
    chain_builder.add("a1", ITEMS, 'op.drop_table("items")').add("a2", SEED)
    chain = Chain.load(chain_builder.ini)
    assert chain.has_online
    WorkspaceManager(engine, chain.config_path).ensure("built")  # the registry; a fresh build to compare with
    spares.fill(engine, chain, 4)
    claimed_elsewhere = engine.connect()  # a claim in flight in another session: its spare locked and renamed
    claimed_elsewhere.execute(
        sa.text("SELECT project_registry.claim_spare('project_open', :head, :chain)"),
        {"head": chain.head, "chain": chain.fingerprint},
    )
    held = engine.connect()  # the schema lock of one project, so that its claim waits on the server
    held.execute(sa.text("SELECT pg_advisory_lock(" + lock_id("project_held") + ")"))
    held.commit()

    async def main() -> tuple[bool, list[str]]:
        aengine = create_async_engine(async_url(database_url), poolclass=sa.pool.NullPool)
        amgr = ProjectWorkspaceManager(aengine, chain.config_path, warm_pool=4)
        waiting = asyncio.create_task(amgr.ensure_detailed("held"))
        try:
            with engine.connect() as admin:
                await asyncio.to_thread(waiting_on_advisory, admin)  # its claim waits on the server
            others = await asyncio.wait_for(
                asyncio.gather(*(amgr.ensure_detailed(f"free-{i}") for i in range(2))), WAIT
            )
            still_waiting = not waiting.done()
        finally:
            held.execute(sa.text("SELECT pg_advisory_unlock(" + lock_id("project_held") + ")"))
            held.commit()
            claimed_elsewhere.commit()
            last = await waiting
        try:
            built = await amgr.ensure_detailed("no-spare-left")  # none left: built, the online revision too
        finally:
            await aengine.dispose()
        return still_waiting, [str(r.path) for r in [last, *others, built]]

    try:
        assert asyncio.run(main()) == (True, ["pool"] * 3 + ["mixed"])
    finally:
        held.close()
        claimed_elsewhere.close()
    assert spare_rows(engine) == [] and spare_schemas(engine) == []  # four claims, four spares
    assert schema_version(engine, "project_no_spare_left") == "a2"
    assert (registry_row(engine, "no-spare-left") or {}).get("revision") == "a2"
    built = catalog(engine, "project_built")
    for project in ("held", "free_0", "free_1", "open"):
        assert diff(built, catalog(engine, f"project_{project}")) == [], project


def test_the_fleet_provision_claims_spares_then_builds_the_rest(engine: sa.Engine) -> None:
    spares.fill(engine, CHAIN, 2)
    report = fleet.provision(engine, CHAIN, [f"fleet-{i}" for i in range(5)], jobs=2, pool=True)
    assert report.ok
    assert sorted(r.path for r in report.results) == ["fast", "fast", "fast", "pool", "pool"]
    assert ready(engine) == 0 and len(assert_consistent(engine)) == 5


def test_owner_role_grants_are_made_on_a_claimed_spare(pooled: WorkspaceManager) -> None:
    role = "wst_pool_owner"
    assert pooled.ensure_detailed("granted", owner_role=role).path == "pool"
    with pooled.engine.connect() as conn:
        allowed = conn.execute(
            sa.text("SELECT has_table_privilege(:r, 'project_granted.repositories', 'INSERT')"), {"r": role}
        ).scalar()
        conn.execute(sa.text(f"DROP OWNED BY {role}"))
        conn.execute(sa.text(f"DROP ROLE {role}"))
        conn.commit()
    assert allowed is True


def test_a_spare_of_another_role_is_left_to_it(engine: sa.Engine, database_url: URL) -> None:
    spares.fill(engine, CHAIN, 1)
    role = "wst_pool_other"
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD 'x' SUPERUSER"))
    other = sa.create_engine(database_url.set(username=role, password="x"), poolclass=sa.pool.NullPool)
    try:
        result = WorkspaceManager(other, ALEMBIC_INI, warm_pool=1).ensure_detailed("by-other")
        assert result.path == "fast"  # the spare is owned by the role that made it: only it claims it
        assert spares.status(other, CHAIN).counts()["other role"] == 1
    finally:
        other.dispose()
        with engine.begin() as conn:
            conn.execute(sa.text("DROP SCHEMA project_by_other CASCADE"))
            conn.execute(sa.text(f"DROP ROLE {role}"))
    assert WorkspaceManager(engine, ALEMBIC_INI, warm_pool=1).ensure_detailed("by-me").path == "pool"


# ------------------------------------------------------------------ what status and check show
def test_spares_are_counted_apart_never_as_orphans(pooled: WorkspaceManager, engine: sa.Engine) -> None:
    pooled.ensure("counted")
    statuses = pooled.status()
    assert [(s.project_id, s.state) for s in statuses] == [("counted", "at-head")]
    summary = json.loads(cli(engine, "status", "--json").stdout)
    assert summary["counts"]["orphan"] == 0 and summary["total"] == 1
    assert summary["spares"] == {
        "ready": 2,
        "stale": 0,
        "missing": 0,
        "other role": 0,
        "other release": 0,
        "ahead": 0,
        "old privileges": 0,
        "building": 0,
    }
    shown = cli(engine, "status")
    assert "Warm pool (spare schemas, no project's): 2 ready (workspace-tool pool status)" in shown.stdout
    assert [r.project_id for r in pooled.projects()] == ["counted"]


def test_check_compares_the_spares_too(pooled: WorkspaceManager, engine: sa.Engine) -> None:
    pooled.ensure("checked")
    report = drift.check(engine, CHAIN)
    assert report.ok and len(report.schemas) == 1 and len(report.spares) == 2
    spare = report.spares[0].schema
    with engine.begin() as conn:
        conn.execute(sa.text(f'ALTER TABLE "{spare}".repositories ADD COLUMN by_hand int'))
    shown = cli(engine, "check")
    assert shown.exit_code == 1
    assert shown.stdout == (f"1 schema(s), spare: unexpected relations.repositories.columns.by_hand ({spare})\n")
    assert "1 schema(s) and 2 spare(s) checked against head" in shown.stderr


def test_verify_fast_path_proves_a_renamed_spare_equals_a_fresh_schema(engine: sa.Engine) -> None:
    spares.fill(engine, CHAIN, 0)  # bootstraps the registry and the extension
    report = verify_fast_path(engine, CHAIN, cases=[], pool=True)
    [check] = report.checks
    assert (check.kind, check.label, check.fast_path, check.differences) == (
        "pool",
        f"(spare) -> {HEAD}",
        "pool",
        (),
    )
    assert verify_fast_path(engine, CHAIN, cases=[]).checks == ()  # the pool is off: not checked


# --------------------------------------------------------------------- fill, drain, refill
def test_fill_is_idempotent_and_concurrent_fills_never_overfill(engine: sa.Engine) -> None:
    reports: list[spares.FillReport] = []
    fills = [threading.Thread(target=lambda: reports.append(spares.fill(engine, CHAIN, 4, jobs=2))) for _ in range(3)]
    for thread in fills:
        thread.start()
    for thread in fills:
        thread.join(60)
    assert sorted(r.built for r in reports) == [0, 0, 4]  # one filled it, the others waited and found it full
    assert ready(engine) == 4 and len(spare_schemas(engine)) == 4 == len(spare_rows(engine))
    assert spares.fill(engine, CHAIN, 4).built == 0
    assert spares.fill(engine, CHAIN, 5).built == 1


def test_a_fill_that_finds_another_filler_at_work_returns_at_once(engine: sa.Engine) -> None:
    spares.fill(engine, CHAIN, 0)
    with engine.connect() as holder:
        holder.execute(sa.text("SELECT pg_advisory_lock(hashtextextended(:k, 0))"), {"k": POOL_LOCK_KEY})
        try:
            report = spares.fill(engine, CHAIN, 2, wait=False)
        finally:
            holder.execute(sa.text("SELECT pg_advisory_unlock(hashtextextended(:k, 0))"), {"k": POOL_LOCK_KEY})
    assert report.busy and report.built == 0 and ready(engine) == 0


def test_drain_drops_every_spare(pooled: WorkspaceManager, engine: sa.Engine) -> None:
    with engine.begin() as conn:  # a spare-named schema left without its row
        conn.execute(sa.text(f"CREATE SCHEMA {SPARE_PREFIX}leftover"))
    assert spares.drain(engine) == 4
    assert spare_schemas(engine) == [] and spare_rows(engine) == []
    assert pooled.ensure_detailed("after-drain").path == "fast"


def test_the_background_refill_runs_on_its_own_thread_and_connection(engine: sa.Engine) -> None:
    seen: list[tuple[str, int]] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "INSERT INTO project_registry.spare_schemas" in statement or "claim_project" in statement:
            seen.append((threading.current_thread().name, id(conn.connection.dbapi_connection)))

    mgr = WorkspaceManager(engine, ALEMBIC_INI, warm_pool=2, refill=True)
    assert mgr.refiller is not None
    spares.fill(engine, CHAIN, 2)
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        assert mgr.ensure_detailed("kick").path == "pool"  # the request's claim, then the refill
        mgr.refiller.wait(60)
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
        mgr.close()
    assert ready(engine) == 2  # refilled to its size
    (request_thread, _), *refills = seen
    assert request_thread == threading.current_thread().name and refills
    # The refill checks its connections out of the engine's pool in its own thread: never the request's
    # while the request holds it (a checked-out connection is no one else's), though it may get the same
    # DBAPI connection once the request gave it back (which made an identity check here flaky under -n 2).
    assert {name for name, _ in refills} == {"workspace-pool-refill"}


def test_the_async_managers_refill_runs_on_a_thread_and_engine_of_its_own(engine: sa.Engine, database_url: URL) -> None:
    async def main() -> tuple[str, str]:
        aengine = create_async_engine(async_url(database_url), poolclass=sa.pool.NullPool)
        amgr = ProjectWorkspaceManager(aengine, ALEMBIC_INI, warm_pool=1, refill=True)
        try:
            assert amgr.refiller is not None and amgr.refiller.engine.dialect.driver == "psycopg2"
            first = await amgr.ensure_detailed("async-refill-1")  # the pool is empty: built, then refilled
            await asyncio.to_thread(amgr.refiller.wait, 60)
            second = await amgr.ensure_detailed("async-refill-2")
            return str(first.path), str(second.path)
        finally:
            await amgr.close()
            await aengine.dispose()

    assert asyncio.run(main()) == ("fast", "pool")


def test_the_refill_of_a_chain_the_pool_refuses_turns_itself_off(
    engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    chain_builder.add("r1", UNSAFE["function search_path"])
    mgr = WorkspaceManager(engine, chain_builder.ini, warm_pool=1, refill=True)
    assert mgr.refiller is not None
    try:
        assert mgr.ensure_detailed("refused").path == "fast"
        mgr.refiller.wait(60)
        assert isinstance(mgr.refiller.refused, PoolRefused)
    finally:
        mgr.close()
    assert spare_schemas(engine) == []


def test_the_registry_of_an_older_workspace_tool_gets_the_spares_table(engine: sa.Engine) -> None:
    mgr = WorkspaceManager(engine, ALEMBIC_INI)
    mgr.bootstrap()
    with engine.begin() as conn:  # the registry as workspace-tool left it before the warm pool (r0002)
        conn.execute(sa.text("DROP FUNCTION project_registry.claim_spare(text, text, text)"))
        conn.execute(sa.text("DROP FUNCTION project_registry.default_privileges()"))  # r0004's
        conn.execute(sa.text("DROP TABLE project_registry.pool_releases"))  # r0004's
        conn.execute(sa.text("DROP TABLE project_registry.spare_schemas"))
        conn.execute(
            sa.text("UPDATE project_registry.workspace_registry_version SET version_num = 'r0002_reference_catalog'")
        )
    cache.clear()
    assert spares.status(engine, CHAIN).spares == []  # read-only: works on it as it is
    assert spares.fill(engine, CHAIN, 1).built == 1  # bootstraps it to r0004 first
    assert WorkspaceManager(engine, ALEMBIC_INI, warm_pool=1).ensure_detailed("upgraded-registry").path == "pool"


# A claim as each release sends it: r0006's claim_spare_locked (releases before r0009, which write the registry
# row themselves) and r0009's claim_project (the claim and the registry row); each takes the schema's lock itself.
CLAIMS = {
    "claim_spare_locked": "SELECT project_registry.claim_spare_locked({lock}, :schema, :rev, :chain)",
    "claim_project": (
        "SELECT project_registry.claim_project({lock}, :project, :schema, :rev, :chain, 'create', 'pool') IS NOT NULL"
    ),
}


def claim_sql(function: str, schema: str) -> tuple[sa.TextClause, dict[str, str]]:
    """One claim of a spare for ``schema`` by ``function`` (CLAIMS), and its parameters: true if it claimed."""
    parameters = {"schema": schema, "project": schema.removeprefix("project_"), "rev": CHAIN.head}
    return sa.text(CLAIMS[function].format(lock=lock_id(schema))), {**parameters, "chain": CHAIN.fingerprint}


@pytest.mark.parametrize("function", list(CLAIMS))
def test_a_claim_looks_schemas_up_by_name_and_never_reads_them_all(other_engine: sa.Engine, function: str) -> None:
    """The claim finds the project's schema (to claim nothing if it exists) and checks each candidate
    spare's owner through pg_namespace's name index: it never scans every schema of the database, which a
    planner reading a small or never-analyzed pg_namespace would otherwise choose (registry r0008, r0009)."""
    WorkspaceManager(other_engine, ALEMBIC_INI).bootstrap()
    assert spares.fill(other_engine, CHAIN, 2).built == 2
    with other_engine.connect() as conn:
        conn.execute(sa.text("ANALYZE pg_namespace"))  # its statistics right: a handful of schemas, one page
        conn.commit()

        def claim(schema: str) -> tuple[bool, int]:
            """Claim a spare for ``schema`` in a transaction; whether it did, and the scans of pg_namespace
            it made (this backend's count, read by a function: the pg_stat views join pg_namespace)."""
            scans = sa.text("SELECT pg_stat_get_xact_numscans('pg_namespace'::regclass)")
            with conn.begin():
                before = conn.execute(scans).scalar_one()
                claimed = conn.execute(*claim_sql(function, schema)).scalar_one()
                return claimed, conn.execute(scans).scalar_one() - before

        assert claim("project_by_index") == (True, 0)  # a spare renamed, no schema read but by name
        assert claim("project_by_index") == (False, 0)  # it exists now: nothing claimed, nothing scanned
    assert schema_exists(other_engine, "project_by_index") and len(spare_rows(other_engine)) == 1


@pytest.mark.parametrize("function", list(CLAIMS))
def test_a_claim_that_waited_for_the_lock_sees_the_schema_made_meanwhile(engine: sa.Engine, function: str) -> None:
    """A claim waiting for the schema's lock while another session creates that schema claims nothing once
    the lock is released: it looks for the schema after taking the lock, in a new snapshot, which sees the
    commit it waited for (a look before the lock, or in the lock's snapshot, would rename a spare onto the
    schema and fail). Nothing changes and the server logs no error: the spare is still a spare."""
    WorkspaceManager(engine, ALEMBIC_INI).bootstrap()
    assert spares.fill(engine, CHAIN, 1).built == 1
    spares_before = spare_rows(engine)
    with engine.connect() as holder, engine.connect() as claimer, engine.connect() as admin:
        holder.execute(sa.text(LOCK_SQL), {"key": lock_key("project_meanwhile")})  # as an ensure building it
        holder.execute(sa.text("CREATE SCHEMA project_meanwhile"))
        victim = Victim(lambda: claimer.execute(*claim_sql(function, "project_meanwhile")).scalar_one())
        victim.start()
        waiting_on_advisory(admin, 1, victim)
        holder.commit()  # the schema is there, the lock released: the claim goes on
        victim.finish()
        claimer.commit()
    assert victim.error is None and victim.result is False
    assert spare_rows(engine) == spares_before == spare_schemas(engine)
    assert registry_row(engine, "meanwhile") is None


# ------------------------------------------------------------------ spares follow the chain
def test_spares_behind_a_new_head_are_never_claimed_and_upgrade_all_replaces_them(
    engine: sa.Engine, tmp_path: Path
) -> None:
    old = ChainBuilder(tmp_path / "old").add("r1", T1)
    new = ChainBuilder(tmp_path / "new").add("r1", T1).add("r2", T2)
    with_pool_size(new.ini, "0", "workspace_pool_grace")  # the old release is gone (else kept: test_pool_live.py)
    old_chain, new_chain = Chain.load(old.ini), Chain.load(new.ini)
    WorkspaceManager(engine, old.ini).ensure("existing")
    assert spares.fill(engine, old_chain, 2).built == 2

    mgr = WorkspaceManager(engine, new.ini, warm_pool=2)
    assert mgr.ensure_detailed("after-release").path == "fast"  # the spares are at r1: never handed out
    assert spares.status(engine, new_chain).counts()["stale"] == 2
    report = fleet.upgrade(engine, new_chain)
    assert report.ok and report.pool is not None
    assert (report.pool["dropped"], report.pool["built"], report.pool["ready"]) == (2, 2, 2)
    counts = spares.status(engine, new_chain).counts()
    assert counts["ready"] == 2 and sum(counts.values()) == 2
    cache.clear()
    result = WorkspaceManager(engine, new.ini, warm_pool=2).ensure_detailed("on-new-head")
    assert (result.path, result.to_revision) == ("pool", "r2")
    assert set(schema_tables(engine, "project_on_new_head")) == {"alembic_version", "t1", "t2"}
    assert assert_consistent(engine) == {
        "project_existing": "r2",
        "project_after_release": "r2",
        "project_on_new_head": "r2",
    }


def test_a_spare_of_another_chain_with_the_same_head_is_not_claimed(engine: sa.Engine, tmp_path: Path) -> None:
    one = ChainBuilder(tmp_path / "one").add("r1", T1)
    other = ChainBuilder(tmp_path / "other").add("r1", T2)  # same revision id, other tables
    spares.fill(engine, Chain.load(one.ini), 1)
    result = WorkspaceManager(engine, other.ini, warm_pool=1).ensure_detailed("other-chain")
    assert result.path == "fast" and schema_tables(engine, "project_other_chain") == {"alembic_version", "t2"}


# ------------------------------------------------------------------ chains that can't be renamed
T1 = "op.create_table('t1', sa.Column('id', sa.Integer, primary_key=True))"
T2 = "op.create_table('t2', sa.Column('id', sa.Integer, primary_key=True))"
ITEMS = "op.create_table('items', sa.Column('id', sa.Integer, primary_key=True), sa.Column('name', sa.Text))"
UNSAFE = {
    "function search_path": ITEMS
    + '\nop.execute("CREATE FUNCTION item_count() RETURNS bigint LANGUAGE sql SET search_path FROM CURRENT '
    "AS 'SELECT count(*) FROM items'\")",
    "view literal": ITEMS
    + "\nop.execute(\"DO $$ BEGIN EXECUTE 'CREATE VIEW home AS SELECT ' || quote_literal(current_schema()) "
    "|| '::text AS name'; END $$\")",
    "row": ITEMS + '\nop.execute("INSERT INTO items (name) VALUES (current_schema())")',
    "default literal": "op.execute(\"DO $$ BEGIN EXECUTE 'CREATE TABLE items (id int, home text DEFAULT ' "
    "|| quote_literal(current_schema()) || ')'; END $$\")",
    "domain": "op.execute(\"DO $$ BEGIN EXECUTE 'CREATE DOMAIN home AS text CHECK (VALUE <> ' "
    "|| quote_literal(current_schema()) || ')'; END $$\")",
    "comment": ITEMS
    + "\nop.execute(\"DO $$ BEGIN EXECUTE 'COMMENT ON TABLE items IS ' || quote_literal(current_schema()); END $$\")",
    # the name transformed: in upper case, with dashes for underscores, or only its last part
    "row in upper case": ITEMS + '\nop.execute("INSERT INTO items (name) VALUES (upper(current_schema()))")',
    "default with dashes": "op.execute(\"DO $$ BEGIN EXECUTE 'CREATE TABLE items (id int, home text DEFAULT ' "
    "|| quote_literal(replace(current_schema(), '_', '-')) || ')'; END $$\")",
    "view of the name's last part": ITEMS + "\nop.execute(\"DO $$ BEGIN EXECUTE 'CREATE VIEW home AS SELECT ' "
    "|| quote_literal(split_part(current_schema(), '_', 3)) || '::text AS name'; END $$\")",
}
SAFE = (
    "op.create_table('items', sa.Column('id', sa.Integer, primary_key=True), sa.Column('name', sa.Text))\n"
    "op.create_table('tags', sa.Column('id', sa.Integer, primary_key=True), "
    "sa.Column('item_id', sa.Integer, sa.ForeignKey('items.id')))\n"
    "op.execute('CREATE VIEW tagged AS SELECT i.name FROM items i JOIN tags t ON t.item_id = i.id')\n"
    "op.execute(\"CREATE FUNCTION item_count() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM items'\")\n"
    'op.execute("CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS '
    "'BEGIN NEW.name := coalesce(NEW.name, current_schema()); RETURN NEW; END'\")\n"
    "op.execute('CREATE TRIGGER items_touch BEFORE INSERT ON items FOR EACH ROW EXECUTE FUNCTION touch()')\n"
    "op.execute(\"ALTER TABLE items ADD CONSTRAINT name_not_empty CHECK (name <> '')\")"
)


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_a_chain_naming_its_schema_in_stored_text_is_refused(
    engine: sa.Engine, chain_builder: ChainBuilder, case: str
) -> None:
    chain_builder.add("r1", UNSAFE[case])
    chain = Chain.load(with_pool_size(chain_builder.ini, "2"))
    refused_fill(engine, chain)

    result = cli(engine, "pool", "fill", config=chain_builder.ini)
    assert result.exit_code == 1 and result.stderr.startswith("Error: the warm pool can't be used")
    assert result.stderr.count("\n") == 1
    assert WorkspaceManager(engine, chain_builder.ini).ensure_detailed("still-built").path == "fast"
    [check] = verify_fast_path(engine, chain, cases=[]).checks  # the pool is configured: checked
    assert check.kind == "pool" and check.differences and "can't be used" in check.differences[0]


def test_what_a_rename_follows_is_safe_and_works_in_the_claimed_project(
    engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    chain_builder.add("r1", SAFE)
    chain = Chain.load(chain_builder.ini)
    assert spares.fill(engine, chain, 1).built == 1
    assert WorkspaceManager(engine, chain_builder.ini, warm_pool=1).ensure_detailed("safe").path == "pool"
    WorkspaceManager(engine, chain_builder.ini).ensure("safe-fresh")
    with engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL search_path TO project_safe"))
        conn.execute(sa.text("INSERT INTO items (id) VALUES (1)"))
        conn.execute(sa.text("INSERT INTO tags (id, item_id) VALUES (1, 1)"))
        assert conn.execute(sa.text("SELECT name FROM tagged")).scalar() == "project_safe"
        assert conn.execute(sa.text("SELECT item_count()")).scalar() == 1
    assert diff(catalog(engine, "project_safe_fresh"), catalog(engine, "project_safe")) == []
    [check] = verify_fast_path(engine, chain, cases=[], pool=True).checks
    assert check.identical


# ------------------------------------------------------------------------------- the CLI
def cli(engine: sa.Engine, *args: str, config: Path = ALEMBIC_INI) -> Result:
    cache.clear()
    url = engine.url.render_as_string(hide_password=False)
    return CliRunner().invoke(main, ["--database-url", url, "-c", str(config), *args], prog_name="workspace-tool")


def test_pool_fill_status_and_drain_from_the_command_line(engine: sa.Engine, chain_builder: ChainBuilder) -> None:
    zero = cli(engine, "pool", "fill")
    assert zero.exit_code == 2 and "the pool size is 0: pass --size N, or set workspace_pool_size = N" in zero.stderr

    filled = cli(engine, "pool", "fill", "--size", "2", "--jobs", "2", "--json")
    assert filled.exit_code == 0, filled.output
    assert json.loads(filled.stdout)["built"] == 2
    report, warning = filled.stderr.splitlines()  # the warning: test_pool_live.py
    assert warning.startswith("Warning: workspace_pool_size is 0")
    assert report.startswith(f"Pool: 2 spare(s) ready at head {HEAD} (target 2); built 2, dropped 0")

    status = cli(engine, "pool", "status")
    assert status.exit_code == 0
    lines = status.stdout.splitlines()
    assert lines[0].split() == ["SCHEMA", "REVISION", "CHAIN", "STATE", "BUILD", "MS", "CREATED", "AT"]
    assert len(lines) == 3 and all(line.startswith(SPARE_PREFIX) for line in lines[1:])
    assert all(line.split()[1:4] == [HEAD, CHAIN.fingerprint, "ready"] for line in lines[1:])
    assert status.stderr == f"Pool: 2 spare(s) ready at head {HEAD} (target 0)\n"
    data = json.loads(cli(engine, "pool", "status", "--json").stdout)
    assert data["counts"]["ready"] == 2 and data["target"] == 0 and len(data["spares"]) == 2

    ini = with_pool_size(chain_builder.copy_main_chain().ini, "1")
    ensured = cli(engine, "ensure", "cli-pool", config=ini)
    assert ensured.exit_code == 0 and ensured.stdout.splitlines()[1].split()[-1] == "pool"  # the PATH column

    drained = cli(engine, "pool", "drain", "--yes")
    assert (drained.exit_code, drained.stderr) == (0, "Dropped 1 spare schema(s).\n")
    assert spare_schemas(engine) == []


# ----------------------------------------------------------------------- faults and load
def test_a_claim_whose_connection_dies_leaves_the_spare_a_spare(pooled: WorkspaceManager, engine: sa.Engine) -> None:
    """Killed while waiting for the project's lock (before the claim), and after the spare was renamed but
    before its commit (its registry row waits on another session's): either way the transaction rolls back,
    the spare is still a spare and there is no project; the rerun claims one."""
    spares_before = spare_rows(engine)
    with engine.connect() as admin:  # holding the project's lock: the claim waits on it
        admin.execute(sa.text("BEGIN"))
        admin.execute(sa.text(LOCK_SQL), {"key": lock_key("project_victim")})
        victim = Victim(lambda: pooled.ensure("victim"))
        victim.start()
        [pid] = waiting_on_advisory(admin, 1, victim)
        admin.execute(sa.text("SELECT pg_terminate_backend(:p, 10000)"), {"p": pid})
        victim.finish()
        admin.rollback()
    assert isinstance(victim.error, DatabaseUnavailable)

    with engine.connect() as admin:  # an uncommitted row of the project: the claim's registry row waits on it
        admin.execute(sa.text("BEGIN"))
        admin.execute(
            sa.text(
                "INSERT INTO project_registry.workspace_config (project_id, schema_name, revision, status, "
                "last_action, last_duration_ms, last_path) VALUES ('victim', 'project_victim', NULL, 'ready', "
                "'create', 0, 'fast')"
            )
        )
        victim = Victim(lambda: pooled.ensure("victim"))
        victim.start()
        waiting = sa.text(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'transactionid' "
            "AND query LIKE '%claim_project%'"
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            admin.execute(sa.text("SELECT pg_stat_clear_snapshot()"))  # inside a transaction it is cached
            if pids := admin.execute(waiting).scalars().all():
                break
            time.sleep(0.02)
        assert len(pids) == 1  # the spare is renamed inside its transaction, not yet committed
        admin.execute(sa.text("SELECT pg_terminate_backend(:p, 10000)"), {"p": pids[0]})
        victim.finish()
        admin.rollback()
    assert isinstance(victim.error, DatabaseUnavailable)
    assert spare_rows(engine) == spares_before == spare_schemas(engine)
    assert not schema_exists(engine, "project_victim") and registry_row(engine, "victim") is None

    assert pooled.ensure_detailed("victim").path == "pool"  # the rerun
    assert len(spare_rows(engine)) == len(spares_before) - 1
    assert assert_consistent(engine) == {"project_victim": HEAD}


def test_threads_claim_each_spare_once_and_build_the_rest(engine: sa.Engine) -> None:
    spares.fill(engine, CHAIN, 6, jobs=2)
    mgr = WorkspaceManager(engine, ALEMBIC_INI, warm_pool=6)
    ids = [f"race-{i:02d}" for i in range(12)]
    results: dict[str, str] = {}
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        for project_id in ids[offset:] + ids[:offset]:
            try:
                result = mgr.ensure_detailed(project_id)
            except BaseException as exc:
                errors.append(exc)
                return
            if result.action == "created":
                results[project_id] = str(result.path)

    threads = [threading.Thread(target=work, args=(i * 3,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert sorted(results) == ids  # each created exactly once
    assert sorted(results.values()) == ["fast"] * 6 + ["pool"] * 6
    assert ready(engine) == 0 and spare_schemas(engine) == []
    assert set(assert_consistent(engine).values()) == {HEAD}
    rows = {p: last_path(engine, p)[1] for p in ids}
    assert rows == results
