"""One project's statements sent in one round trip on the raw driver cursor of conn's transaction (one by
one on a flavor that takes no batch: Citus), the last one's result kept: how exec and drop reach each
schema of a fleet run in as few round trips as its migration's fast lane does. No parameters: a '%' is the
SQL's own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from workspace_tool.flavor import Flavor
from workspace_tool.sql import lock_statement, sql_literal


def prelude(flavor: Flavor, schema: str, lock_timeout_ms: int) -> list[str]:
    """The lock timeout, then the project's lock."""
    return [*flavor.lock_timeout_statements(lock_timeout_ms), lock_statement(schema)]


def schema_guard(schema: str) -> str:
    """Raises SQLSTATE 3F000 (dberrors.INVALID_SCHEMA_NAME: the transaction rolls back) unless ``schema``
    exists: a built-in cast, checked when the statement runs (after the lock statement before it). Cheaper
    than the registry's plpgsql guard (expect_version): measured 0.07 ms less per project. The SQL that
    follows may raise 3F000 too (a schema it names): ``still_there`` tells them apart."""
    return f"SELECT {sql_literal(schema)}::regnamespace"


_EXISTS = text("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :s)")


def still_there(conn: Connection, schema: str) -> bool:
    """After a rolled-back batch: whether ``schema`` exists (a short transaction of its own)."""
    with conn.begin():
        return bool(conn.execute(_EXISTS, {"s": schema}).scalar())


def send(conn: Connection, flavor: Flavor, statements: Sequence[str]) -> tuple[int, Any]:
    """Send ``statements`` in conn's transaction; (the last one's rowcount, its first row or None)."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    dbapi_error = conn.dialect.loaded_dbapi.Error
    try:
        if flavor.batches:
            cursor.execute(";\n".join(s.rstrip().rstrip(";") for s in statements))
        else:
            for statement in statements:
                cursor.execute(statement)
        row = cursor.fetchone() if cursor.description is not None else None
        return int(cursor.rowcount), row
    except dbapi_error as exc:  # as SQLAlchemy raises it: the fleet's retries and messages know it
        invalidated = conn.invalidated or bool(getattr(conn.connection.dbapi_connection, "closed", 0))
        raise DBAPIError.instance(
            "lifecycle batch", None, exc, dbapi_error, connection_invalidated=invalidated
        ) from exc
    finally:
        cursor.close()
