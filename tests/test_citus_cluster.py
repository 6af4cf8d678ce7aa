"""The Citus cluster that ``tox -e citus`` provides works the way workspace-tool will need it (issue 11):
two active workers, schema-based sharding placing a new schema on one worker, pgvector with an HNSW index
in a tenant schema queried through the coordinator, and ``SET LOCAL`` keeping a schema on the coordinator.

These run only with ``-m citus`` (``tox -e citus``), against ``citus_url`` (conftest.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from workspace_tool import flavor
from workspace_tool.errors import ConfigurationError
from workspace_tool.sql import quote_ident
from workspace_tool.urls import sync_url

pytestmark = pytest.mark.citus

# The node holding a tenant schema: where its tables' shards are placed, from Citus's catalog tables
# (pg_catalog: found whatever the search_path; public.citus_schemas lists tenant schemas but not their node,
# and citus_shards asks every node for shard sizes).
SCHEMA_NODE = sa.text(
    "SELECT DISTINCT n.nodename, n.nodeport FROM pg_dist_schema s "
    "JOIN pg_dist_partition p ON p.colocationid = s.colocationid "
    "JOIN pg_dist_shard sh ON sh.logicalrelid = p.logicalrelid "
    "JOIN pg_dist_placement pl ON pl.shardid = sh.shardid "
    "JOIN pg_dist_node n ON n.groupid = pl.groupid AND n.noderole = 'primary' "
    "WHERE s.schemaid = (SELECT oid FROM pg_namespace WHERE nspname = :schema)"
)


@pytest.fixture(scope="module")
def coordinator(citus_url: str) -> Iterator[sa.Engine]:
    """Sessions on the coordinator with schema-based sharding on: every schema they create is a tenant."""
    engine = sa.create_engine(
        sync_url(citus_url),
        poolclass=sa.pool.NullPool,
        connect_args={"options": "-c citus.enable_schema_based_sharding=on"},
    )
    yield engine
    engine.dispose()


@pytest.fixture
def new_schema(coordinator: sa.Engine) -> Iterator[str]:
    """A fresh schema name, dropped (with whatever it holds, on any node) after the test."""
    name = f"wst_smoke_{uuid.uuid4().hex[:10]}"
    yield name
    with coordinator.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {quote_ident(name)} CASCADE"))


@pytest.fixture(scope="module")
def vector_schema(coordinator: sa.Engine) -> str:
    """The schema of the vector extension; created as `workspace-tool init` does when missing, kept out of
    schema-based sharding (an ordinary schema that Citus propagates to every node with the extension)."""
    with coordinator.begin() as conn:
        try:
            return flavor.find(conn).extension_schema
        except ConfigurationError:  # not installed yet
            pass
        conn.execute(sa.text("SET LOCAL citus.enable_schema_based_sharding TO off"))
        conn.execute(sa.text("CREATE SCHEMA IF NOT EXISTS workspace_extensions"))
        conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector WITH SCHEMA workspace_extensions"))
    return "workspace_extensions"


def tenant_schemas(conn: sa.Connection) -> set[str]:
    return set(conn.execute(sa.text("SELECT schema_name::text FROM public.citus_schemas")).scalars())


def active_workers(conn: sa.Connection) -> set[tuple[str, int]]:
    rows = conn.execute(sa.text("SELECT node_name, node_port FROM citus_get_active_worker_nodes()")).all()
    return {(str(r[0]), int(r[1])) for r in rows}


def test_the_coordinator_sees_two_active_workers(coordinator: sa.Engine) -> None:
    with coordinator.connect() as conn:
        assert len(active_workers(conn)) == 2
        coordinator_rows = conn.execute(
            sa.text("SELECT count(*) FROM pg_dist_node WHERE groupid = 0 AND isactive AND noderole = 'primary'")
        ).scalar()
    assert coordinator_rows == 1  # the coordinator registered itself (citus_set_coordinator_host)


def test_a_new_schema_becomes_a_tenant_schema_placed_on_one_worker(coordinator: sa.Engine, new_schema: str) -> None:
    schema = quote_ident(new_schema)
    with coordinator.connect() as conn:
        with conn.begin():
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
            conn.execute(sa.text(f"CREATE TABLE {schema}.notes (id bigint PRIMARY KEY, body text)"))
        conn.execute(sa.text(f"INSERT INTO {schema}.notes VALUES (1, 'one'), (2, 'two')"))
        conn.commit()

        assert new_schema in tenant_schemas(conn)
        nodes = conn.execute(SCHEMA_NODE, {"schema": new_schema}).all()
        assert len(nodes) == 1
        node = (str(nodes[0][0]), int(nodes[0][1]))
        assert node in active_workers(conn)
        shard = conn.execute(
            sa.text("SELECT shard_name FROM citus_shards WHERE table_name = CAST(:t AS regclass)"),
            {"t": f"{schema}.notes"},
        ).scalar_one()
        # The shard (the table's rows) exists on that worker and on no other node.
        holders = conn.execute(
            sa.text(
                "SELECT n.nodename, n.nodeport FROM run_command_on_all_nodes("
                "format('SELECT to_regclass(%L) IS NOT NULL', CAST(:shard AS text))) r "
                "JOIN pg_dist_node n ON n.nodeid = r.nodeid WHERE r.result = 't'"
            ),
            {"shard": shard},
        ).all()
        assert [(str(h[0]), int(h[1])) for h in holders] == [node]
        assert conn.execute(sa.text(f"SELECT body FROM {schema}.notes ORDER BY id")).scalars().all() == ["one", "two"]


def test_pgvector_hnsw_nearest_neighbours_in_a_tenant_schema(
    coordinator: sa.Engine, new_schema: str, vector_schema: str
) -> None:
    schema = quote_ident(new_schema)
    with coordinator.connect() as conn:
        with conn.begin():
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
            conn.execute(sa.text(f"SET LOCAL search_path TO {schema}, {quote_ident(vector_schema)}"))
            conn.execute(sa.text("CREATE TABLE chunks (id bigint PRIMARY KEY, embedding vector(3))"))
            conn.execute(sa.text("CREATE INDEX chunks_embedding_hnsw ON chunks USING hnsw (embedding vector_l2_ops)"))
            conn.execute(
                sa.text("INSERT INTO chunks VALUES (1, '[1,0,0]'), (2, '[0,1,0]'), (3, '[0,0,1]'), (4, '[1,1,0]')")
            )

        with conn.begin():
            assert new_schema in tenant_schemas(conn)
            conn.execute(sa.text(f"SET LOCAL search_path TO {schema}, {quote_ident(vector_schema)}"))
            # Planner settings reach the worker's query only when Citus propagates SET LOCAL: seqscan off
            # there makes the worker answer from the HNSW index.
            conn.execute(sa.text("SET LOCAL citus.propagate_set_commands TO 'local'"))
            conn.execute(sa.text("SET LOCAL enable_seqscan TO off"))
            query = "SELECT id FROM chunks ORDER BY embedding <-> '[0.9,0.2,0]' LIMIT 2"
            plan = "\n".join(conn.execute(sa.text(f"EXPLAIN (COSTS OFF) {query}")).scalars())
            nearest = conn.execute(sa.text(query)).scalars().all()
    assert nearest == [1, 4]
    assert "Custom Scan (Citus Adaptive)" in plan
    assert "Index Scan using chunks_embedding_hnsw_" in plan  # the shard's copy of the index, on the worker


def test_set_local_sharding_off_keeps_a_schema_on_the_coordinator(coordinator: sa.Engine, new_schema: str) -> None:
    local = quote_ident(new_schema)
    tenant = quote_ident(new_schema + "_t")
    try:
        with coordinator.connect() as conn:
            with conn.begin():
                conn.execute(sa.text("SET LOCAL citus.enable_schema_based_sharding TO off"))
                conn.execute(sa.text(f"CREATE SCHEMA {local}"))
                conn.execute(sa.text(f"CREATE TABLE {local}.registry (id text PRIMARY KEY)"))
                conn.execute(sa.text(f"INSERT INTO {local}.registry VALUES ('acme')"))
            # SET LOCAL ended with the transaction: the session's setting applies again.
            with conn.begin():
                conn.execute(sa.text(f"CREATE SCHEMA {tenant}"))
                conn.execute(sa.text(f"CREATE TABLE {tenant}.t (id int)"))

            schemas = tenant_schemas(conn)
            assert new_schema not in schemas
            assert new_schema + "_t" in schemas
            distributed = conn.execute(
                sa.text("SELECT count(*) FROM pg_dist_partition WHERE logicalrelid = CAST(:t AS regclass)"),
                {"t": f"{local}.registry"},
            ).scalar()
            assert distributed == 0  # a plain table of the coordinator, not known to Citus
            assert conn.execute(sa.text(f"SELECT id FROM {local}.registry")).scalars().all() == ["acme"]
    finally:
        with coordinator.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {tenant} CASCADE"))
