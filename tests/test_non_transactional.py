"""Revisions that can't run in a transaction (issue 14, section 3): CREATE INDEX CONCURRENTLY and the like.

A revision says so with ``workspace_transactional = False`` or by using Alembic's ``autocommit_block()``.
It runs for each schema outside the schema's transactions (each statement on its own) under the schema's
session-level lock; what is transactional before and after it in the range still runs in transactions,
each recording the revision it reaches. A concurrent index build under a live writer never blocks it;
a failed build leaves the schema at the revision before, with a one-line error naming the invalid index
left, and a rerun copes with it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from support.chains import ITEMS, ChainBuilder
from support.cli import assert_one_line_error, lint, psql, run_alembic, run_cli
from support.concurrency import GATE, WAIT, Gate, Victim, waiting_on_advisory
from support.db import assert_consistent, registry_row, registry_state, schema_version

from workspace_tool import ProjectWorkspaceManager, WorkspaceManager, drift, fleet, transactions
from workspace_tool.authoring import create_revision
from workspace_tool.chain import Chain
from workspace_tool.chain.plan import StepKind
from workspace_tool.errors import NonTransactionalFailed
from workspace_tool.flavor import Flavor
from workspace_tool.registry import bootstrap
from workspace_tool.schema.catalog import diff, snapshot
from workspace_tool.schema.migrate import Migration, Sending, migrate
from workspace_tool.schema.operation import Action
from workspace_tool.urls import async_url
from workspace_tool.verification import verify_fast_path

FLAG = "workspace_transactional = False\n"
CONCURRENT = """
with op.get_context().autocommit_block():
    op.create_index("ix_items_name", "items", ["name"], postgresql_concurrently=True)
"""
DROP_CONCURRENT = """
with op.get_context().autocommit_block():
    op.drop_index("ix_items_name", table_name="items", postgresql_concurrently=True)
"""
# The same, declared by the module-level flag instead (no autocommit_block), and unique.
UNIQUE_CONCURRENT = 'op.create_index("ux_items_name", "items", ["name"], unique=True, postgresql_concurrently=True)'
DROP_UNIQUE_CONCURRENT = 'op.drop_index("ux_items_name", table_name="items", postgresql_concurrently=True)'
# Waits on the test's gate (an advisory lock held for that statement only: it runs in autocommit) first.
GATED = f'op.execute("SELECT pg_advisory_xact_lock({GATE})")\n' + UNIQUE_CONCURRENT


def chain_with(builder: ChainBuilder, upgrade: str, downgrade: str, extra: str = "") -> Chain:
    """r1 items, r2 a column (transactional), r3 the given revision, r4 another column (transactional)."""
    builder.add("r1", ITEMS, 'op.drop_table("items")')
    builder.add("r2", 'op.add_column("items", sa.Column("note", sa.Text))', 'op.drop_column("items", "note")')
    builder.add("r3", upgrade, downgrade, extra=extra)
    builder.add("r4", 'op.add_column("items", sa.Column("extra", sa.Integer))', 'op.drop_column("items", "extra")')
    return Chain.load(builder.ini)


def indexes(engine: sa.Engine, schema: str) -> dict[str, bool]:
    """The schema's indexes on items: name -> valid."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
                "WHERE n.nspname = :s AND t.relname = 'items' AND NOT i.indisprimary"
            ),
            {"s": schema},
        ).all()
    return {name: valid for name, valid in rows}


def fill(engine: sa.Engine, schema: str, rows: int, *, duplicate: bool = False) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(f"INSERT INTO {schema}.items (name) SELECT 'n' || g FROM generate_series(1, {rows}) g"))
        if duplicate:
            conn.execute(sa.text(f"INSERT INTO {schema}.items (name) VALUES ('twice'), ('twice')"))


def scratch_schemas(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'workspace\\_verify\\_%' "
                    "OR nspname LIKE 'workspace\\_drift\\_%' OR nspname LIKE 'project\\_autogen\\_%'"
                )
            ).scalars()
        )


# ------------------------------------------------------------------------------------ planning
@pytest.mark.parametrize(
    ("upgrade", "downgrade", "extra"),
    [(CONCURRENT, DROP_CONCURRENT, ""), (UNIQUE_CONCURRENT, DROP_UNIQUE_CONCURRENT, FLAG)],
    ids=["autocommit_block", "module-flag"],
)
def test_a_revision_that_cant_run_in_a_transaction_is_a_step_of_its_own(
    chain_builder: ChainBuilder, upgrade: str, downgrade: str, extra: str
) -> None:
    chain = chain_with(chain_builder, upgrade, downgrade, extra)

    up = chain.plan(None, "r4")
    assert [(s.kind, s.from_rev, s.to_rev) for s in up.steps] == [
        (StepKind.COMPILED, None, "r2"),
        (StepKind.NON_TRANSACTIONAL, "r2", "r3"),  # compiled: autocommit_block renders offline
        (StepKind.COMPILED, "r3", "r4"),
    ]
    assert up.steps[1].statements[0].startswith("CREATE ") and "INDEX CONCURRENTLY" in up.steps[1].statements[0]
    assert up.path == "fast"
    down = chain.plan("r4", "r1")
    assert [(s.kind, s.from_rev, s.to_rev) for s in down.steps] == [
        (StepKind.COMPILED, "r4", "r3"),
        (StepKind.NON_TRANSACTIONAL, "r3", "r2"),
        (StepKind.COMPILED, "r2", "r1"),
    ]
    online = chain.plan(None, "r4", online=True)  # the reference verify-fast-path compares with
    assert [s.kind for s in online.steps] == [
        StepKind.ONLINE,
        StepKind.ONLINE_NON_TRANSACTIONAL,
        StepKind.ONLINE,
    ]
    assert [chain.runs_outside_transaction(r) for r in chain.revisions] == [False, False, True, False]


# ---------------------------------------------------------------------- a live writer, many schemas
class Writer(threading.Thread):
    """Inserts into and updates each schema's items in turn, in autocommit, until stopped, with the
    run's lock_timeout: a wait for a lock longer than that fails its statement (and is kept)."""

    def __init__(self, engine: sa.Engine, schemas: list[str], lock_timeout_ms: int) -> None:
        super().__init__(daemon=True)
        self.engine, self.schemas, self.lock_timeout_ms = engine, schemas, lock_timeout_ms
        self.writes = 0
        self.errors: list[str] = []
        self.longest_ms = 0.0  # printed, not asserted
        self.stopping = threading.Event()

    def run(self) -> None:
        with self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql(f"SET lock_timeout = '{self.lock_timeout_ms}ms'")
            i = 0
            while not self.stopping.is_set():
                schema = self.schemas[i % len(self.schemas)]
                i += 1
                started = time.perf_counter()
                try:
                    conn.exec_driver_sql(f"INSERT INTO {schema}.items (name) VALUES ('w{i}')")
                    conn.exec_driver_sql(f"UPDATE {schema}.items SET name = name || '' WHERE id = {i % 500 + 1}")
                except Exception as exc:
                    self.errors.append(f"{schema}: {exc}")
                    continue
                self.longest_ms = max(self.longest_ms, (time.perf_counter() - started) * 1000)
                self.writes += 1

    def wait_for(self, writes: int) -> None:
        deadline = time.monotonic() + WAIT
        while self.writes < writes and time.monotonic() < deadline and not self.errors:
            time.sleep(0.005)
        assert self.writes >= writes, (self.writes, self.errors)

    def stop(self) -> None:
        self.stopping.set()
        self.join(WAIT)


def waiting_build(engine: sa.Engine) -> int:
    """Backends waiting for another transaction to end (a concurrent index build waits so for old
    snapshots): their number, once there is one."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            waiting = conn.execute(
                sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'virtualxid' AND NOT granted")
            ).scalar_one()
        if waiting:
            return int(waiting)
        time.sleep(0.01)
    raise AssertionError("no index build ever waited")


def test_a_concurrent_index_build_never_blocks_a_writer_and_every_schema_ends_with_a_valid_index(
    engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    chain = chain_with(chain_builder, CONCURRENT, DROP_CONCURRENT)
    ids = ["live1", "live2", "live3", "live4"]
    schemas = [f"project_{p}" for p in ids]
    fleet.provision(engine, chain, ids, target="r1")
    for schema in schemas:
        fill(engine, schema, 20_000)
    lock_timeout_ms = fleet.DEFAULT_LOCK_TIMEOUT_MS
    writer = Writer(engine, schemas, lock_timeout_ms)
    writer.start()
    writer.wait_for(10)
    # An old snapshot (a report in REPEATABLE READ, on another table): each build waits for it before it
    # completes, which keeps the builds in progress while the test watches the writer.
    reader = engine.connect()
    reader.exec_driver_sql("BEGIN ISOLATION LEVEL REPEATABLE READ")
    reader.exec_driver_sql("SELECT count(*) FROM pg_class")
    try:
        run = Victim(lambda: fleet.upgrade(engine, chain, jobs=2, lock_timeout_ms=lock_timeout_ms))
        run.start()
        waiting_build(engine)
        writer.wait_for(writer.writes + 50)  # the writer goes on while an index is being built on its tables
    finally:
        reader.rollback()
        reader.close()
    run.finish()
    writer.wait_for(writer.writes + 10)
    writer.stop()

    assert run.error is None
    report = run.result
    assert isinstance(report, fleet.FleetReport)
    assert [r.status for r in report.results] == [fleet.OK] * len(ids), report.results
    assert writer.errors == []  # never blocked for longer than the lock timeout
    print(f"writer: {writer.writes} writes, longest {writer.longest_ms:.0f} ms (lock timeout {lock_timeout_ms} ms)")
    for schema in schemas:
        assert indexes(engine, schema) == {"ix_items_name": True}, schema
        assert schema_version(engine, schema) == "r4"
    assert assert_consistent(engine) == dict.fromkeys(schemas, "r4")


# ------------------------------------------------------------------------------------ failures
def test_a_failed_build_leaves_the_schema_at_the_revision_before_and_a_rerun_copes(
    engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    chain = chain_with(chain_builder, UNIQUE_CONCURRENT, DROP_UNIQUE_CONCURRENT, FLAG)
    fleet.provision(engine, chain, ["good", "dup"], target="r1")
    fill(engine, "project_good", 100)
    fill(engine, "project_dup", 100, duplicate=True)

    report = fleet.upgrade(engine, chain)  # r1 -> r2 (a transaction), r3 (outside one), r4 (a transaction)

    by_id = {r.project_id: r for r in report.results}
    assert by_id["good"].status == fleet.OK and schema_version(engine, "project_good") == "r4"
    assert indexes(engine, "project_good") == {"ux_items_name": True}
    failed = by_id["dup"]
    assert failed.status == fleet.FAILED
    assert failed.error is not None
    for fragment in (
        "r2 -> r3, which runs outside a transaction",
        "Key (name)=(twice) is duplicated",
        "project_dup stays at revision r2",
        "invalid index(es) the failed build left: ux_items_name",
        'DROP INDEX CONCURRENTLY "project_dup"."ux_items_name"',
    ):
        assert fragment in failed.error, failed.error
    assert schema_version(engine, "project_dup") == "r2"  # the transaction before it committed
    assert tuple(registry_state(engine, "dup")) == ("r2", "failed", failed.error)
    assert indexes(engine, "project_dup") == {"ux_items_name": False}
    assert_consistent(engine)  # every registry row names its schema's revision

    # An invalid index the revision doesn't name is not its to drop.
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        with pytest.raises(sa.exc.IntegrityError):
            conn.exec_driver_sql("CREATE UNIQUE INDEX CONCURRENTLY ux_someone_elses ON project_dup.items (name)")
        conn.exec_driver_sql("DELETE FROM project_dup.items WHERE name = 'twice'")  # the data fixed

    again = fleet.upgrade(engine, chain)

    assert [(r.project_id, r.status, r.from_revision) for r in again.results] == [
        ("dup", fleet.OK, "r2"),
        ("good", fleet.SKIPPED, "r4"),
    ]
    assert indexes(engine, "project_dup") == {"ux_items_name": True, "ux_someone_elses": False}
    assert registry_state(engine, "dup")[:2] == ("r4", "ready")

    back = fleet.downgrade(engine, chain, target="r1")  # DROP INDEX CONCURRENTLY, outside a transaction

    assert {r.status for r in back.results} == {fleet.OK}
    assert indexes(engine, "project_good") == {}
    assert assert_consistent(engine) == {"project_good": "r1", "project_dup": "r1"}


def test_a_build_that_waits_longer_than_the_lock_timeout_is_retried_then_reported(
    engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    chain = chain_with(chain_builder, CONCURRENT, DROP_CONCURRENT)
    fleet.provision(engine, chain, ["slow"], target="r1")
    fill(engine, "project_slow", 100)
    reader = engine.connect()  # an old snapshot the build waits for, held through the run
    reader.exec_driver_sql("BEGIN ISOLATION LEVEL REPEATABLE READ")
    reader.exec_driver_sql("SELECT count(*) FROM pg_class")
    try:
        report = fleet.upgrade(engine, chain, lock_timeout_ms=200, retries=1)
    finally:
        reader.rollback()
        reader.close()

    (result,) = report.results
    assert (result.status, result.attempts) == (fleet.FAILED, 2)  # the lock timeout was retried once
    assert result.error is not None and result.error.startswith("lock timeout (200 ms, 2 attempts): ")
    assert "project_slow stays at revision r2, with the invalid index(es) the failed build left: ix_items_name" in (
        result.error
    )
    assert schema_version(engine, "project_slow") == "r2"
    assert indexes(engine, "project_slow") == {"ix_items_name": False}

    again = fleet.upgrade(engine, chain, lock_timeout_ms=200)

    assert [r.status for r in again.results] == [fleet.OK]
    assert indexes(engine, "project_slow") == {"ix_items_name": True}
    assert assert_consistent(engine) == {"project_slow": "r4"}


def build_killed_while_it_waits(
    engine: sa.Engine, work: Callable[[], object], before_kill: Callable[[], object] = lambda: None
) -> Victim:
    """Run ``work`` while an old snapshot makes its concurrent index build wait (the index already made,
    INVALID), terminate the building backend then (a lost connection), and let the snapshot go."""
    reader = engine.connect()  # an old snapshot the build waits for
    reader.exec_driver_sql("BEGIN ISOLATION LEVEL REPEATABLE READ")
    reader.exec_driver_sql("SELECT count(*) FROM pg_class")
    victim = Victim(work)
    try:
        victim.start()
        deadline = time.monotonic() + WAIT
        with engine.connect() as admin:
            while True:
                pid = admin.execute(
                    sa.text(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                        "AND query LIKE 'CREATE %INDEX CONCURRENTLY%' AND wait_event_type = 'Lock' "
                        "AND wait_event = 'virtualxid'"
                    )
                ).scalar()
                admin.rollback()
                if pid is not None:
                    break
                assert time.monotonic() < deadline and victim.is_alive(), victim.error
                time.sleep(0.01)
            before_kill()
            assert admin.execute(sa.text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": pid}).scalar()
    finally:
        reader.rollback()
        reader.close()
    victim.finish()
    return victim


def test_a_connection_lost_during_the_build_names_the_index_left_invalid_and_a_rerun_rebuilds_it(
    engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    chain = chain_with(chain_builder, CONCURRENT, DROP_CONCURRENT)
    fleet.provision(engine, chain, ["cut"], target="r1")
    fill(engine, "project_cut", 100)

    victim = build_killed_while_it_waits(engine, lambda: fleet.upgrade(engine, chain, retries=0))

    assert victim.error is None, victim.error
    assert isinstance(victim.result, fleet.FleetReport)
    (result,) = victim.result.results
    assert (result.status, result.connection_lost, result.attempts) == (fleet.FAILED, True, 1)
    assert result.error is not None
    for fragment in (
        "database connection lost (1 attempts): migrating project_cut was cut short in r2 -> r3",
        "which runs outside a transaction: the database connection was lost (",
        "project_cut stays at revision r2, with the invalid index(es) the interrupted build left: ix_items_name",
        "a rerun drops them and builds them again",
    ):
        assert fragment in result.error, result.error
    assert indexes(engine, "project_cut") == {"ix_items_name": False}
    assert tuple(registry_state(engine, "cut")) == ("r2", "failed", result.error)

    again = fleet.upgrade(engine, chain)

    assert [r.status for r in again.results] == [fleet.OK]
    assert indexes(engine, "project_cut") == {"ix_items_name": True}
    assert assert_consistent(engine) == {"project_cut": "r4"}


def test_a_connection_lost_during_the_build_is_retried_and_ensure_names_the_index(
    engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    chain = chain_with(chain_builder, CONCURRENT, DROP_CONCURRENT)
    fleet.provision(engine, chain, ["again", "alone"], target="r1")
    fill(engine, "project_again", 100)

    retried = build_killed_while_it_waits(engine, lambda: fleet.upgrade(engine, chain, ["again"], retries=2))

    assert isinstance(retried.result, fleet.FleetReport)
    (result,) = retried.result.results
    assert (result.status, result.attempts) == (fleet.OK, 2)  # the lost connection was retried
    assert indexes(engine, "project_again") == {"ix_items_name": True}

    manager = WorkspaceManager(engine, chain_builder.ini)
    try:
        killed = build_killed_while_it_waits(engine, lambda: manager.ensure("alone"))
    finally:
        manager.close()
    assert isinstance(killed.error, NonTransactionalFailed) and killed.error.connection_lost
    assert killed.error.invalid_indexes == ("ix_items_name",)
    assert "with the invalid index(es) the interrupted build left: ix_items_name" in str(killed.error)
    assert schema_version(engine, "project_alone") == "r2"


def test_when_it_cant_look_the_index_up_it_names_those_the_step_builds(
    engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    chain = chain_with(chain_builder, UNIQUE_CONCURRENT, DROP_UNIQUE_CONCURRENT, FLAG)
    fleet.provision(engine, chain, ["blind"], target="r1")
    unreachable = threading.Event()  # from the kill on, no new session (the server is gone, say)

    def refuse(*args: object) -> None:
        if unreachable.is_set():
            raise OSError("connection refused: the server is gone")

    sa.event.listen(engine, "checkout", refuse)
    try:
        victim = build_killed_while_it_waits(engine, lambda: fleet.upgrade(engine, chain, retries=0), unreachable.set)
    finally:
        sa.event.remove(engine, "checkout", refuse)

    assert isinstance(victim.result, fleet.FleetReport)
    (result,) = victim.result.results
    assert result.error is not None and result.connection_lost
    assert "the index(es) it builds may be left invalid: ux_items_name (they could not be looked up)" in result.error
    assert indexes(engine, "project_blind") == {"ux_items_name": False}
    assert [r.status for r in fleet.upgrade(engine, chain).results] == [fleet.OK]
    assert indexes(engine, "project_blind") == {"ux_items_name": True}


def test_the_registry_records_the_whole_migrations_duration_not_its_last_parts(
    engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    """r3 sleeps 300 ms outside a transaction; the last part (r3 -> r4) takes milliseconds. What is recorded
    covers the whole migration, so at least the sleep (a lower bound pg_sleep guarantees, not a timing)."""
    chain = chain_with(chain_builder, 'op.execute("SELECT pg_sleep(0.3)")\n' + UNIQUE_CONCURRENT, "pass", FLAG)
    fleet.provision(engine, chain, ["by-fleet", "by-ensure"], target="r1")

    (result,) = fleet.upgrade(engine, chain, ["by-fleet"]).results
    manager = WorkspaceManager(engine, chain_builder.ini)
    ensured = manager.ensure_detailed("by-ensure")
    manager.close()

    fleet_row, ensure_row = registry_row(engine, "by-fleet"), registry_row(engine, "by-ensure")
    assert fleet_row is not None and ensure_row is not None
    assert result.status == fleet.OK and result.ms >= float(fleet_row["last_duration_ms"]) >= 300
    assert ensured.action == Action.UPGRADED and float(ensure_row["last_duration_ms"]) >= 300
    assert ensured.duration_ms == float(ensure_row["last_duration_ms"])  # the result says what is recorded


def test_ensure_says_in_one_line_where_the_schema_stays(
    engine: sa.Engine, chain_builder: ChainBuilder, url_string: str
) -> None:
    chain = chain_with(chain_builder, UNIQUE_CONCURRENT, DROP_UNIQUE_CONCURRENT, FLAG)
    fleet.provision(engine, chain, ["dup"], target="r2")
    fill(engine, "project_dup", 10, duplicate=True)

    result = run_cli("--database-url", url_string, "-c", str(chain_builder.ini), "ensure", "dup")

    assert_one_line_error(result, "r2 -> r3", "stays at revision r2", "ux_items_name", "run it again")
    assert schema_version(engine, "project_dup") == "r2"
    assert registry_state(engine, "dup")[:2] == ("r2", "ready")  # what the schema is: at r2
    manager = WorkspaceManager(engine, chain_builder.ini)
    with pytest.raises(NonTransactionalFailed) as raised:
        manager.ensure("dup")
    manager.close()
    assert raised.value.reached == "r2" and raised.value.invalid_indexes == ("ux_items_name",)


def test_one_that_reads_the_database_runs_through_alembic_in_autocommit(
    engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    reading = "assert op.get_bind() is not None  # reads the database: runs online\n" + UNIQUE_CONCURRENT
    chain = chain_with(chain_builder, reading, DROP_UNIQUE_CONCURRENT, FLAG)
    assert [s.kind for s in chain.plan("r2", "r4").steps] == [StepKind.ONLINE_NON_TRANSACTIONAL, StepKind.COMPILED]
    fleet.provision(engine, chain, ["dup"], target="r2")
    fill(engine, "project_dup", 10, duplicate=True)
    manager = WorkspaceManager(engine, chain_builder.ini)
    try:
        with pytest.raises(NonTransactionalFailed) as raised:
            manager.ensure("dup")
        assert raised.value.invalid_indexes == ("ux_items_name",)  # named in the revision's source
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM project_dup.items WHERE name = 'twice'"))

        done = manager.ensure_detailed("dup")  # drops the invalid index, then builds it again
    finally:
        manager.close()

    assert (done.action, done.path) == (Action.UPGRADED, "mixed")
    assert indexes(engine, "project_dup") == {"ux_items_name": True}
    assert assert_consistent(engine) == {"project_dup": "r4"}


def test_a_chain_that_starts_with_one(engine: sa.Engine, chain_builder: ChainBuilder) -> None:
    """From base: the version table is made before it, the version row written after it; to base, the
    row deleted after it. A revision's own Python error says where the schema stays too."""
    chain_builder.add("r1", 'op.execute("CREATE TABLE items (id int)")', 'op.execute("DROP TABLE items")', extra=FLAG)
    chain_builder.add("r2", 'raise RuntimeError("not today")', extra=FLAG)
    chain = Chain.load(chain_builder.ini)
    with engine.connect() as conn:
        bootstrap(conn)
    manager = WorkspaceManager(engine, chain_builder.ini)
    try:
        with pytest.raises(
            NonTransactionalFailed,
            match=r"revision r2 raised RuntimeError: not today \(at .*r2\.py:17, in upgrade\); project_first stays at "
            r"revision r1",
        ):
            manager.ensure("first")
    finally:
        manager.close()
    assert assert_consistent(engine) == {"project_first": "r1"}
    assert verify_fast_path(engine, chain, cases=[(None, "r1", True), ("r1", None, False)]).identical
    assert {r.status for r in fleet.downgrade(engine, chain, target="base").results} == {fleet.OK}
    assert assert_consistent(engine) == {"project_first": None}


# ------------------------------------------------------------------ the lock, the session, async
def test_the_schema_stays_locked_from_the_first_part_to_the_last(
    engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    chain_with(chain_builder, GATED, DROP_UNIQUE_CONCURRENT, FLAG)
    gate = Gate(engine)
    first = Victim(lambda: WorkspaceManager(engine, chain_builder.ini).ensure_detailed("held"))
    second = Victim(lambda: WorkspaceManager(engine, chain_builder.ini).ensure_detailed("held"))
    try:
        first.start()
        assert gate.wait_for(1) == 1  # in r3, outside any transaction
        assert schema_version(engine, "project_held") == "r2"
        assert registry_state(engine, "held")[:2] == ("r2", "ready")
        second.start()
        with engine.connect() as admin:
            assert len(waiting_on_advisory(admin, 2, first, second)) == 2  # the second waits for the schema
    finally:
        gate.open()
    first.finish()
    second.finish()

    assert first.error is None and second.error is None, (first.error, second.error)
    assert getattr(first.result, "action", None) == Action.CREATED
    assert getattr(second.result, "action", None) == Action.CURRENT
    assert indexes(engine, "project_held") == {"ux_items_name": True}


def test_another_runs_fast_lane_waiting_for_the_schema_during_a_build_goes_the_careful_way(
    engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    chain = chain_with(chain_builder, GATED, DROP_UNIQUE_CONCURRENT, FLAG)
    fleet.provision(engine, chain, ["both"], target="r1")
    gate = Gate(engine)
    up = Victim(lambda: fleet.upgrade(engine, chain))
    down = Victim(lambda: fleet.downgrade(engine, chain, target="r1"))  # reads r2: a fast lane, r2 -> r1
    try:
        up.start()
        assert gate.wait_for(1) == 1  # the upgrade is in r3, at r2
        down.start()
        with engine.connect() as admin:
            waiting_on_advisory(admin, 2, up, down)  # the downgrade's batch waits for the schema's lock
    finally:
        gate.open()  # the build starts, and waits for the batch's snapshot: a deadlock, one side rolled back
    up.finish()
    down.finish()

    assert up.error is None and down.error is None, (up.error, down.error)
    for run in (up.result, down.result):
        assert isinstance(run, fleet.FleetReport)
        assert [r.status for r in run.results] == [fleet.OK], run.results
    assert assert_consistent(engine) == {"project_both": "r1"}
    assert indexes(engine, "project_both") == {}


def test_the_session_is_given_back_as_it_was(engine: sa.Engine, chain_builder: ChainBuilder) -> None:
    chain = chain_with(chain_builder, CONCURRENT, DROP_CONCURRENT)
    settings = sa.text("SELECT current_setting('search_path'), current_setting('lock_timeout')")
    locks = sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()")
    with transactions.connect(engine) as conn:
        extension_schema = bootstrap(conn).extension_schema
        conn.exec_driver_sql("SET lock_timeout = '7s'")
        before = tuple(conn.execute(settings).one())
        conn.commit()

        done = migrate(
            conn, Sending(chain, Flavor(extension_schema), lock_timeout_ms=1234), Migration("s", "project_s", "r4")
        )

        assert done.action == Action.CREATED
        assert not transactions.in_autocommit(conn)
        assert tuple(conn.execute(settings).one()) == before == ('"$user", public', "7s")
        assert conn.execute(locks).scalar_one() == 0  # the session's lock was released
        conn.rollback()
        conn.invalidate()  # its lock_timeout must not go back to the shared engine's pool (pgbouncer.assert_no_leak)


def test_the_async_manager_runs_it_too(engine: sa.Engine, chain_builder: ChainBuilder, database_url: URL) -> None:
    chain_with(chain_builder, CONCURRENT, DROP_CONCURRENT)

    async def ensure() -> str:
        aengine = create_async_engine(async_url(database_url), poolclass=sa.pool.NullPool)
        try:
            return (await ProjectWorkspaceManager(aengine, chain_builder.ini).ensure_detailed("asy")).schema
        finally:
            await aengine.dispose()

    assert asyncio.run(ensure()) == "project_asy"
    assert indexes(engine, "project_asy") == {"ix_items_name": True}
    assert_consistent(engine)


# ----------------------------------------------------------------------------- --sql, the proof
def test_sql_shows_it_outside_the_transactions_and_psql_running_it_gives_what_upgrade_gives(
    engine: sa.Engine, other_engine: sa.Engine, chain_builder: ChainBuilder, database_url: URL
) -> None:
    chain = chain_with(chain_builder, CONCURRENT, DROP_CONCURRENT)
    for target in (engine, other_engine):
        fleet.provision(target, chain, ["p1", "p2"], target="r1")

    scripts = fleet.sql(engine, chain)

    lines = (scripts[0].sql or "").splitlines()
    build = lines.index("CREATE INDEX CONCURRENTLY ix_items_name ON items (name);")
    assert lines[1].startswith("-- the schema's lock") and lines[2].startswith("SELECT pg_advisory_lock(")
    assert lines[build - 3].startswith("-- r2 -> r3 can't run in a transaction")
    assert lines[build - 4 : build + 4] == [  # between the transactions, for the session
        "COMMIT;",
        lines[build - 3],
        'SET search_path TO "project_p1", "workspace_extensions";',
        "SET lock_timeout = '5000ms';",
        lines[build],
        "RESET search_path;",
        "RESET lock_timeout;",
        "BEGIN ISOLATION LEVEL READ COMMITTED;",
    ]
    assert lines[-1].startswith("SELECT pg_advisory_unlock(")
    ran = psql(database_url, "".join(s.sql or "" for s in scripts))
    report = fleet.upgrade(other_engine, chain)

    assert ran.returncode == 0, ran.stderr
    assert {r.status for r in report.results} == {fleet.OK}
    for schema in ("project_p1", "project_p2"):
        with engine.connect() as by_psql, other_engine.connect() as by_run:
            assert diff(snapshot(by_run, schema), snapshot(by_psql, schema)) == []
        assert indexes(engine, schema) == {"ix_items_name": True}
    assert assert_consistent(engine) == {"project_p1": "r4", "project_p2": "r4"}


@pytest.mark.slow  # every range of the chain (24 cases, ~10 s); the quick suite verifies two ranges of one
def test_verify_fast_path_covers_every_range_of_a_chain_with_one(
    engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    chain = chain_with(chain_builder, CONCURRENT, DROP_CONCURRENT)
    with engine.connect() as conn:
        bootstrap(conn)

    proof = verify_fast_path(engine, chain)

    assert proof.identical, [(c.label, c.differences) for c in proof.differing]
    assert len(proof.checks) == 24  # 4 fresh, 20 upgrades and downgrades (base included)
    assert scratch_schemas(engine) == []  # every scratch schema dropped


def test_verify_fast_path_check_and_autogenerate_cover_a_chain_with_one(
    engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    chain = chain_with(chain_builder, CONCURRENT, DROP_CONCURRENT)
    with engine.connect() as conn:
        bootstrap(conn)

    fresh, upgrade, downgrade = (
        (None, chain.head, True),
        (chain.revisions[0], chain.head, False),
        (chain.head, None, False),
    )
    proof = verify_fast_path(engine, chain, cases=[fresh, upgrade, downgrade])  # the range over it, both ways

    assert proof.identical and len(proof.checks) == 3, [(c.label, c.differences) for c in proof.differing]
    fleet.provision(engine, chain, ["a", "b"])
    checked = drift.check(engine, chain)  # the head model built in a scratch schema, committed then dropped
    assert checked.ok and [s.schema for s in checked.schemas] == ["project_a", "project_b"]
    written = create_revision("models", config=chain_builder.ini, autogenerate=True, engine=engine)
    assert written.down_revision == "r4"
    assert scratch_schemas(engine) == []  # every scratch schema dropped


def test_plain_alembic_keeps_the_guards_through_an_autocommit_block(
    engine: sa.Engine, chain_builder: ChainBuilder, database_url: URL
) -> None:
    chain_builder.add("r1", ITEMS, 'op.drop_table("items")')
    raw = 'with op.get_context().autocommit_block():\n    op.execute("{}")'  # plain SQL: found by search_path
    chain_builder.add(
        "r2",
        raw.format("CREATE INDEX CONCURRENTLY ix_items_name ON items (name)"),
        raw.format("DROP INDEX CONCURRENTLY ix_items_name"),
    )
    with engine.connect() as conn:
        bootstrap(conn)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE public.items (id int, name text)"))  # what must not be touched
    try:
        up = run_alembic(database_url, "-x", "schema=project_plain", "upgrade", "head", ini=chain_builder.ini)
        assert up.returncode == 0, up.stderr
        assert indexes(engine, "project_plain") == {"ix_items_name": True}
        assert indexes(engine, "public") == {}
        down = run_alembic(database_url, "-x", "schema=project_plain", "downgrade", "r1", ini=chain_builder.ini)
        assert down.returncode == 0, down.stderr
        assert indexes(engine, "project_plain") == {}
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE public.items"))


# ----------------------------------------------------------------------------------------- lint
def test_squawk_lints_it_outside_a_transaction(chain_builder: ChainBuilder) -> None:
    chain_builder.add("r1", ITEMS, 'op.drop_table("items")')
    chain_builder.add("r2", CONCURRENT, DROP_CONCURRENT)  # concurrent, outside a transaction: fine
    chain_builder.add("r3", 'op.create_index("ix_plain", "items", ["id"])', extra=FLAG)  # blocks writes
    chain_builder.add("r4", 'op.create_index("ix_in", "items", ["id"], postgresql_concurrently=True)')  # fails

    result = lint(Path(chain_builder.ini))

    findings = [line.split(": squawk ")[1].split(":")[0] for line in result.stdout.splitlines()]
    assert result.exit_code == 1
    assert [line.split("/")[-1].split(":")[0] for line in result.stdout.splitlines()] == ["r3.py", "r4.py"]
    assert findings == ["require-concurrent-index-creation", "ban-concurrent-index-creation-in-transaction"]
