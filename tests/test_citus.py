"""workspace-tool on a Citus cluster (a coordinator and two workers; issue 11): Citus is detected, the
registry and the extension's schema stay on the coordinator, every project schema is a tenant schema on
one worker, each schema's transaction is sent statement by statement, and every command works: init,
ensure (threads, processes, asyncio), status (with each schema's node), list, drop, upgrade/downgrade
--all, check, verify-fast-path, revision --autogenerate, sessions, plain Alembic.

These run only with ``-m citus`` (``tox -e citus``), against ``citus_url`` (conftest.py); faults are in
test_citus_faults.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from support.chains import ALEMBIC_INI, HEAD, MAIN_REVISIONS, TABLES, ChainBuilder
from support.citus import (
    SHARDING_ON,
    cli,
    distributed_tables,
    on_all_nodes,
    scratch_leftovers,
    tenant_schemas,
    workers,
)
from support.cli import psql, run_alembic
from support.concurrency import ensure_in_processes
from support.data import NEAREST, add_chunks, nearest_statement
from support.db import assert_consistent
from wire import WireRecorder

from migrations.models import metadata
from workspace_tool import AsyncWorkspaceManager, WorkspaceManager, fleet
from workspace_tool.authoring import create_revision
from workspace_tool.chain import Chain
from workspace_tool.flavor.citus import Citus
from workspace_tool.managers import cache
from workspace_tool.schema.migrate import Migration, Sending, fast_lane, migrate, migrate_expected
from workspace_tool.schema.plan import BEGIN, Expected
from workspace_tool.urls import async_url
from workspace_tool.verification import verify_fast_path

pytestmark = [pytest.mark.citus, pytest.mark.usefixtures("citus_clean")]

CHAIN = Chain.load(ALEMBIC_INI)
BEHIND = MAIN_REVISIONS[1]  # 0002_code_chunks
REGISTRY_AND_EXTENSION = {"project_registry", "workspace_extensions"}


@pytest.fixture(scope="module")
def coordinator_url(citus_engine: sa.Engine) -> URL:
    return citus_engine.url


@pytest.fixture(scope="module")
def sharded(coordinator_url: URL) -> Iterator[sa.Engine]:
    """Sessions on the coordinator as a role whose default is schema-based sharding on."""
    engine = sa.create_engine(coordinator_url, connect_args=SHARDING_ON)
    yield engine
    engine.dispose()


def sharded_url(url: URL) -> str:
    """The coordinator URL with schema-based sharding on for its sessions (libpq options)."""
    return url.update_query_dict({"options": SHARDING_ON["options"]}).render_as_string(hide_password=False)


def nodes_of(manager: WorkspaceManager, *project_ids: str) -> dict[str, str | None]:
    return {s.project_id: s.node for s in manager.status(list(project_ids))}


# ------------------------------------------------------------------------------------------------ init
def test_init_keeps_the_registry_and_the_extension_schema_on_the_coordinator(
    citus_engine: sa.Engine, coordinator_url: URL
) -> None:
    with citus_engine.begin() as conn:  # a database where nothing was set up yet
        conn.execute(sa.text("DROP SCHEMA IF EXISTS project_registry, workspace_extensions CASCADE"))
    url = sharded_url(coordinator_url)  # the worst case: the role's sessions make tenant schemas

    code, _, err = cli(url, "init")
    assert code == 0, err
    assert "vector extension in schema workspace_extensions" in err
    assert tenant_schemas(citus_engine) & REGISTRY_AND_EXTENSION == set()
    with citus_engine.connect() as conn:  # the same, as Citus's view says
        assert conn.execute(sa.text("SELECT count(*) FROM public.citus_schemas")).scalar() == 0
    assert distributed_tables(citus_engine, "project_registry") == {}  # plain tables of the coordinator
    # the extension reached every node, in its schema (a schema Citus propagates, not a tenant)
    assert set(on_all_nodes(citus_engine, "SELECT extnamespace::regnamespace::text FROM pg_extension "
                                         "WHERE extname = 'vector'").values()) == {"workspace_extensions"}  # fmt: skip

    # The registry's own upgrade runs CREATE SCHEMA IF NOT EXISTS again: with the role's sharding on, that
    # would turn the existing registry schema into a tenant schema (and its new table with it).
    with citus_engine.begin() as conn:
        conn.execute(sa.text("DROP FUNCTION project_registry.claim_spare(text, text, text)"))  # r0003's
        conn.execute(sa.text("DROP FUNCTION project_registry.default_privileges()"))  # r0004's
        conn.execute(sa.text("DROP TABLE project_registry.pool_releases"))  # r0004's
        conn.execute(sa.text("DROP TABLE project_registry.spare_schemas"))
        conn.execute(sa.text("DROP TABLE project_registry.reference_catalog"))  # r0002's
        conn.execute(
            sa.text("UPDATE project_registry.workspace_registry_version SET version_num = 'r0001_workspace_config'")
        )
    code, _, err = cli(url, "init")
    assert code == 0, err
    assert tenant_schemas(citus_engine) & REGISTRY_AND_EXTENSION == set()
    assert distributed_tables(citus_engine, "project_registry") == {}
    code, out, _ = cli(url, "ensure", "acme")
    assert code == 0 and "create" in out.split()


def test_a_registry_made_a_tenant_schema_is_refused_saying_how_to_undo_it(
    citus_engine: sa.Engine, coordinator_url: URL
) -> None:
    """What an earlier version made of the registry with sharding on: refused in one line, nothing changed."""
    WorkspaceManager(citus_engine, ALEMBIC_INI).bootstrap()
    with citus_engine.begin() as conn:
        conn.execute(sa.text("SELECT citus_schema_distribute('project_registry')"))
    cache.clear()  # as a new process sees the database
    try:
        code, out, err = cli(coordinator_url, "ensure", "acme")
        assert (code, out) == (1, "")
        assert err.splitlines() == [
            "Error: project_registry is a Citus tenant schema, placed on a worker, but must stay on the coordinator: "
            "run SELECT citus_schema_undistribute('project_registry') on the coordinator, then rerun"
        ]
        assert "project_acme" not in tenant_schemas(citus_engine)
    finally:
        with citus_engine.begin() as conn:  # what the message says to run
            conn.execute(sa.text("SELECT citus_schema_undistribute('project_registry')"))
    code, out, _ = cli(coordinator_url, "ensure", "acme")
    assert code == 0 and "create" in out.split()


# ---------------------------------------------------------------------------------------------- ensure
@pytest.mark.parametrize("engine_name", ["citus_engine", "sharded"])
def test_every_project_schema_is_a_tenant_schema_whatever_the_roles_default(
    engine_name: str, request: pytest.FixtureRequest, citus_engine: sa.Engine
) -> None:
    engine: sa.Engine = request.getfixturevalue(engine_name)
    manager = WorkspaceManager(engine, ALEMBIC_INI)
    result = manager.ensure_detailed("acme")
    assert (result.action, result.path) == ("created", "fast")

    assert tenant_schemas(citus_engine) - {"project_registry", "workspace_extensions"} >= {"project_acme"}
    assert tenant_schemas(citus_engine) & REGISTRY_AND_EXTENSION == set()
    assert distributed_tables(citus_engine, "project_acme") == dict.fromkeys(TABLES, "n")
    [status] = manager.status(["acme"])
    assert (status.state, status.registry_revision, status.revision) == ("at-head", HEAD, HEAD)
    assert status.node in workers(citus_engine)
    assert manager.ensure_detailed("acme", verify=True).action == "verified"
    cache.clear()  # as a new process sees it
    assert WorkspaceManager(engine, ALEMBIC_INI).ensure_detailed("acme").action == "current"
    assert_consistent(citus_engine)


def test_ensure_from_threads_and_processes_creates_each_project_exactly_once(
    sharded: sa.Engine, coordinator_url: URL
) -> None:
    manager = WorkspaceManager(sharded, ALEMBIC_INI)
    with ThreadPoolExecutor(6) as pool:
        same = [str(a) for a in pool.map(lambda _: manager.ensure_detailed("same").action, range(6))]
        distinct = [str(a) for a in pool.map(lambda i: manager.ensure_detailed(f"thread-{i}").action, range(4))]
    assert same.count("created") == 1 and set(same) <= {"created", "current", "cached"}
    assert distinct == ["created"] * 4

    actions: list[str] = []
    url = sharded_url(coordinator_url)
    assert ensure_in_processes(url, ["proc"] * 4, actions=actions) == [("proc", "project_proc", None)] * 4
    assert actions == ["created", "current", "current", "current"]
    schemas = assert_consistent(sharded)
    assert sorted(schemas) == sorted(["project_same", "project_proc", *(f"project_thread_{i}" for i in range(4))])
    assert set(schemas) <= tenant_schemas(sharded)
    spread = {s.node for s in manager.status()}
    assert spread <= workers(sharded) and None not in spread


def test_async_manager_on_asyncpg_gathers_distinct_and_same_projects(
    citus_engine: sa.Engine, coordinator_url: URL
) -> None:
    async def scenario() -> list[str]:
        engine = create_async_engine(
            async_url(coordinator_url.render_as_string(hide_password=False)),
            connect_args={"server_settings": {"citus.enable_schema_based_sharding": "on"}},
        )
        try:
            manager = AsyncWorkspaceManager(engine, ALEMBIC_INI)
            ids = ["async-a", "async-b", "async-c", "async-same", "async-same", "async-same"]
            results = await asyncio.gather(*(manager.ensure_detailed(p) for p in ids))
            return [str(r.action) for r in results]
        finally:
            await engine.dispose()

    actions = asyncio.run(scenario())
    assert actions[:3] == ["created"] * 3
    assert actions[3:].count("created") == 1
    schemas = assert_consistent(citus_engine)
    assert sorted(schemas) == ["project_async_a", "project_async_b", "project_async_c", "project_async_same"]
    assert set(schemas) <= tenant_schemas(citus_engine)


def test_the_owner_role_uses_its_project_through_the_coordinator_and_nothing_else(
    citus_engine: sa.Engine, coordinator_url: URL
) -> None:
    """The grants reach the worker holding the schema: the role's queries run there as that role."""
    role = f"wst_owner_{uuid.uuid4().hex[:8]}"
    with citus_engine.begin() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN"))  # Citus creates it on every node
    try:
        manager = WorkspaceManager(citus_engine, ALEMBIC_INI)
        manager.ensure("granted", owner_role=role)
        manager.ensure("other")
        as_role = sa.create_engine(coordinator_url.set(username=role), poolclass=sa.pool.NullPool)
        try:
            with as_role.begin() as conn:
                conn.execute(sa.text("INSERT INTO project_granted.repositories (path, name) VALUES ('/r', 'r')"))
                assert conn.execute(sa.text("SELECT name FROM project_granted.repositories")).scalars().all() == ["r"]
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied"), as_role.connect() as conn:
                conn.execute(sa.text("SELECT count(*) FROM project_other.repositories"))
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied"), as_role.begin() as conn:
                conn.execute(sa.text("UPDATE project_granted.alembic_version SET version_num = 'x'"))
        finally:
            as_role.dispose()
        # a missing role is created NOLOGIN on every node, in the schema's transaction
        missing = f"wst_new_{uuid.uuid4().hex[:8]}"
        manager.ensure("granted", owner_role=missing)
        found = on_all_nodes(
            citus_engine, f"SELECT count(*) FROM pg_roles WHERE rolname = '{missing}' AND NOT rolcanlogin"
        )
        assert set(found.values()) == {"1"} and len(found) == 3
    finally:
        with citus_engine.begin() as conn:
            conn.execute(sa.text("DROP SCHEMA IF EXISTS project_granted, project_other CASCADE"))
            for name in conn.execute(sa.text("SELECT rolname FROM pg_roles WHERE rolname LIKE 'wst\\_owner\\_%' "
                                             "OR rolname LIKE 'wst\\_new\\_%'")).scalars().all():  # fmt: skip
                conn.execute(sa.text(f"DROP ROLE {name}"))


def test_an_online_revision_runs_through_alembic_on_the_coordinator(
    sharded: sa.Engine, chain_builder: ChainBuilder
) -> None:
    chain_builder.copy_main_chain().add(
        "0005_online",
        """
        op.add_column("repositories", sa.Column("notes", sa.Text()))
        op.create_index("ix_repositories_notes", "repositories", ["notes"])
        """,
        """
        op.drop_index("ix_repositories_notes", table_name="repositories")
        op.drop_column("repositories", "notes")
        """,
        extra="workspace_online = True",
    )
    chain = Chain.load(chain_builder.ini)
    assert fleet.provision(sharded, chain, ["old"], target=HEAD).ok
    manager = WorkspaceManager(sharded, chain_builder.ini)
    fresh = manager.ensure_detailed("fresh")
    assert (fresh.action, fresh.path) == ("created", "mixed")  # 0001-0004 replayed, 0005 through Alembic
    upgraded = fleet.upgrade(sharded, chain)
    assert [(r.project_id, r.status, r.path) for r in upgraded.results] == [
        ("fresh", "skipped", "none"),
        ("old", "ok", "online"),
    ]
    downgraded = fleet.downgrade(sharded, chain, target=HEAD)
    assert {(r.status, r.path) for r in downgraded.results} == {("ok", "online")}
    assert fleet.upgrade(sharded, chain).ok
    assert distributed_tables(sharded, "project_fresh") == distributed_tables(sharded, "project_old")
    assert {"project_fresh", "project_old"} <= tenant_schemas(sharded)
    assert set(assert_consistent(sharded).values()) == {"0005_online"}


def test_a_revision_that_cant_run_in_a_transaction_runs_in_parts_on_the_cluster(
    citus_engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    chain_builder.copy_main_chain().add(
        "0005_concurrently",
        """
        with op.get_context().autocommit_block():
            op.create_index("ix_repositories_name", "repositories", ["name"], postgresql_concurrently=True)
        """,
        """
        with op.get_context().autocommit_block():
            op.drop_index("ix_repositories_name", table_name="repositories", postgresql_concurrently=True)
        """,
    )
    chain = Chain.load(chain_builder.ini)
    assert fleet.provision(citus_engine, chain, ["old"], target=HEAD).ok
    manager = WorkspaceManager(citus_engine, chain_builder.ini)
    assert manager.ensure_detailed("fresh").action == "created"  # in parts: before, the index, after
    assert fleet.upgrade(citus_engine, chain).ok
    assert set(assert_consistent(citus_engine).values()) == {"0005_concurrently"}
    with citus_engine.connect() as conn:  # a valid index on each worker's shard, as on the coordinator
        valid = conn.execute(
            sa.text(
                "SELECT n.nspname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = 'ix_repositories_name' ORDER BY 1"
            )
        ).all()
    assert [tuple(r) for r in valid] == [("project_fresh", True), ("project_old", True)]
    assert {"project_fresh", "project_old"} <= tenant_schemas(citus_engine)
    assert fleet.downgrade(citus_engine, chain, target=HEAD).ok
    assert set(assert_consistent(citus_engine).values()) == {HEAD}


def test_the_warm_pool_is_refused_on_citus_in_one_line(citus_engine: sa.Engine, coordinator_url: URL) -> None:
    code, _, err = cli(coordinator_url, "pool", "fill", "--size", "2")
    assert code == 1 and err.startswith("Error: the warm pool can't be used with this chain: the database runs Citus")
    assert err.count("\n") == 1
    with citus_engine.connect() as conn:
        spares = conn.execute(sa.text("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'workspace\\_spare\\_%'"))
        assert spares.scalar() == 0
    [check] = verify_fast_path(citus_engine, CHAIN, cases=[], pool=True).checks  # the proof says so too
    assert check.kind == "pool" and "the database runs Citus" in check.differences[0]
    manager = WorkspaceManager(citus_engine, ALEMBIC_INI, warm_pool=2)  # asked for, on Citus: built as usual
    try:
        assert manager.ensure_detailed("no-spare").path == "fast"
    finally:
        manager.close()


# --------------------------------------------------------------------------- status, list, drop (CLI)
def test_status_shows_the_node_holding_each_schema_then_list_and_drop(
    citus_engine: sa.Engine, coordinator_url: URL
) -> None:
    manager = WorkspaceManager(citus_engine, ALEMBIC_INI)
    for project in ("alpha", "beta", "gamma"):
        manager.ensure(project)
    with citus_engine.connect() as conn:  # Citus's own view of where each schema's shards are
        placed: dict[str, str] = dict(
            conn.execute(
                sa.text(
                    "SELECT split_part(table_name::text, '.', 1), nodename || ':' || nodeport FROM citus_shards "
                    "WHERE table_name::text LIKE 'project\\_%.alembic_version'"
                )
            ).all()
        )
    assert set(placed) == {"project_alpha", "project_beta", "project_gamma"}

    code, out, _ = cli(coordinator_url, "status", "alpha", "beta", "gamma")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split()[:4] == ["PROJECT", "ID", "SCHEMA", "NODE"]
    assert [row.split()[:3] for row in rows] == [
        [p, f"project_{p}", placed[f"project_{p}"]] for p in ("alpha", "beta", "gamma")
    ]
    code, out, _ = cli(coordinator_url, "status", "alpha", "--json")
    assert [(s["project_id"], s["node"], s["state"]) for s in json.loads(out)] == [
        ("alpha", placed["project_alpha"], "at-head")
    ]
    code, out, _ = cli(coordinator_url, "status", "--json")
    by_node = {n["node"]: n["schemas"] for n in json.loads(out)["nodes"]}
    assert by_node == {node: list(placed.values()).count(node) for node in set(placed.values())}
    code, out, _ = cli(coordinator_url, "status")
    assert "NODE" in out and all(node in out for node in by_node)

    code, out, _ = cli(coordinator_url, "list")
    assert code == 0 and [line.split()[0] for line in out.splitlines()[1:]] == ["alpha", "beta", "gamma"]
    code, _, err = cli(coordinator_url, "drop", "beta", "--yes")
    assert (code, err.strip()) == (0, "Dropped project_beta.")
    gone = on_all_nodes(citus_engine, "SELECT count(*) FROM pg_namespace WHERE nspname = 'project_beta'")
    assert set(gone.values()) == {"0"} and len(gone) == 3  # on the coordinator and both workers
    assert sorted(assert_consistent(citus_engine)) == ["project_alpha", "project_gamma"]


# ------------------------------------------------------------------------------------- fleet runs
def test_downgrade_and_upgrade_all_in_parallel_then_check(citus_engine: sa.Engine, coordinator_url: URL) -> None:
    projects = [f"fleet-{i}" for i in range(8)]
    assert fleet.provision(citus_engine, CHAIN, projects, jobs=4).ok
    down = fleet.downgrade(citus_engine, CHAIN, target=BEHIND, jobs=4)
    assert down.ok and {(r.status, r.path, r.attempts) for r in down.results} == {("ok", "fast", 1)}
    assert set(assert_consistent(citus_engine).values()) == {BEHIND}

    code, _, err = cli(coordinator_url, "upgrade", "--all", "--jobs", "4")
    assert code == 0, err
    assert "upgrade to 0004_alter_existing: 8 ok, 0 failed, 0 skipped" in err
    assert set(assert_consistent(citus_engine).values()) == {HEAD}
    code, _, err = cli(coordinator_url, "check")
    assert code == 0 and "8 schema(s) checked against head 0004_alter_existing: all match" in err
    assert {f"project_fleet_{i}" for i in range(8)} <= tenant_schemas(citus_engine)


def test_upgrade_all_reads_no_version_its_registry_says_is_behind_and_each_guard_confirms_it(
    citus_engine: sa.Engine, coordinator_url: URL
) -> None:
    """On Citus every version read is a distributed query: a run takes a schema whose registry row says it is
    ready below the target at that revision, and the schema's transaction checks it under the schema's lock.
    A registry row that is wrong costs nothing but the careful path: one saying head is still read (a stale
    row must not make the run skip a schema behind), one naming another revision fails its guard."""
    middle = MAIN_REVISIONS[2]
    assert fleet.provision(citus_engine, CHAIN, ["read-0", "read-1", "read-2", "stale-head"], target=BEHIND).ok
    assert fleet.provision(citus_engine, CHAIN, ["stale-behind"], target=middle).ok
    with citus_engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE project_registry.workspace_config SET revision = :r WHERE project_id = :p"),
            [{"r": HEAD, "p": "stale-head"}, {"r": BEHIND, "p": "stale-behind"}],
        )
    with WireRecorder(coordinator_url) as wire:
        engine = sa.create_engine(wire.url)
        try:
            report = fleet.upgrade(engine, CHAIN, jobs=2)
        finally:
            engine.dispose()
        sent = wire.queries
    assert report.ok, report.failed
    assert set(assert_consistent(citus_engine).values()) == {HEAD}
    by_id = {r.project_id: r for r in report.results}
    assert {p: (r.status, r.from_revision) for p, r in by_id.items()} == {
        "read-0": ("ok", BEHIND),
        "read-1": ("ok", BEHIND),
        "read-2": ("ok", BEHIND),
        "stale-head": ("ok", BEHIND),
        "stale-behind": ("ok", middle),
    }
    read = [q for q in sent if "string_agg(version_num" in q]
    assert read and all("project_stale_head" in q for q in read), read
    assert not [q for q in read if "project_read_" in q or "project_stale_behind" in q], read


def test_the_fast_lane_is_the_guarded_transaction_sent_statement_by_statement(citus_engine: sa.Engine) -> None:
    """No state read first; a guard that fails changes nothing and sends the caller to the careful path."""
    assert fleet.provision(citus_engine, CHAIN, ["lane"], target=BEHIND).ok
    how = Sending(CHAIN, Citus("workspace_extensions"), lock_timeout_ms=5000)
    moved = Migration("lane", "project_lane", HEAD, fleet.UPGRADE)
    created = Migration("lane-new", "project_lane_new", HEAD, fleet.PROVISION)
    with citus_engine.connect() as conn:
        done = migrate_expected(conn, how, moved, Expected(True, BEHIND))
        assert done is not None and (done.action, done.path) == ("upgraded", "fast")
        new = migrate_expected(conn, how, created, Expected(False, None))
        assert new is not None and new.action == "created"
        before = assert_consistent(citus_engine), registry_updates(conn)
        assert migrate_expected(conn, how, moved, Expected(True, BEHIND)) is None  # no longer at BEHIND
        assert migrate_expected(conn, how, created, Expected(False, None)) is None  # exists now
        assert (assert_consistent(citus_engine), registry_updates(conn)) == before
        careful = migrate(conn, how, moved)  # what the caller then does: finds it at head
        assert careful.action == "current"
    assert {"project_lane", "project_lane_new"} <= tenant_schemas(citus_engine)


def test_the_fast_lanes_version_check_takes_the_whole_version_table(citus_engine: sa.Engine) -> None:
    """The guard confirms the schema is at the expected revision and nothing else: a version table that also
    holds another revision fails it, changing nothing (the careful path then reads the schema)."""
    assert fleet.provision(citus_engine, CHAIN, ["two-rows"], target=BEHIND).ok
    with citus_engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO project_two_rows.alembic_version VALUES (:v)"), {"v": MAIN_REVISIONS[0]})
    how = Sending(CHAIN, Citus("workspace_extensions"), lock_timeout_ms=5000)
    moved = Migration("two-rows", "project_two_rows", HEAD, fleet.UPGRADE)
    with citus_engine.connect() as conn:
        before = registry_updates(conn)
        assert migrate_expected(conn, how, moved, Expected(True, BEHIND)) is None
        assert registry_updates(conn) == before
        versions = conn.execute(sa.text("SELECT version_num FROM project_two_rows.alembic_version ORDER BY 1"))
        assert sorted(versions.scalars()) == sorted([BEHIND, MAIN_REVISIONS[0]])
        conn.rollback()


def test_the_fast_lane_shares_round_trips_only_where_citus_takes_them(
    citus_engine: sa.Engine, coordinator_url: URL
) -> None:
    """Citus replays a propagated SET's whole query string on the workers and forwards some DDL's: the SETs
    in a row share a round trip, the queries in a row share one, every DDL goes alone; every statement is
    sent once, in order: BEGIN with the lock (its wait bounded by a query), the SETs, one per DDL, the
    version check with the last version move, the registry row and COMMIT."""
    assert fleet.provision(citus_engine, CHAIN, ["trips"], target=BEHIND).ok
    how = Sending(CHAIN, Citus("workspace_extensions"), lock_timeout_ms=5000)
    moved = Migration("trips", "project_trips", HEAD, fleet.UPGRADE)
    plan = fast_lane(how, moved, Expected(True, BEHIND))
    assert plan is not None
    with WireRecorder(coordinator_url) as wire:
        engine = sa.create_engine(wire.url)
        try:
            with engine.connect() as conn:
                wire.clear()
                done = migrate_expected(conn, how, moved, Expected(True, BEHIND))
        finally:
            engine.dispose()
        sent = wire.queries
    assert done is not None and (done.action, done.path) == ("upgraded", "fast")
    assert assert_consistent(citus_engine) == {"project_trips": HEAD}
    trips = list(sent)
    assert trips[0].startswith(BEGIN + "\n") and "BEGIN" not in "".join(trips[1:]), sent
    assert trips[-1].endswith("\nCOMMIT;") and all("COMMIT;" not in t for t in trips[:-1]), sent
    trips[0], trips[-1] = trips[0].removeprefix(BEGIN + "\n"), trips[-1].removesuffix("\nCOMMIT;")
    statements, grouped = plan.statements(), []
    for trip in trips:  # each round trip is the plan's next statements, in order
        taken = next(n for n in range(1, len(statements) + 1) if "\n".join(statements[:n]) == trip)
        grouped.append(statements[:taken])
        statements = statements[taken:]
    assert not statements and len(grouped) < len(plan.statements())

    def kind(statement: str) -> str:
        word = statement.split(None, 1)[0].upper()
        return "set" if word == "SET" else "query" if word in {"SELECT", "INSERT", "UPDATE", "WITH"} else "other"

    for group in grouped:
        kinds = {kind(s) for s in group}
        assert len(kinds) == 1 and ("other" not in kinds or len(group) == 1), group
    # the lock first, its wait bounded, nothing there that reaches a worker; then the SETs, before any worker is
    # reached (they reach each with its transaction's start, no round trip of their own there)
    assert grouped[0] == [
        "SELECT set_config('lock_timeout', '5000ms', true);",
        "SELECT pg_advisory_xact_lock(hashtextextended('workspace_tool:project_trips', 0));",
    ], grouped
    assert "SET LOCAL lock_timeout" in trips[1] and "SET LOCAL search_path" in trips[1], trips
    # the version check under the lock, in the statement of the first version move
    check = next(i for i, t in enumerate(trips) if "expect_version" in t)
    assert trips[check].startswith("WITH moved AS (UPDATE alembic_version SET "), trips
    assert "alembic_version" not in "".join(trips[:check]), trips
    assert "UPDATE alembic_version" in trips[-1] and "workspace_config" in trips[-1], trips
    assert len(sent) == len(grouped), sent  # BEGIN and COMMIT take no round trip of their own


def test_upgrade_sql_is_what_the_run_sends_and_psql_runs_it(citus_engine: sa.Engine, coordinator_url: URL) -> None:
    assert fleet.provision(citus_engine, CHAIN, ["by-psql", "by-run"], target=BEHIND).ok
    [script] = fleet.sql(citus_engine, CHAIN, ["by-psql"])
    assert script.sql is not None and "SET LOCAL citus.propagate_set_commands TO 'local';" in script.sql
    ran = psql(coordinator_url, script.sql)  # psql sends one statement at a time, as Citus needs
    assert ran.returncode == 0, ran.stderr
    assert fleet.upgrade(citus_engine, CHAIN, ["by-run"]).ok
    assert assert_consistent(citus_engine) == {"project_by_psql": HEAD, "project_by_run": HEAD}
    with citus_engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT project_id, last_action, last_path FROM project_registry.workspace_config ORDER BY 1")
        ).all()
    assert [tuple(r) for r in rows] == [("by-psql", "upgrade", "fast"), ("by-run", "upgrade", "fast")]
    with citus_engine.connect() as conn:
        before = registry_updates(conn)
        ran = psql(coordinator_url, script.sql)  # stale now: it fails (its DDL, or else its guard), nothing changes
        assert ran.returncode != 0 and "ERROR" in ran.stderr
        assert registry_updates(conn) == before
    assert assert_consistent(citus_engine) == {"project_by_psql": HEAD, "project_by_run": HEAD}


def registry_updates(conn: sa.Connection) -> list[tuple[str, object]]:
    rows = conn.execute(sa.text("SELECT project_id, updated_at FROM project_registry.workspace_config ORDER BY 1"))
    conn.rollback()
    return [(str(r[0]), r[1]) for r in rows]


def test_lock_timeout_bounds_the_waits_on_the_worker_too(citus_engine: sa.Engine) -> None:
    """A session reading the schema's shards directly on its worker holds its lock there: the migration gives
    up after lock_timeout (on the fast lane and on the careful path) instead of waiting without end."""
    assert fleet.provision(citus_engine, CHAIN, ["locked"]).ok
    [status] = WorkspaceManager(citus_engine, ALEMBIC_INI).status(["locked"])
    assert status.node is not None
    with citus_engine.connect() as conn:
        shards = (
            conn.execute(
                sa.text("SELECT shard_name FROM citus_shards WHERE table_name::text LIKE 'project\\_locked.%'")
            )
            .scalars()
            .all()
        )
    host, port = status.node.rsplit(":", 1)
    on_worker = sa.create_engine(citus_engine.url.set(host=host, port=int(port)), poolclass=sa.pool.NullPool)
    blocker = on_worker.connect()
    for shard in shards:  # a reader's lock on each of the schema's shards, held until rollback
        blocker.execute(sa.text(f"SELECT count(*) FROM {shard}"))
    outcome: dict[str, object] = {}

    def run() -> None:
        outcome["fleet"] = fleet.downgrade(citus_engine, CHAIN, target=BEHIND, lock_timeout_ms=300, retries=0)
        how = Sending(CHAIN, Citus("workspace_extensions"), lock_timeout_ms=300)
        with citus_engine.connect() as conn:
            try:
                migrate(conn, how, Migration("locked", "project_locked", BEHIND, fleet.DOWNGRADE))
            except Exception as exc:
                outcome["careful"] = exc

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    runner.join(30)
    blocker.rollback()  # frees a migration that waited without end (the failure this test catches)
    blocker.close()
    on_worker.dispose()
    runner.join(30)
    report = outcome.get("fleet")
    assert isinstance(report, fleet.FleetReport), "the migration waited on the worker's lock without end"
    [result] = report.results
    assert result.status == "failed" and result.error is not None
    assert result.error.startswith("lock timeout (300 ms, 1 attempts): canceling statement due to lock timeout")
    assert "lock timeout" in str(outcome.get("careful"))
    assert assert_consistent(citus_engine) == {"project_locked": HEAD}  # nothing changed


# ------------------------------------------------------------- scratch schemas: check, verify, autogenerate
def test_check_builds_its_reference_in_a_scratch_tenant_schema_or_reads_the_stored_one(
    citus_engine: sa.Engine, coordinator_url: URL
) -> None:
    # a read-only role, granted the project schemas through default privileges (check compares privileges:
    # grants made by hand on each schema alone would be differences), and on each schema too: Citus doesn't
    # propagate default privileges to the workers
    reader = f"wst_reader_{uuid.uuid4().hex[:8]}"
    with citus_engine.begin() as conn:
        conn.execute(sa.text(f"CREATE ROLE {reader} LOGIN"))  # on every node
        conn.execute(sa.text(f"ALTER DEFAULT PRIVILEGES GRANT USAGE ON SCHEMAS TO {reader}"))
        conn.execute(sa.text(f"ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO {reader}"))
    try:
        manager = WorkspaceManager(citus_engine, ALEMBIC_INI)
        for project in ("c1", "c2"):
            manager.ensure(project)
        with citus_engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM project_registry.reference_catalog"))
            conn.execute(sa.text("ALTER TABLE project_c2.code_files ADD COLUMN by_hand integer"))
        code, out, err = cli(coordinator_url, "check")
        assert code == 1, err
        assert out == "1 schema(s), at-head: unexpected relations.code_files.columns.by_hand (project_c2)\n"
        assert scratch_leftovers(citus_engine) == {}
        with citus_engine.connect() as conn:  # check stores nothing
            assert conn.execute(sa.text("SELECT count(*) FROM project_registry.reference_catalog")).scalar() == 0

        # the read-only role (no CREATE: it can't build a reference) checks against the one init stores
        with citus_engine.begin() as conn:
            for schema in ("project_registry", "workspace_extensions", "project_c1", "project_c2"):
                conn.execute(sa.text(f"GRANT USAGE ON SCHEMA {schema} TO {reader}"))
                conn.execute(sa.text(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {reader}"))
        as_reader = coordinator_url.set(username=reader)
        code, _, err = cli(as_reader, "check")
        assert code == 1 and "can't build one" in err and len(err.splitlines()) == 1, err
        code, _, err = cli(coordinator_url, "init")  # builds and stores it
        assert code == 0, err
        code, out, _ = cli(as_reader, "check")
        assert code == 1
        assert out == "1 schema(s), at-head: unexpected relations.code_files.columns.by_hand (project_c2)\n"
        with citus_engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE project_c2.code_files DROP COLUMN by_hand"))
        code, _, err = cli(as_reader, "check")
        assert code == 0 and "2 schema(s) checked" in err and "all match" in err
    finally:
        with citus_engine.begin() as conn:
            conn.execute(sa.text(f"ALTER DEFAULT PRIVILEGES REVOKE ALL ON SCHEMAS FROM {reader}"))
            conn.execute(sa.text(f"ALTER DEFAULT PRIVILEGES REVOKE ALL ON TABLES FROM {reader}"))
            conn.execute(sa.text(f"DROP OWNED BY {reader}"))
            conn.execute(sa.text(f"DROP ROLE {reader}"))
    assert scratch_leftovers(citus_engine) == {}


def test_verify_fast_path_compares_tenant_scratch_schemas_and_leaves_nothing_behind(
    citus_engine: sa.Engine, coordinator_url: URL
) -> None:
    WorkspaceManager(citus_engine, ALEMBIC_INI).bootstrap()
    code, out, err = cli(coordinator_url, "verify-fast-path")
    assert code == 0, out + err
    assert "All 24 ranges identical." in err + out
    assert scratch_leftovers(citus_engine) == {}
    assert tenant_schemas(citus_engine) & REGISTRY_AND_EXTENSION == set()


def test_revision_autogenerate_then_upgrade_all(citus_engine: sa.Engine, chain_builder: ChainBuilder) -> None:
    chain_builder.copy_main_chain()
    assert fleet.provision(citus_engine, Chain.load(chain_builder.ini), ["auto-a", "auto-b"]).ok
    changed = sa.MetaData()
    for table in metadata.sorted_tables:
        table.to_metadata(changed)
    changed.tables["code_files"].append_column(sa.Column("encoding", sa.String(20), server_default="utf-8"))

    result = create_revision(
        "encoding", config=chain_builder.ini, autogenerate=True, engine=citus_engine, target_metadata=changed
    )
    assert result.operations == 1
    assert "op.add_column('code_files', sa.Column('encoding'" in result.path.read_text()
    assert scratch_leftovers(citus_engine) == {}
    chain = Chain.load(chain_builder.ini)
    report = fleet.upgrade(citus_engine, chain)
    assert report.ok and {(r.status, r.path) for r in report.results} == {("ok", "fast")}
    assert set(assert_consistent(citus_engine).values()) == {result.revision}


# ------------------------------------------------------------------------------ sessions, plain Alembic
def test_a_nearest_neighbour_query_through_the_coordinator_reads_the_projects_worker(citus_engine: sa.Engine) -> None:
    manager = WorkspaceManager(citus_engine, ALEMBIC_INI)
    with manager.session("vectors") as s:
        add_chunks(s)
        s.commit()
    manager.ensure("other")
    [status] = manager.status(["vectors"])
    assert status.node is not None
    with manager.session("vectors") as s:
        found = s.scalars(nearest_statement()).all()
        assert [c.content for c in found] == [f"chunk {i}" for i in range(NEAREST)]
        compiled = nearest_statement().compile(s.get_bind(), compile_kwargs={"literal_binds": True})
        plan = "\n".join(s.execute(sa.text(f"EXPLAIN {compiled}")).scalars())
        s.rollback()
    host, port = status.node.rsplit(":", 1)
    assert "Custom Scan (Citus Adaptive)" in plan
    assert f"Node: host={host} port={port}" in plan  # one task, on the worker holding the project
    with manager.session("other") as s:
        assert s.scalars(nearest_statement()).all() == []


def test_plain_alembic_on_the_coordinator_makes_a_tenant_schema(citus_engine: sa.Engine, coordinator_url: URL) -> None:
    WorkspaceManager(citus_engine, ALEMBIC_INI).bootstrap()
    up = run_alembic(coordinator_url, "-x", "schema=project_plain", "upgrade", "head")
    assert up.returncode == 0, up.stderr
    assert "project_plain" in tenant_schemas(citus_engine)  # though the session's default is sharding off
    assert distributed_tables(citus_engine, "project_plain") == dict.fromkeys(TABLES, "n")
    down = run_alembic(coordinator_url, "-x", "schema=project_plain", "downgrade", BEHIND)
    assert down.returncode == 0, down.stderr
    with citus_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM project_plain.alembic_version")).scalar() == BEHIND
    # workspace-tool takes it from there: ensure registers and upgrades it
    result = WorkspaceManager(citus_engine, ALEMBIC_INI).ensure_detailed("plain")
    assert (result.action, result.from_revision) == ("upgraded", BEHIND)
    assert assert_consistent(citus_engine) == {"project_plain": HEAD}
