"""SQL text shared by every module: quoting, literals, the per-schema advisory lock and the search_path.

Each piece of SQL text is written once here; the schema transaction, the registry bootstrap and the plain
Alembic path use these, in their bound-parameter or literal form.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

LOCK_NAMESPACE = "workspace_tool:"
REGISTRY_LOCK_KEY = LOCK_NAMESPACE + "#registry"


def quote_ident(name: str) -> str:
    """Quote an identifier for PostgreSQL (always, even when it would not need it)."""
    return '"' + name.replace('"', '""') + '"'


def sql_literal(value: str | None) -> str:
    """A SQL string literal (standard_conforming_strings), or NULL."""
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def advisory_lock_sql(key: str) -> str:
    """Take the transaction-level advisory lock of ``key`` (a SQL expression: a literal or a parameter)."""
    return f"SELECT pg_advisory_xact_lock(hashtextextended({key}, 0))"


# One statement, so taking the lock is a single round trip.
LOCK_SQL = advisory_lock_sql(":key")


def lock_key(schema: str) -> str:
    """The advisory lock key of a schema: different schemas never wait for each other."""
    return LOCK_NAMESPACE + schema


def lock_statement(schema: str) -> str:
    """The schema's lock as a literal statement, for a batch or a script."""
    return advisory_lock_sql(sql_literal(lock_key(schema)))


def lock_timeout_statement(timeout_ms: int) -> str:
    """Bound every lock wait of the transaction (SQLSTATE 55P03 when exceeded)."""
    return f"SET LOCAL lock_timeout = '{int(timeout_ms)}ms'"


# Citus (schema-based sharding), each for the current transaction only. A schema created after
# CITUS_TENANT is a tenant schema, living whole on one worker; after CITUS_NOT_TENANT it stays an ordinary
# schema whose tables are the coordinator's (and CREATE SCHEMA IF NOT EXISTS of an existing ordinary
# schema does not turn it into a tenant, which it does with sharding on). SET LOCAL commands reach the
# workers only after CITUS_PROPAGATE_SET, and only as SET statements (not set_config).
CITUS_TENANT = "SET LOCAL citus.enable_schema_based_sharding TO on"
CITUS_NOT_TENANT = "SET LOCAL citus.enable_schema_based_sharding TO off"
CITUS_PROPAGATE_SET = "SET LOCAL citus.propagate_set_commands TO 'local'"


def lock_timeout_statements(timeout_ms: int, *, citus: bool = False) -> list[str]:
    """``lock_timeout_statement``, which on Citus must also bound the waits on the workers."""
    return [*([CITUS_PROPAGATE_SET] if citus else []), lock_timeout_statement(timeout_ms)]


def search_path_sql(schema: str, extension_schema: str) -> str:
    """The project schema first, then only the schema holding the vector extension."""
    path = [quote_ident(schema)]
    if extension_schema not in (schema, "pg_catalog"):
        path.append(quote_ident(extension_schema))
    return "SET LOCAL search_path TO " + ", ".join(path)


def lock_schema(conn: Connection, schema: str) -> None:
    """Per-schema transaction-level advisory lock: other projects are never blocked."""
    conn.execute(text(LOCK_SQL), {"key": lock_key(schema)})
