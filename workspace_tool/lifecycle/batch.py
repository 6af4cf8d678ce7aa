"""One project's statements as one transaction of their own, the last one's result kept: how exec and drop
reach each schema of a fleet run in as few round trips as its migration's fast lane does (ONE on
PostgreSQL over psycopg2, sent by ``send.send_reply``; one per statement on a flavor that takes no batch:
Citus). No parameters: a '%' is the SQL's own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from workspace_tool.flavor import Flavor
from workspace_tool.schema import send
from workspace_tool.schema.plan import BEGIN, COMMIT, SET_ISOLATION
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


def transaction(
    conn: Connection, flavor: Flavor, schema: str, statements: Sequence[str], *, then: Sequence[str] = ()
) -> tuple[int, Any]:
    """``statements`` as one transaction of their own (conn not in one); returns the row count of the last
    one (-1: none) and the first column of its first row (None: no row).

    On a flavor that batches, over psycopg2: ONE round trip, one implicit transaction with its isolation level
    first (the first ensure's way: ``send.send_batch(implicit=True)``); with ``then``, statements that end the
    transaction after the others (exec's session reset behind a pooler), two: BEGIN and ``statements``, then
    ``then`` and COMMIT. SQL that opened a transaction block of its own (a BEGIN in exec's SQL, which a
    transaction opened by the library would have taken as a warning) is committed as that transaction would
    have been. Elsewhere (Citus, another driver) in ``conn.begin()``, one batch or, on a flavor that takes
    none, one statement per round trip. Database errors are raised as SQLAlchemy DBAPIErrors (the fleet's
    retries and messages know them), after the transaction was rolled back."""
    if conn.dialect.driver != "psycopg2" or not flavor.batches:
        with conn.begin():
            rows, row = _send(conn, flavor, statements)
            if then:
                _send(conn, flavor, then)
        return rows, None if row is None else row[0]
    try:
        if then:
            trips = [_joined([BEGIN, *statements]), _joined([*then, COMMIT])]
            reply = send.send_reply(conn, schema, trips, rollback=True)
        else:
            reply = send.send_reply(conn, schema, _joined([SET_ISOLATION, *statements]))
            if send.in_transaction_block(conn):
                send.send_raw(conn, schema, COMMIT)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _as_dbapi_error(conn, exc) from exc
    return reply.rows, reply.value


def _joined(statements: Sequence[str]) -> str:
    return ";\n".join(s.rstrip().rstrip(";") for s in statements)


def _as_dbapi_error(conn: Connection, exc: Exception) -> Exception:
    dbapi_error = conn.dialect.loaded_dbapi.Error
    invalidated = conn.invalidated or bool(getattr(conn.connection.dbapi_connection, "closed", 0))
    return DBAPIError.instance("lifecycle batch", None, exc, dbapi_error, connection_invalidated=invalidated)


def _send(conn: Connection, flavor: Flavor, statements: Sequence[str]) -> tuple[int, Any]:
    """Send ``statements`` in conn's transaction; (the last one's rowcount, its first row or None)."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        if flavor.batches:
            cursor.execute(_joined(statements))
        else:
            for statement in statements:
                cursor.execute(statement)
        row = cursor.fetchone() if cursor.description is not None else None
        return int(cursor.rowcount), row
    except conn.dialect.loaded_dbapi.Error as exc:  # as SQLAlchemy raises it: the fleet's retries know it
        raise _as_dbapi_error(conn, exc) from exc
    finally:
        cursor.close()
