"""Citus (tests marked citus): resetting a coordinator, tenant schemas, and what every node holds."""

from __future__ import annotations

import sqlalchemy as sa

from workspace_tool.managers import cache

# Session settings as if the role's default were schema-based sharding on (psycopg2: libpq options).
SHARDING_ON = {"options": "-c citus.enable_schema_based_sharding=on"}
SCRATCH_SCHEMAS = r"^(workspace_drift_|workspace_verify_|project_autogen_)"  # reference, verify, autogenerate


def reset_citus(engine: sa.Engine) -> None:
    """On a Citus coordinator: drop every project schema (wherever it lives) and any scratch schema left,
    empty the registry, forget the process caches."""
    with engine.begin() as conn:
        schemas = conn.execute(
            sa.text("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'project\\_%' OR nspname ~ :scratch"),
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
