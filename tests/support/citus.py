"""Citus (tests marked citus): resetting a coordinator, tenant schemas, and what every node holds."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import URL

from support.cli import run_cli
from workspace_tool.managers import cache

# Session settings as if the role's default were schema-based sharding on (psycopg2: libpq options).
SHARDING_ON = {"options": "-c citus.enable_schema_based_sharding=on"}
SCRATCH_SCHEMAS = r"^(workspace_drift_|workspace_verify_|project_autogen_)"  # reference, verify, autogenerate


def reset_citus(engine: sa.Engine) -> None:
    """On a Citus coordinator: drop every project schema (wherever it lives), every quarantined one and any
    scratch schema left, empty the registry, forget the process caches."""
    with engine.begin() as conn:
        schemas = conn.execute(
            sa.text(
                "SELECT nspname FROM pg_namespace "
                "WHERE nspname LIKE 'project\\_%' OR nspname LIKE 'dropped\\_%' OR nspname ~ :scratch"
            ),
            {"scratch": SCRATCH_SCHEMAS},
        ).scalars()
        for schema in [s for s in schemas if s != "project_registry"]:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        if conn.execute(sa.text("SELECT to_regclass('project_registry.workspace_config')")).scalar():
            conn.execute(sa.text("DELETE FROM project_registry.workspace_config"))
    cache.clear()


def tenant_schemas(engine: sa.Engine) -> set[str]:
    """The schemas Citus has made tenant schemas (each lives whole on one worker)."""
    with engine.connect() as conn:
        return set(
            conn.execute(
                sa.text("SELECT n.nspname FROM pg_dist_schema s JOIN pg_namespace n ON n.oid = s.schemaid")
            ).scalars()
        )


def on_all_nodes(engine: sa.Engine, sql: str) -> dict[str, str]:
    """'host:port' of every node (coordinator included) -> what ``sql`` (one value) returned there."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT d.nodename || ':' || d.nodeport, r.result FROM run_command_on_all_nodes(:sql) r "
                "JOIN pg_dist_node d ON d.nodeid = r.nodeid"
            ),
            {"sql": sql},
        ).all()
    return {str(r[0]): str(r[1]) for r in rows}


def scratch_leftovers(engine: sa.Engine) -> dict[str, str]:
    """Scratch schemas (reference, verify-fast-path, autogenerate) found on any node: nothing, node by node."""
    found = on_all_nodes(
        engine,
        f"SELECT coalesce(string_agg(nspname, ','), '') FROM pg_namespace WHERE nspname ~ '{SCRATCH_SCHEMAS}'",
    )
    return {node: names for node, names in found.items() if names}


def cli(url: URL | str, *args: str) -> tuple[int, str, str]:
    """``workspace-tool --database-url URL ARGS``: (exit code, stdout, stderr)."""
    result = run_cli("--database-url", str(url if isinstance(url, str) else url.render_as_string(False)), *args)
    return result.exit_code, result.stdout, result.stderr


def workers(engine: sa.Engine) -> set[str]:
    """'host:port' of every active worker."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT node_name, node_port FROM citus_get_active_worker_nodes()")).all()
    return {f"{r[0]}:{r[1]}" for r in rows}


def distributed_tables(engine: sa.Engine, schema: str) -> dict[str, str]:
    """table -> Citus partition method ('n': a tenant schema's table) of the schema's distributed tables."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT c.relname, p.partmethod FROM pg_dist_partition p JOIN pg_class c ON c.oid = p.logicalrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :s"
            ),
            {"s": schema},
        ).all()
    return {str(r[0]): str(r[1]) for r in rows}


@contextmanager
def another_database(engine: sa.Engine, name: str) -> Iterator[URL]:
    """A second database of the cluster (the coordinator's URL to it), made as the first one was: created
    on every node, Citus in each (a worker's database needs the extension before the coordinator can add
    it), the coordinator and the workers registered in the coordinator's. Dropped on every node at the end.
    Each node is reached at the address the coordinator knows it by, as ``engine``'s user."""
    with engine.connect() as conn:
        nodes = [(str(r[0]), int(r[1]), int(r[2])) for r in conn.execute(
            sa.text("SELECT nodename, nodeport, groupid FROM pg_dist_node WHERE noderole = 'primary' ORDER BY groupid")
        )]  # fmt: skip
    coordinator = next((host, port) for host, port, group in nodes if group == 0)
    urls = [engine.url.set(host=host, port=port) for host, port, _ in nodes]

    def on(url: URL, *statements: str) -> None:
        node = sa.create_engine(url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
        try:
            with node.connect() as conn:
                for statement in statements:
                    conn.execute(sa.text(statement))
        finally:
            node.dispose()

    try:
        for url in urls:
            on(url, f'CREATE DATABASE "{name}"')
            on(url.set(database=name), "CREATE EXTENSION citus")
        registered = [f"SELECT citus_set_coordinator_host('{coordinator[0]}', {coordinator[1]})"]
        registered += [f"SELECT citus_add_node('{host}', {port})" for host, port, group in nodes if group != 0]
        on(engine.url.set(database=name), *registered)
        yield engine.url.set(database=name)
    finally:
        for url in urls:
            on(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
