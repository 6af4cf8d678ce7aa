"""A tenant's life on a Citus cluster (schema-based sharding: every project schema is a tenant schema, living
whole on one worker): export and import, clone (with and without data), drop (one, in bulk), quarantine /
restore / purge, exec (its SQL on the tenant's worker; behind a pooler, its session state reset), and move
between two databases of the cluster. Each through the command line, as a user runs it.

These run only with ``-m citus`` (``tox -e citus``), against ``citus_url`` (conftest.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pgbouncer
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL
from support.chains import ITEMS, MAIN_REVISIONS, ChainBuilder
from support.citus import (
    another_database,
    cli,
    distributed_tables,
    on_all_nodes,
    reset_citus,
    tenant_schemas,
    workers,
)
from support.data import DATA_TABLES, add_chunks, damage, data_rows
from support.db import assert_consistent, registry_row
from support.wire_runs import warm_run_queries
from wire import WireRecorder

from workspace_tool import WorkspaceManager, fleet
from workspace_tool.chain import Chain
from workspace_tool.lifecycle.drop import drop_operation
from workspace_tool.lifecycle.exec import exec_operation
from workspace_tool.schema.operation import Operation

pytestmark = [pytest.mark.citus, pytest.mark.usefixtures("citus_clean")]

ITEMS_REVISION = "0005_items"  # the main chain, then a table with a serial column (a sequence to set)
BEHIND = MAIN_REVISIONS[1]


@pytest.fixture
def chain(chain_builder: ChainBuilder) -> Chain:
    return Chain.load(chain_builder.copy_main_chain().add(ITEMS_REVISION, ITEMS, 'op.drop_table("items")').ini)


@pytest.fixture
def run(citus_engine: sa.Engine, chain: Chain) -> Runner:
    return Runner(citus_engine.url, chain)


class Runner:
    """`workspace-tool` on the coordinator with the test's chain."""

    def __init__(self, url: URL, chain: Chain) -> None:
        self.url, self.ini = url, str(chain.config_path)

    def __call__(self, *args: str, url: URL | None = None) -> tuple[str, str]:
        """(stdout, stderr); a failure fails the test, with what the command said."""
        code, out, err = cli(url or self.url, "-c", self.ini, *args)
        assert code == 0, (args, out, err)
        return out, err


def fill(engine: sa.Engine, chain: Chain, project_id: str) -> None:
    """Make the project, with rows in every data table (40 chunks with their embeddings) and three items."""
    with WorkspaceManager(engine, chain.config_path).session(project_id) as s:
        add_chunks(s)
        s.commit()
    schema = chain.namespace.schema_for(project_id)
    with engine.begin() as conn:
        conn.execute(sa.text(f"INSERT INTO {schema}.items (name) VALUES ('a'), ('b'), ('c')"))


def next_item_id(engine: sa.Engine, schema: str) -> int:
    """The id a new item gets (through the coordinator, as the application inserts it): its sequence's next."""
    with engine.begin() as conn:
        return int(conn.execute(sa.text(f"INSERT INTO {schema}.items (name) VALUES ('new') RETURNING id")).scalar_one())


def node_of(engine: sa.Engine, schema: str) -> str:
    """'host:port' of the worker holding every shard of the schema's tables (one: it is a tenant schema)."""
    with engine.connect() as conn:
        found = conn.execute(
            sa.text(
                "SELECT DISTINCT nodename || ':' || nodeport FROM citus_shards "
                "WHERE split_part(table_name::text, '.', 1) = :schema"
            ),
            {"schema": schema},
        ).scalars()
        [node] = found.all()
    return str(node)


def schema_count_on_nodes(engine: sa.Engine, like: str) -> set[str]:
    """How many schemas named LIKE ``like`` each node holds (the coordinator's and both workers')."""
    found = on_all_nodes(engine, f"SELECT count(*) FROM pg_namespace WHERE nspname LIKE '{like}'")
    assert len(found) == 3
    return set(found.values())


def assert_tenant(engine: sa.Engine, schema: str) -> None:
    """A tenant schema, every table of it a tenant table, on a worker."""
    assert schema in tenant_schemas(engine)
    assert set(distributed_tables(engine, schema).values()) == {"n"}
    assert set(distributed_tables(engine, schema)) >= {*DATA_TABLES, "items"}
    assert node_of(engine, schema) in workers(engine)


# ------------------------------------------------------------------------------------- export, import
def test_export_then_import_builds_a_tenant_schema_with_equal_rows_and_its_sequences_set(
    citus_engine: sa.Engine, chain: Chain, run: Runner, tmp_path: Path
) -> None:
    fill(citus_engine, chain, "src")
    file = str(tmp_path / "src.wstx")
    run("export", "src", "-o", file)
    run("import", file, "--as", "copy")

    assert data_rows(citus_engine, "project_copy") == data_rows(citus_engine, "project_src")
    assert len(data_rows(citus_engine, "project_copy")["code_chunks"]) == 40
    assert_tenant(citus_engine, "project_copy")
    assert next_item_id(citus_engine, "project_copy") == 4  # the sequence set past the copied ids
    row = registry_row(citus_engine, "copy")
    assert row is not None and (row["revision"], row["status"], row["last_action"]) == (
        ITEMS_REVISION,
        "ready",
        "import",
    )

    # a damaged file: the import's transaction rolls back on every node (the schema's DDL reached a worker)
    damaged = tmp_path / "damaged.wstx"
    damaged.write_bytes(Path(file).read_bytes())
    damage(damaged, damaged.stat().st_size // 2)  # inside code_chunks' vectors
    code, _, err = cli(citus_engine.url, "-c", str(chain.config_path), "import", str(damaged), "--as", "dmg")
    assert code == 1 and "checksum does not match" in err, err
    assert schema_count_on_nodes(citus_engine, "project\\_dmg") == {"0"}
    assert registry_row(citus_engine, "dmg") is None and "project_dmg" not in tenant_schemas(citus_engine)

    # an export at an older revision, imported and run on to head in the same transaction
    assert fleet.provision(citus_engine, chain, ["old"], target=BEHIND).ok
    with citus_engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO project_old.repositories (path, name) VALUES ('/old', 'old')"))
    old_file = str(tmp_path / "old.wstx")
    run("export", "old", "-o", old_file)
    run("import", old_file, "--as", "old-up", "--upgrade")
    assert (
        data_rows(citus_engine, "project_old_up")["repositories"]
        == data_rows(citus_engine, "project_old")["repositories"]
    )
    assert_tenant(citus_engine, "project_old_up")
    assert assert_consistent(citus_engine) == {
        "project_copy": ITEMS_REVISION,
        "project_old": BEHIND,
        "project_old_up": ITEMS_REVISION,
        "project_src": ITEMS_REVISION,
    }


# ----------------------------------------------------------------------------------------------- clone
def test_clone_with_and_without_data_makes_independent_tenant_schemas(
    citus_engine: sa.Engine, chain: Chain, run: Runner
) -> None:
    fill(citus_engine, chain, "src")
    run("clone", "src", "full")
    run("clone", "src", "bare", "--no-data")

    before = data_rows(citus_engine, "project_src")
    assert data_rows(citus_engine, "project_full") == before
    assert data_rows(citus_engine, "project_bare") == {t: [] for t in DATA_TABLES}
    for schema in ("project_full", "project_bare"):
        assert_tenant(citus_engine, schema)
    assert next_item_id(citus_engine, "project_full") == 4
    assert next_item_id(citus_engine, "project_bare") == 1
    assert {p: (registry_row(citus_engine, p) or {}).get("last_action") for p in ("full", "bare")} == {
        "full": "clone",
        "bare": "clone",
    }
    with citus_engine.begin() as conn:  # independent of its source
        conn.execute(sa.text("DELETE FROM project_src.code_chunks"))
    assert data_rows(citus_engine, "project_full") == before
    assert set(assert_consistent(citus_engine).values()) == {ITEMS_REVISION}


# ------------------------------------------------------------------------------------------------ drop
def test_drop_one_and_in_bulk_leaves_nothing_on_any_node(citus_engine: sa.Engine, chain: Chain, run: Runner) -> None:
    projects = [f"d-{i}" for i in range(4)]
    assert fleet.provision(citus_engine, chain, projects, jobs=2).ok
    assert schema_count_on_nodes(citus_engine, "project\\_d\\_%") == {"4"}  # every node knows every schema

    assert run("drop", "d-0", "--yes")[1] == "Dropped project_d_0.\n"
    out, _ = run("drop", "--match", "d-[12]", "--jobs", "2", "--yes", "--json")
    results = json.loads(out)["results"]
    assert {(r["project_id"], r["status"]) for r in results} == {("d-1", "ok"), ("d-2", "ok")}

    assert schema_count_on_nodes(citus_engine, "project\\_d\\_%") == {"1"}
    assert tenant_schemas(citus_engine) == {"project_d_3"}  # Citus's catalog forgot the dropped ones
    assert assert_consistent(citus_engine) == {"project_d_3": ITEMS_REVISION}


def lifecycle_queries(url: URL, chain: Chain, operation: Operation, ids: list[str]) -> list[str]:
    """The queries a warm fleet run of ``operation`` over ``ids`` sends to the coordinator."""
    with WireRecorder(url) as wire:
        return warm_run_queries(wire, chain, operation, ids)


@pytest.mark.parametrize(("what", "per_schema"), [("exec", 4), ("drop", 5)])
def test_exec_and_bulk_drop_take_few_round_trips_per_schema(
    citus_engine: sa.Engine, chain: Chain, what: str, per_schema: int
) -> None:
    """Each schema's transaction in as few round trips as Citus takes: exec, BEGIN with the lock and the
    guard (its wait bounded by a query), the SETs (lock timeout, search_path), the SQL, COMMIT; a bulk drop,
    BEGIN with the lock and what is there to drop, the SETs, each DROP SCHEMA alone, the registry row with
    COMMIT. No SET is sent once a worker is reached (it would be a round trip to every worker there)."""
    ids = [f"rt-{i}" for i in range(8)]
    assert fleet.provision(citus_engine, chain, ids, jobs=2).ok
    operation = exec_operation("INSERT INTO items (name) VALUES (current_schema())")
    if what == "drop":
        operation = drop_operation()
    two = lifecycle_queries(citus_engine.url, chain, operation, ids[:2])
    six = lifecycle_queries(citus_engine.url, chain, operation, ids[2:])

    assert (len(six) - len(two)) / 4 == per_schema, six
    mine = [q for q in six if "project_rt_6" in q]  # the round trips that name one schema
    first = next(i for i, q in enumerate(six) if q in mine)
    trips = six[first : first + per_schema]
    assert trips[0].startswith("BEGIN") and "pg_advisory_xact_lock" in trips[0] and "SET" not in trips[0], trips
    assert "SET LOCAL lock_timeout" in trips[1] and "SELECT" not in trips[1], trips
    assert all("SET LOCAL" not in q for q in trips[2:]), trips
    assert trips[-1].endswith("COMMIT") or trips[-1].endswith("COMMIT;"), trips
    if what == "exec":
        for project_id in ids[2:]:
            schema = f"project_{project_id.replace('-', '_')}"
            with citus_engine.connect() as conn:
                names = conn.execute(sa.text(f"SELECT name FROM {schema}.items")).scalars().all()
            assert names == [schema]
    else:
        assert assert_consistent(citus_engine) == {}
        assert all(registry_row(citus_engine, p) is None for p in ids)
        assert schema_count_on_nodes(citus_engine, "project\\_rt\\_%") == {"0"}  # gone from every node


# ------------------------------------------------------------------------ quarantine, restore, purge
def test_quarantine_keeps_each_tenant_on_its_worker_until_restore_or_purge(
    citus_engine: sa.Engine, chain: Chain, run: Runner
) -> None:
    fill(citus_engine, chain, "keep")
    assert fleet.provision(citus_engine, chain, ["gone", "expired"]).ok
    rows = data_rows(citus_engine, "project_keep")
    nodes = {p: node_of(citus_engine, f"project_{p}") for p in ("keep", "gone", "expired")}

    run("drop", "keep", "gone", "expired", "--retain", "7d", "--yes")
    assert {(p, (registry_row(citus_engine, p) or {}).get("status")) for p in nodes} == {(p, "dropped") for p in nodes}
    for project in nodes:  # renamed aside: still a tenant schema, on the same worker, with its rows
        assert f"dropped_{project}" in tenant_schemas(citus_engine)
        assert node_of(citus_engine, f"dropped_{project}") == nodes[project]
    assert data_rows(citus_engine, "dropped_keep") == rows
    listed = json.loads(run("purge", "--list", "--json")[0])
    assert [(q["project_id"], q["schema"]) for q in listed] == [
        ("expired", "dropped_expired"),
        ("gone", "dropped_gone"),
        ("keep", "dropped_keep"),
    ]

    assert run("restore", "keep")[1] == "Restored keep from dropped_keep.\n"
    assert data_rows(citus_engine, "project_keep") == rows
    assert node_of(citus_engine, "project_keep") == nodes["keep"]
    assert next_item_id(citus_engine, "project_keep") == 4

    run("purge", "gone", "--yes")
    with citus_engine.begin() as conn:  # past its date
        conn.execute(
            sa.text(
                "UPDATE project_registry.workspace_config SET metadata = jsonb_set(metadata, '{quarantine,until}', "
                "to_jsonb(now() - interval '1 day')) WHERE project_id = 'expired'"
            )
        )
    assert run("drop", "--purge-expired", "--yes")[1] == "Purged 1 quarantined project(s) past their date.\n"
    assert schema_count_on_nodes(citus_engine, "dropped\\_%") == {"0"}
    assert tenant_schemas(citus_engine) == {"project_keep"}
    assert registry_row(citus_engine, "gone") is None and registry_row(citus_engine, "expired") is None
    assert assert_consistent(citus_engine) == {"project_keep": ITEMS_REVISION}
    assert "current" in run("ensure", "keep")[0].split()


# ------------------------------------------------------------------------------------------------ exec
EXEC_SCRIPT = """
-- notes, made by a script: a table, its index, rows from the project's own
CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL);
CREATE INDEX ix_notes_body ON notes (body);
INSERT INTO notes (body) SELECT 'note on ' || name FROM repositories;
"""


def test_exec_runs_a_script_of_several_statements_on_each_tenants_worker(
    citus_engine: sa.Engine, chain: Chain, run: Runner, tmp_path: Path
) -> None:
    """A script of DDL and queries, as `exec -f` takes it: each project's new table is a tenant table of its
    schema, placed with the schema's other tables on its worker, where its rows are."""
    assert fleet.provision(citus_engine, chain, ["e-0", "e-1"]).ok
    with citus_engine.begin() as conn:
        for project in ("e-0", "e-1"):
            conn.execute(
                sa.text(f"INSERT INTO project_{project.replace('-', '_')}.repositories (path, name) VALUES (:p, :p)"),
                {"p": project},
            )
    script = tmp_path / "notes.sql"
    script.write_text(EXEC_SCRIPT)
    results = json.loads(run("exec", "--all", "-f", str(script), "--json")[0])["results"]
    assert {(r["project_id"], r["status"], r["note"]) for r in results} == {
        ("e-0", "ok", "1 row"),
        ("e-1", "ok", "1 row"),
    }, results

    for project in ("e-0", "e-1"):
        schema = f"project_{project.replace('-', '_')}"
        assert distributed_tables(citus_engine, schema)["notes"] == "n"
        node = node_of(citus_engine, schema)  # one worker holds all of it, the new table's shard too
        with citus_engine.connect() as conn:
            shard = conn.execute(
                sa.text("SELECT shard_name FROM citus_shards WHERE table_name = CAST(:t AS regclass)"),
                {"t": f"{schema}.notes"},
            ).scalar_one()
        host, port = node.rsplit(":", 1)
        on_worker = sa.create_engine(citus_engine.url.set(host=host, port=int(port)), poolclass=sa.pool.NullPool)
        try:
            with on_worker.connect() as conn:  # the rows, read on the worker itself
                assert conn.execute(sa.text(f"SELECT body FROM {shard}")).scalars().all() == [f"note on {project}"]
        finally:
            on_worker.dispose()


@pytest.fixture(scope="module")
def coordinator_pooler(citus_url: str) -> Iterator[pgbouncer.PgBouncer]:
    """PgBouncer in transaction mode in front of the coordinator (as Citus's own docs set one up)."""
    try:
        pgbouncer.executable()
    except pgbouncer.PgBouncerMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    bouncer = pgbouncer.start(sa.engine.make_url(citus_url))
    try:
        yield bouncer
    finally:
        bouncer.stop()


def test_session_state_an_exec_sets_stays_in_its_transaction_behind_a_pooler(
    citus_engine: sa.Engine, chain: Chain, run: Runner, coordinator_pooler: pgbouncer.PgBouncer
) -> None:
    """The SQL of `exec` is the user's: a `SET` without LOCAL or a session advisory lock in it keeps for its
    own statements, and nothing of it reaches the pooler's next client, whether the project's transaction
    committed or failed. One job: another project's transaction running at the same time would find the
    lock taken."""
    assert fleet.provision(citus_engine, chain, ["p-0", "p-1"]).ok
    pooled = coordinator_pooler.url(citus_engine.url.database)
    run(
        "exec", "--all", "-j", "1",
        "-c", "SET lock_timeout = '9s'; "
        "INSERT INTO repositories (path, name) SELECT current_schema(), "
        "current_setting('lock_timeout') || ' ' || pg_try_advisory_lock(42)::text",
        url=pooled,
    )  # fmt: skip
    for project in ("p-0", "p-1"):
        schema = f"project_{project.replace('-', '_')}"
        with citus_engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT path, name FROM {schema}.repositories")).all()
        assert [tuple(r) for r in rows] == [(schema, "9s true")]  # its settings, and the lock, for its SQL
    pgbouncer.assert_no_leak(pooled, citus_engine)

    # a project whose SQL fails rolls back, and its session lock is released all the same
    code, _, err = cli(
        pooled, "-c", str(chain.config_path), "exec", "p-0", "-c",
        "SET lock_timeout = '8s'; SELECT pg_try_advisory_lock(43); "
        "INSERT INTO repositories (path, name) VALUES (current_schema(), 'again')",
    )  # fmt: skip
    assert code == 1 and "duplicate key" in err, err
    pgbouncer.assert_no_leak(pooled, citus_engine)


# ------------------------------------------------------------------------------------------------ move
@pytest.fixture(scope="module")
def second_database(citus_engine: sa.Engine) -> Iterator[sa.Engine]:
    """Another database of the cluster, Citus in it on every node, its registry made (`init`)."""
    with another_database(citus_engine, "wst_citus_second") as url:
        engine = sa.create_engine(url)
        try:
            code, _, err = cli(url, "init")
            assert code == 0, err
            yield engine
        finally:
            engine.dispose()


@pytest.mark.slow
def test_move_to_another_database_of_the_cluster(
    citus_engine: sa.Engine, chain: Chain, run: Runner, second_database: sa.Engine
) -> None:
    fill(citus_engine, chain, "mover")
    rows = data_rows(citus_engine, "project_mover")
    target = second_database.url.render_as_string(hide_password=False)
    try:
        out, _ = run("move", "mover", "--to-url", target, "--yes", "--json")
        assert json.loads(out)["steps"] == ["quarantine", "export", "import", "verify", "purge"]
        assert data_rows(second_database, "project_mover") == rows
        assert_tenant(second_database, "project_mover")
        assert next_item_id(second_database, "project_mover") == 4
        row = registry_row(second_database, "mover")
        assert row is not None and (row["revision"], row["status"]) == (ITEMS_REVISION, "ready")
        # nothing of it is left in the source database, on any node
        assert schema_count_on_nodes(citus_engine, "%mover") == {"0"}
        assert registry_row(citus_engine, "mover") is None
        assert assert_consistent(citus_engine) == {}
    finally:
        reset_citus(second_database)
