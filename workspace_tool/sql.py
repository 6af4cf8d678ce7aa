"""SQL text shared by every module: quoting, literals, the per-schema advisory lock and the search_path."""

from __future__ import annotations

from sqlalchemy import Connection, text

from workspace_tool.naming import quote_ident

LOCK_NAMESPACE = "workspace_tool:"
REGISTRY_LOCK_KEY = LOCK_NAMESPACE + "#registry"

# One statement, so taking the lock is a single round trip.
LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"


def lock_key(schema: str) -> str:
    return LOCK_NAMESPACE + schema


def search_path_sql(schema: str, extension_schema: str) -> str:
    """The project schema first, then only the schema holding the vector extension."""
    path = [quote_ident(schema)]
    if extension_schema not in (schema, "pg_catalog"):
        path.append(quote_ident(extension_schema))
    return "SET LOCAL search_path TO " + ", ".join(path)


def lock_schema(conn: Connection, schema: str) -> None:
    """Per-schema transaction-level advisory lock: other projects are never blocked."""
    conn.execute(text(LOCK_SQL), {"key": lock_key(schema)})
