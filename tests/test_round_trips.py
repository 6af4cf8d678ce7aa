"""What the library sends on the wire, counted by a proxy (tests/wire.py): the round trips a fleet run
spends per schema, a first ensure's, a warm-pool claim's. Each extra round trip is one more network
latency per schema for every user: these counts are the contract, not a timing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.ext.asyncio import create_async_engine
from support.chains import ITEMS, ChainBuilder, with_options
from support.data import add_rows
from support.db import assert_consistent, catalog, registry_row, registry_state, schema_version
from support.wire_runs import warm_run_queries
from wire import WireRecorder

from workspace_tool import ProjectWorkspaceManager, WorkspaceManager, flavor, fleet, spares
from workspace_tool.chain import Chain
from workspace_tool.cli import main
from workspace_tool.errors import ConfigurationError, MigrationFailed
from workspace_tool.fleet import RunSpec
from workspace_tool.lifecycle.drop import drop_operation
from workspace_tool.lifecycle.exec import exec_operation
from workspace_tool.managers import cache
from workspace_tool.schema.catalog import diff
from workspace_tool.schema.migrate import EnsureResult, Migration, Sending, fast_lane
from workspace_tool.schema.plan import Expected
from workspace_tool.spares.settings import async_claim
from workspace_tool.sql import DEFAULT_LOCK_TIMEOUT_MS
from workspace_tool.urls import async_url


def _upgrade_counting(wire: WireRecorder, chain: Chain, ids: list[str]) -> list[str]:
    engine = sa.create_engine(wire.url)
    try:
        wire.clear()
        report = fleet.upgrade(engine, chain, ids, target="a2", jobs=1, pool=False)
        assert report.counts()["ok"] == len(ids), report.failed
        return wire.queries
    finally:
        engine.dispose()


def test_a_fleet_run_sends_one_round_trip_per_schema(engine: sa.Engine, tiny: Chain, wire: WireRecorder) -> None:
    ids = [f"rt{i}" for i in range(11)]
    assert fleet.provision(engine, tiny, ids, target="a1", jobs=2).ok
    _upgrade_counting(wire, tiny, ids[:1])  # the first run of a chain stores what later runs only read

    two = _upgrade_counting(wire, tiny, ids[1:3])
    ten = _upgrade_counting(wire, tiny, ids[3:])

    assert all(schema_version(engine, f"project_{i}") == "a2" for i in ids)
    batches = [q for q in ten if q.startswith("BEGIN") and "project_rt" in q]
    assert len(batches) == 8  # each schema's whole transaction, one batch
    # the 6 schemas more cost exactly 6 round trips more: nothing but their batches is sent per schema
    assert len(ten) - len(two) == 6, [q for q in ten if q not in batches]
    assert not [q for q in ten if "default_transaction_isolation" in q]


@pytest.mark.parametrize("commit", ["async", "durable"])
def test_each_schemas_batch_is_its_own_plans_byte_for_byte(
    engine: sa.Engine, tiny: Chain, wire: WireRecorder, commit: str
) -> None:
    """The fleet plans a range's batch once and fills in each schema's names: what goes on the wire is what
    planning that schema alone writes (SchemaPlan.batch), for a missing schema and for an existing one; each
    committed without waiting for its flush only with commit="async" (the default)."""
    ids = [f"rb{i}" for i in range(4)]
    counted = sa.create_engine(wire.url)
    try:
        with engine.connect() as conn:
            how = Sending(
                tiny, flavor.read(conn), lock_timeout_ms=DEFAULT_LOCK_TIMEOUT_MS, async_commit=commit == "async"
            )
        for operation, target, expected in (
            (fleet.PROVISION, "a1", Expected(False, None)),
            (fleet.UPGRADE, "a2", Expected(True, "a1")),
        ):
            wire.clear()
            spec = RunSpec(target=target, project_ids=tuple(ids), jobs=2, pool=False, commit=commit)
            assert fleet.run(counted, tiny, operation, spec).ok
            sent = sorted(q for q in wire.queries if "project_rb" in q and "ISOLATION LEVEL" in q)
            planned = []
            for pid in ids:
                plan = fast_lane(how, Migration(pid, f"project_{pid}", target, operation), expected)
                assert plan is not None and plan.batchable
                planned.append(plan.batch())
            assert sent == sorted(planned)
            assert all(("\nSET LOCAL synchronous_commit = off;\n" in q) == (commit == "async") for q in sent)
    finally:
        counted.dispose()


def test_a_fleet_run_reads_no_version_the_registry_already_tells(
    engine: sa.Engine, tiny: Chain, wire: WireRecorder
) -> None:
    ids = [f"rv{i}" for i in range(6)]
    assert fleet.provision(engine, tiny, ids, target="a1", jobs=2).ok
    assert fleet.upgrade(engine, tiny, ids[:2], target="a2", jobs=1).ok

    queries = _upgrade_counting(wire, tiny, ids[2:])  # the registry says a1: each batch's guard checks it

    assert all(schema_version(engine, f"project_{i}") == "a2" for i in ids)
    assert not [q for q in queries if ".alembic_version" in q and not q.startswith("BEGIN")]
    # at the target by the registry's word: confirmed by reading the schemas (a stale row must not skip one)
    engine_counted = sa.create_engine(wire.url)
    try:
        wire.clear()
        report = fleet.upgrade(engine_counted, tiny, ids, target="a2", jobs=1, pool=False)
    finally:
        engine_counted.dispose()
    assert report.counts()["skipped"] == len(ids)
    assert [q for q in wire.queries if ".alembic_version" in q]


# ------------------------------------------------------------------ exec and bulk drop
@pytest.mark.parametrize("what", ["exec", "drop"])
def test_exec_and_bulk_drop_send_one_round_trip_per_schema(
    engine: sa.Engine, tiny: Chain, wire: WireRecorder, what: str
) -> None:
    """Each schema's transaction (the lock, the guard, the search_path and the SQL; or the drop of its schema
    and its registry row) is one query: what a script running the same SQL by hand would send."""
    ids = [f"lc{i}" for i in range(8)]
    assert fleet.provision(engine, tiny, ids, jobs=2).ok
    operation = exec_operation("INSERT INTO items (name) VALUES (current_schema())")
    if what == "drop":
        operation = drop_operation()
    two = warm_run_queries(wire, tiny, operation, ids[:2])
    six = warm_run_queries(wire, tiny, operation, ids[2:])

    per_schema = [q for q in six if "project_lc" in q]
    assert len(per_schema) == 6, per_schema
    assert len(six) - len(two) == 4, [q for q in six if q not in per_schema]  # nothing else per schema
    assert not [q for q in six if "default_transaction_isolation" in q]
    if what == "exec":
        for project_id in ids:
            with engine.connect() as conn:
                names = conn.execute(sa.text(f"SELECT name FROM project_{project_id}.items")).scalars().all()
            assert names == [f"project_{project_id}"]
    else:
        assert assert_consistent(engine) == {}
        assert all(registry_row(engine, p) is None for p in ids)


# ------------------------------------------------------------------ a first ensure
@contextmanager
def manager_on_the_wire(wire: WireRecorder, config_path: Path) -> Iterator[WorkspaceManager]:
    """A manager whose every query passes ``wire``, its registry made; the wire cleared before it is yielded."""
    engine = sa.create_engine(wire.url)
    try:
        mgr = WorkspaceManager(engine, config_path)
        mgr.bootstrap()
        wire.clear()
        yield mgr
    finally:
        engine.dispose()


@pytest.fixture
def counted_manager(wire: WireRecorder, tiny: Chain) -> Iterator[WorkspaceManager]:
    with manager_on_the_wire(wire, tiny.config_path) as mgr:
        mgr.ensure("warm-up")  # the engine's first connect
        yield mgr


def test_a_first_ensure_is_one_round_trip(
    engine: sa.Engine, counted_manager: WorkspaceManager, wire: WireRecorder
) -> None:
    wire.clear()
    result = counted_manager.ensure_detailed("newcomer")
    sent = wire.queries
    assert (result.action, result.to_revision, result.path) == ("created", "a2", "fast")
    assert len(sent) == 1, sent  # lock, CREATE SCHEMA, the chain, the version, the registry row: one query
    assert not sent[0].startswith("BEGIN") and "\nCOMMIT;" not in sent[0]  # one implicit transaction
    assert schema_version(engine, "project_newcomer") == "a2"
    assert tuple(registry_state(engine, "newcomer")) == ("a2", "ready", None)
    assert assert_consistent(engine)["project_newcomer"] == "a2"


def test_a_first_ensure_of_an_existing_schema_changes_nothing_and_takes_the_careful_path(
    engine: sa.Engine, counted_manager: WorkspaceManager, wire: WireRecorder
) -> None:
    counted_manager.ensure("already")
    add_rows(engine, "already", "kept")
    cache.invalidate_chain(counted_manager.chain.config_path)  # as a new process: it doesn't know the schema
    wire.clear()
    result = counted_manager.ensure_detailed("already")
    assert result.action == "current"
    assert len(wire.queries) <= 5, wire.queries  # the guess (1), then BEGIN, lock + read, version, COMMIT
    assert "CREATE SCHEMA" in wire.queries[0]  # the guess is one round trip...
    assert wire.errors == []  # ...that the server answers without an error (its log has no ERROR line)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT name FROM project_already.items")).scalars().all() == ["kept"]
    assert assert_consistent(engine)["project_already"] == "a2"


def test_a_restarted_application_ensuring_its_existing_projects_makes_the_server_log_no_error(
    engine: sa.Engine, wire: WireRecorder, tiny: Chain
) -> None:
    """After every deploy each existing project's first ensure in each process is a guess that it is new:
    the server must not answer (and log) an ERROR for each (a DBA's alerting counts them)."""
    ids = [f"deployed{i}" for i in range(3)]
    first = WorkspaceManager(engine, tiny.config_path)
    for project_id in ids:
        first.ensure(project_id)
    before = {i: registry_state(engine, i) for i in ids}
    cache.clear()
    counted = sa.create_engine(wire.url)
    try:
        restarted = WorkspaceManager(counted, tiny.config_path)  # a new process: nothing known
        wire.clear()
        actions = [restarted.ensure_detailed(i).action for i in ids]
        errors = wire.errors
    finally:
        counted.dispose()
    assert actions == ["current"] * 3
    assert errors == [], errors
    assert {i: registry_state(engine, i) for i in ids} == before  # nothing rewritten
    assert all(schema_version(engine, f"project_{i}") == "a2" for i in ids)


def test_an_existing_project_ensured_by_a_pooled_manager_makes_the_server_log_no_error(
    engine: sa.Engine, wire: WireRecorder, tiny: Chain
) -> None:
    """The warm pool's first ensure: the claim finds the schema exists (no spare taken), then the build's
    guess finds it too: neither answers with an error."""
    WorkspaceManager(engine, tiny.config_path).ensure("settled")
    spares.fill(engine, tiny, 1)
    cache.clear()
    counted = sa.create_engine(wire.url)
    try:
        pooled = WorkspaceManager(counted, tiny.config_path, warm_pool=1)
        wire.clear()
        result = pooled.ensure_detailed("settled")
        errors = wire.errors
    finally:
        counted.dispose()
    assert result.action == "current"
    assert errors == [], errors
    with engine.connect() as conn:
        ready = conn.execute(sa.text("SELECT count(*) FROM project_registry.spare_schemas WHERE ready")).scalar()
    assert ready == 1  # the spare is still there
    assert assert_consistent(engine)["project_settled"] == "a2"


def test_two_threads_racing_to_create_a_project_make_the_server_log_no_error(
    engine: sa.Engine, wire: WireRecorder, tiny: Chain
) -> None:
    """Both succeed with one schema: the loser of the race waits for the schema's lock, then finds the schema
    the winner made, and the server logs no error."""
    counted = sa.create_engine(wire.url)
    try:
        WorkspaceManager(counted, tiny.config_path).ensure("warm-up")
        managers = [WorkspaceManager(counted, tiny.config_path) for _ in range(2)]
        wire.clear()
        for round_ in range(4):
            cache.clear()
            barrier = threading.Barrier(2)

            def ensure(i: int, project: str = f"race{round_}", barrier: threading.Barrier = barrier) -> str:
                barrier.wait()
                return managers[i].ensure_detailed(project).action

            with ThreadPoolExecutor(2) as pool:
                actions = sorted(pool.map(ensure, range(2)))
            assert actions in (["created", "current"], ["created", "created"]), actions
            assert assert_consistent(engine)[f"project_race{round_}"] == "a2"
        errors = wire.errors
    finally:
        counted.dispose()
    assert errors == [], errors


def test_an_ensure_racing_a_drop_leaves_the_schema_and_its_row_together(engine: sa.Engine, tiny: Chain) -> None:
    creator, dropper = WorkspaceManager(engine, tiny.config_path), WorkspaceManager(engine, tiny.config_path)
    creator.ensure("bootstrapped")
    for _ in range(8):
        dropper.drop("raced")
        cache.clear()
        barrier = threading.Barrier(2)

        def create(barrier: threading.Barrier = barrier) -> object:
            barrier.wait()
            return creator.ensure_detailed("raced").action

        def drop(barrier: threading.Barrier = barrier) -> object:
            barrier.wait()
            return dropper.drop("raced")

        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(create), pool.submit(drop)]
            assert futures[0].result() == "created"
            futures[1].result()
        consistent = assert_consistent(engine)  # a schema with its row at a2, or neither
        assert consistent.get("project_raced", "a2") == "a2"


# ------------------------------------------------------------------ a claim from the warm pool
def test_a_first_ensure_from_the_warm_pool_is_one_round_trip_and_a_fresh_build_when_it_is_empty(
    engine: sa.Engine, wire: WireRecorder, tiny: Chain
) -> None:
    counted = sa.create_engine(wire.url)
    try:
        WorkspaceManager(counted, tiny.config_path).ensure("built")  # the registry; a fresh build to compare
        spares.fill(engine, tiny, 1)
        pooled = WorkspaceManager(counted, tiny.config_path, warm_pool=1)
        wire.clear()
        claimed = pooled.ensure_detailed("claimed")
        sent = wire.queries
        wire.clear()
        built = pooled.ensure_detailed("no-spare-left")
        fallback = wire.queries
    finally:
        counted.dispose()
    assert claimed.path == "pool" and len(sent) == 1, sent  # lock, claim, rename, registry row: one statement
    assert "claim_project(" in sent[0] and "pg_advisory_xact_lock" not in sent[0]
    assert diff(catalog(engine, "project_built"), catalog(engine, "project_claimed")) == []
    assert built.path == "fast" and len(fallback) == 2, fallback  # no spare: nothing changed, then the build
    assert assert_consistent(engine) == {f"project_{p}": "a2" for p in ("built", "claimed", "no_spare_left")}


def _claimed_on_one_connection(
    engine: sa.Engine, wire: WireRecorder, chain: Chain, after: str, **engine_options: str
) -> tuple[EnsureResult, list[str], object, bool]:
    """A first ensure claiming the pool's one spare, through the wire recorder, from an engine of ONE connection
    (``engine_options``: its own): its result, what it sent, ``after`` read on that very connection afterwards,
    and whether that connection was then in autocommit."""
    counted = sa.create_engine(wire.url, pool_size=1, max_overflow=0, **engine_options)
    try:
        WorkspaceManager(counted, chain.config_path).ensure("built")
        spares.fill(engine, chain, 1)
        pooled = WorkspaceManager(counted, chain.config_path, warm_pool=1)
        wire.clear()
        claimed = pooled.ensure_detailed("claimed")
        sent = wire.queries
        with counted.connect() as conn:
            autocommit = bool(conn.connection.dbapi_connection.autocommit)  # type: ignore[union-attr]
            value = conn.execute(sa.text(after)).scalar_one()
    finally:
        counted.dispose()
    return claimed, sent, value, autocommit


@pytest.mark.parametrize("manager", ["sync", "async"])
def test_a_claim_that_fails_on_the_databases_account_is_not_sent_alone_again(
    engine: sa.Engine, wire: WireRecorder, tiny: Chain, manager: str
) -> None:
    """A claim sent alone that fails on the database's account (here the registry's claim_project is gone, as
    in a registry an older workspace-tool left) changes nothing and is not sent alone again: the careful path
    claims the spare in its own transaction. (Sent twice, a claim stuck behind a lock would wait twice, e.g.
    for a role's statement_timeout, before the careful path waited a third time.)"""
    WorkspaceManager(engine, tiny.config_path).ensure("built")  # the registry, bootstrapped once per process
    spares.fill(engine, tiny, 1)
    with engine.begin() as conn:
        conn.execute(
            sa.text("DROP FUNCTION project_registry.claim_project(bigint, text, text, text, text, text, text)")
        )
    if manager == "sync":
        counted = sa.create_engine(wire.url)
        try:
            pooled = WorkspaceManager(counted, tiny.config_path, warm_pool=1)
            wire.clear()
            path = str(pooled.ensure_detailed("claimed").path)
        finally:
            counted.dispose()
    else:

        async def main() -> str:
            aengine = create_async_engine(async_url(wire.url))
            try:
                amgr = ProjectWorkspaceManager(aengine, tiny.config_path, warm_pool=1)
                wire.clear()
                return str((await amgr.ensure_detailed("claimed")).path)
            finally:
                await aengine.dispose()

        path = asyncio.run(main())
    sent = [q for q in wire.queries if "project_claimed" in q]
    assert path == "pool"
    assert sum("claim_project(" in q for q in sent) == 1, sent  # the claim alone, once
    assert sum("claim_spare(" in q for q in sent) == 1, sent  # the careful path's claim
    assert diff(catalog(engine, "project_built"), catalog(engine, "project_claimed")) == []
    assert assert_consistent(engine) == {"project_built": "a2", "project_claimed": "a2"}


@pytest.mark.parametrize("setting", [None, "async", "durable"])
def test_a_claim_is_one_round_trip_committed_as_its_setting_says_leaving_no_setting_behind(
    engine: sa.Engine, wire: WireRecorder, chain_builder: ChainBuilder, setting: str | None
) -> None:
    """workspace_pool_claim_commit = async, the default: the claim's own transaction commits without waiting
    for its WAL flush (SET LOCAL, in the same round trip); durable: as the server's synchronous_commit says
    (no SET LOCAL of its own). Either way the session's synchronous_commit is untouched after it (safe
    through a transaction pooler), and the claimed project is what a fresh build makes."""
    chain_builder.add("a1", ITEMS, 'op.drop_table("items")')
    options = {} if setting is None else {"workspace_pool_claim_commit": setting}
    chain = Chain.load(with_options(chain_builder.ini, **options))
    claimed, sent, after, _ = _claimed_on_one_connection(engine, wire, chain, "SHOW synchronous_commit")
    assert claimed.path == "pool" and len(sent) == 1, sent
    assert "claim_project(" in sent[0]
    if setting == "durable":
        assert "synchronous_commit" not in sent[0]
    else:
        assert "SET LOCAL synchronous_commit = off;" in sent[0]
    assert after == "on"
    assert diff(catalog(engine, "project_built"), catalog(engine, "project_claimed")) == []


@pytest.mark.parametrize("level", ["AUTOCOMMIT", "REPEATABLE READ", "SERIALIZABLE"])
def test_a_claim_on_an_engine_at_any_isolation_level_runs_read_committed_and_leaves_the_level_as_it_was(
    engine: sa.Engine, wire: WireRecorder, tiny: Chain, level: str
) -> None:
    """The sync manager sends a first ensure's claim on a connection as the engine hands it out, not pinned to
    READ COMMITTED as the careful path's are (WorkspaceManager._claim_first): the claim's one round trip sets
    READ COMMITTED for its own transaction (its schema check must see what committed while it waited for the
    lock), and the connection goes back to the pool at the engine's level."""
    claimed, sent, seen, autocommit = _claimed_on_one_connection(
        engine, wire, tiny, "SHOW transaction_isolation", isolation_level=level
    )
    assert claimed.path == "pool" and len(sent) == 1, sent
    assert sent[0].startswith("SET TRANSACTION ISOLATION LEVEL READ COMMITTED;\n") and "claim_project(" in sent[0]
    assert (autocommit, seen) == ((True, "read committed") if level == "AUTOCOMMIT" else (False, level.lower()))
    assert diff(catalog(engine, "project_built"), catalog(engine, "project_claimed")) == []


def _async_claimed_on_one_connection(
    wire: WireRecorder, chain: Chain, after: str, **engine_options: str
) -> tuple[str, list[str], str]:
    """ProjectWorkspaceManager's first ensure claiming a spare (after a warm-up claim: the engine's first
    connect), through the wire recorder, from an async engine of ONE connection (``engine_options``: its own):
    the path, what it sent, and ``after`` read on that very connection afterwards."""

    async def main() -> tuple[str, list[str], str]:
        aengine = create_async_engine(async_url(wire.url), pool_size=1, max_overflow=0, **engine_options)
        try:
            amgr = ProjectWorkspaceManager(aengine, chain.config_path, warm_pool=2)
            await amgr.ensure("warm-up")
            wire.clear()
            claimed = await amgr.ensure_detailed("claimed")
            sent = wire.queries
            async with aengine.connect() as conn:
                value = (await conn.execute(sa.text(after))).scalar_one()
            return str(claimed.path), sent, str(value)
        finally:
            await aengine.dispose()

    return asyncio.run(main())


@pytest.mark.parametrize("level", ["AUTOCOMMIT", "REPEATABLE READ"])
def test_the_async_managers_claim_on_an_engine_at_any_isolation_level_leaves_the_level_as_it_was(
    engine: sa.Engine, wire: WireRecorder, tiny: Chain, level: str
) -> None:
    """asyncpg: the claim goes on a connection not pinned to READ COMMITTED either (its SQL sets the level for
    its own transaction); one round trip, and the connection goes back to the pool at the engine's level."""
    WorkspaceManager(engine, tiny.config_path).ensure("built")
    spares.fill(engine, tiny, 2)
    path, sent, seen = _async_claimed_on_one_connection(wire, tiny, "SHOW transaction_isolation", isolation_level=level)
    assert path == "pool" and len(sent) == 1, sent
    assert sent[0].startswith("SET TRANSACTION ISOLATION LEVEL READ COMMITTED;") and "claim_project(" in sent[0]
    assert seen == ("read committed" if level == "AUTOCOMMIT" else level.lower())
    assert diff(catalog(engine, "project_built"), catalog(engine, "project_claimed")) == []


@pytest.mark.parametrize("setting", [None, "durable"])
def test_the_async_managers_claim_is_the_same_round_trip_committed_as_its_setting_says(
    engine: sa.Engine, wire: WireRecorder, chain_builder: ChainBuilder, setting: str | None
) -> None:
    """asyncpg (ProjectWorkspaceManager): the claim a first ensure sends is the sync manager's, one round trip
    (its isolation level, the commit its setting asks for, the lock taken by the claim), leaving the session's
    synchronous_commit as it was (through a pooler, the next client's)."""
    chain_builder.add("a1", ITEMS, 'op.drop_table("items")')
    options = {} if setting is None else {"workspace_pool_claim_commit": setting}
    chain = Chain.load(with_options(chain_builder.ini, **options))
    WorkspaceManager(engine, chain.config_path).ensure("built")
    spares.fill(engine, chain, 2)
    path, sent, after = _async_claimed_on_one_connection(wire, chain, "SHOW synchronous_commit")
    assert path == "pool" and len(sent) == 1, sent
    assert "claim_project(" in sent[0] and sent[0].startswith("SET TRANSACTION ISOLATION LEVEL READ COMMITTED;")
    assert ("SET LOCAL synchronous_commit = off;" in sent[0]) is (setting is None)
    assert after == "on"
    assert diff(catalog(engine, "project_built"), catalog(engine, "project_claimed")) == []
    with engine.connect() as conn:  # the registry row a build writes, but for its path
        rows = conn.execute(
            sa.text(
                "SELECT project_id, schema_name, revision, status, last_action, last_path, last_error, "
                "last_duration_ms > 0 FROM project_registry.workspace_config WHERE project_id IN ('built', 'claimed') "
                "ORDER BY project_id"
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        ("built", "project_built", "a1", "ready", "create", "fast", None, True),
        ("claimed", "project_claimed", "a1", "ready", "create", "pool", None, True),
    ]


def test_the_async_managers_first_ensure_finding_no_spare_builds_under_the_schemas_lock(
    engine: sa.Engine, wire: WireRecorder, tiny: Chain
) -> None:
    """asyncpg, the warm pool on and empty: the claim changed nothing; the transaction that then builds the
    schema takes the schema's lock before it looks (another ensure of the project can't build it too)."""
    WorkspaceManager(engine, tiny.config_path).ensure("built")

    async def main() -> tuple[str, list[str]]:
        aengine = create_async_engine(async_url(wire.url), poolclass=sa.pool.NullPool)  # prepares afresh
        try:
            amgr = ProjectWorkspaceManager(aengine, tiny.config_path, warm_pool=1)
            await amgr.bootstrap()
            wire.clear()
            result = await amgr.ensure_detailed("no-spare")
            return str(result.path), wire.queries
        finally:
            await aengine.dispose()

    path, sent = asyncio.run(main())
    assert path == "fast"
    created = next(i for i, q in enumerate(sent) if 'CREATE SCHEMA "project_no_spare"' in q)
    began = max(i for i, q in enumerate(sent[:created]) if q.startswith("BEGIN"))
    assert any("pg_advisory_xact_lock" in q for q in sent[began:created]), sent
    assert assert_consistent(engine)["project_no_spare"] == "a2"


def test_a_bad_claim_commit_setting_is_one_line(chain_builder: ChainBuilder) -> None:
    chain_builder.add("a1", ITEMS, 'op.drop_table("items")')
    chain = Chain.load(with_options(chain_builder.ini, workspace_pool_claim_commit="sometimes"))
    with pytest.raises(
        ConfigurationError, match=r"workspace_pool_claim_commit = 'sometimes' .*async \(the default\) or durable"
    ):
        async_claim(chain)


def test_a_first_ensure_whose_revision_fails_is_reported_by_the_careful_path_and_leaves_nothing(
    engine: sa.Engine, wire: WireRecorder, chain_builder: ChainBuilder
) -> None:
    chain_builder.add("a1", ITEMS, 'op.drop_table("items")').add("a2", 'op.execute("SELECT 1 / 0")')
    chain = Chain.load(chain_builder.ini)
    with manager_on_the_wire(wire, chain.config_path) as mgr:
        with pytest.raises(MigrationFailed) as failed:
            mgr.ensure("doomed")
        sent = wire.queries
    assert "CREATE SCHEMA" in sent[0] and any(q.startswith("BEGIN") for q in sent[1:])  # the guess, then careful
    assert str(failed.value) == "migrating project_doomed failed and was rolled back: division by zero"
    assert assert_consistent(engine) == {}  # no schema, no row


def test_a_first_ensure_of_a_chain_using_the_dollar_quote_tags_it_wraps_its_build_in_is_still_one_round_trip(
    engine: sa.Engine, wire: WireRecorder, chain_builder: ChainBuilder
) -> None:
    """The guess wraps the build in dollar-quoted text: tags the chain's own SQL uses are not chosen."""
    body = "$wst_build$ SELECT 7 $wst_build$; COMMENT ON TABLE items IS $wst_if_missing$ x $wst_if_missing$"
    chain_builder.add("a1", ITEMS, 'op.drop_table("items")').add(
        "a2",
        f'op.execute("CREATE FUNCTION seven() RETURNS int LANGUAGE sql AS {body}")',
        'op.execute("DROP FUNCTION seven()")',
    )
    chain = Chain.load(chain_builder.ini)
    with manager_on_the_wire(wire, chain.config_path) as mgr:
        result = mgr.ensure_detailed("quoted")
        sent, errors = wire.queries, wire.errors
    assert (result.action, result.path, len(sent), errors) == ("created", "fast", 1, []), (sent, errors)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT project_quoted.seven()")).scalar() == 7
        comment = conn.execute(sa.text("SELECT obj_description('project_quoted.items'::regclass)")).scalar()
    assert comment == " x "
    assert assert_consistent(engine)["project_quoted"] == "a2"


def _split_around_batches(queries: list[str]) -> tuple[list[str], list[str]]:
    """What a run sent before its first schema's batch, and after its last one."""
    batches = [i for i, q in enumerate(queries) if q.startswith("BEGIN") and "project_rt" in q]
    assert batches, queries
    return queries[: batches[0]], queries[batches[-1] + 1 :]


def test_upgrade_all_sends_no_redundant_statement_before_its_first_schema_nor_after_its_last(
    engine: sa.Engine, tiny: Chain, wire: WireRecorder
) -> None:
    """`upgrade --all` as a process runs: what it sends before the workers start and after they end is
    wall time with nothing else running. The dialect's first connect asks nothing we don't use (no hstore
    probe), and the registry's version is read once, by the bootstrap (the fleet read and the warm pool's
    check after the run take it from there)."""
    ids = [f"rt{i}" for i in range(6)]
    assert fleet.provision(engine, tiny, ids, target="a1", jobs=2).ok
    args = ["-q", "--database-url", wire.url.render_as_string(hide_password=False), "-c", str(tiny.config_path)]
    warm = CliRunner().invoke(main, [*args, "upgrade", "rt0", "--to", "a2"], catch_exceptions=False)
    assert warm.exit_code == 0, warm.output  # the first run of a chain stores what later runs only read
    wire.clear()

    result = CliRunner().invoke(main, [*args, "upgrade", "--all", "--to", "a2", "--jobs", "1"], catch_exceptions=False)

    assert result.exit_code == 0, result.output
    assert all(schema_version(engine, f"project_{i}") == "a2" for i in ids)
    before, after = _split_around_batches(wire.queries)
    assert not [q for q in before if "hstore" in q], before
    registry_reads = [q for q in wire.queries if "version_num FROM project_registry" in q]
    assert len(registry_reads) == 1, registry_reads  # the bootstrap's, once, for the whole run
    assert not [q for q in before if q.startswith("SELECT has_schema_privilege")], before  # the probe tells
    # the dialect's first connect (6), the bootstrap (4), the fleet read (3) with rt0's version on another
    # connection (5: rt0 is at a2, not taken at the registry's word), the worker's pooled connection pinged
    # by pool_pre_ping (2)
    assert len(before) == 20, "\n".join(before)
    # the one flush of the run's commits (RunSpec.commit async: a transaction that takes an id and commits),
    # the reference's check (one read of what its key depends on, then whether it is stored) and the warm
    # pool's, each on a pooled connection pinged first (5, 6, 6): neither the registry nor the extension
    # (the bootstrap's probe checked both) is asked about again
    assert not [q for q in after if "pg_depend" in q or ("to_regclass" in q and "reference_catalog" in q)], after
    assert after[:5] == [
        "SELECT 1",
        "SET default_transaction_isolation TO DEFAULT",
        "BEGIN ISOLATION LEVEL READ COMMITTED",
        "SELECT txid_current()",
        "COMMIT",
    ], after
    assert len(after) == 17, "\n".join(after)
