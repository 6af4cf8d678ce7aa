"""SQL text written once, for every module that sends it: identifier quoting and literals, the advisory
locks (a project schema's, the registry's, the warm pool's; of a transaction or of a session), the
lock_timeout, the search_path, and ``DROP SCHEMA ... CASCADE``.

Most come as literal statements (for the compiled batches and scripts of the schema transaction, the plain
Alembic path and the registry bootstrap); the schema's lock also as a bound-parameter statement
(``LOCK_SQL``); ``lock_schema`` and ``drop_schema_cascade`` run theirs on a connection.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

LOCK_NAMESPACE = "workspace_tool:"
REGISTRY_LOCK_KEY = LOCK_NAMESPACE + "#registry"
POOL_LOCK_KEY = LOCK_NAMESPACE + "#pool"  # one filler of the warm pool per database at a time


def quote_ident(name: str) -> str:
    """Quote an identifier for PostgreSQL (always, even when it would not need it)."""
    return '"' + name.replace('"', '""') + '"'


def sql_literal(value: str | None) -> str:
    """A SQL string literal (standard_conforming_strings), or NULL."""
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def _lock_id(key: str) -> str:
    """The 64-bit advisory lock id of ``key`` (a SQL expression: a literal or a parameter)."""
    return f"hashtextextended({key}, 0)"


def advisory_lock_sql(key: str, *, wait: bool = True) -> str:
    """The transaction-level advisory lock of ``key`` (a SQL expression: a literal or a parameter), held
    until the transaction ends: taken (waiting), or tried (``wait=False``: returns whether it was taken)."""
    return f"SELECT pg_{'' if wait else 'try_'}advisory_xact_lock({_lock_id(key)})"


def session_lock_sql(key: str, *, wait: bool = True) -> str:
    """The session-level advisory lock of ``key``, held across transactions until unlocked (or the session
    ends): taken (waiting), or tried (``wait=False``: returns whether it was taken)."""
    return f"SELECT pg_{'' if wait else 'try_'}advisory_lock({_lock_id(key)})"


def session_unlock_sql(key: str) -> str:
    return f"SELECT pg_advisory_unlock({_lock_id(key)})"


# One statement, so taking the lock is a single round trip.
LOCK_SQL = advisory_lock_sql(":key")


def lock_key(schema: str) -> str:
    """The advisory lock key of a schema: different schemas never wait for each other."""
    return LOCK_NAMESPACE + schema


def lock_id(schema: str) -> str:
    """The schema's advisory lock id as a SQL expression with a literal (for a function that takes the lock)."""
    return _lock_id(sql_literal(lock_key(schema)))


def lock_statement(schema: str, *, session: bool = False) -> str:
    """The schema's lock as a literal statement, for a batch or a script: the transaction's, or with
    ``session`` the session's (kept across transactions until ``unlock_statement``). Both are the same
    lock: another session waits for either, and the session holding one takes the other at once."""
    key = sql_literal(lock_key(schema))
    return session_lock_sql(key) if session else advisory_lock_sql(key)


def unlock_statement(schema: str) -> str:
    """Release the schema's session lock."""
    return session_unlock_sql(sql_literal(lock_key(schema)))


DEFAULT_LOCK_TIMEOUT_MS = 5000  # the longest wait for a lock a command takes, unless told


def lock_timeout_statement(timeout_ms: int, *, local: bool = True) -> str:
    """Bound every lock wait of the transaction (SQLSTATE 55P03 when exceeded); of the session with
    ``local=False``."""
    return f"SET {'LOCAL ' if local else ''}lock_timeout = '{int(timeout_ms)}ms'"


def search_path_sql(schema: str, extension_schema: str, *, local: bool = True) -> str:
    """The project schema first, then only the schema holding the vector extension: for the
    transaction, or for the session with ``local=False``."""
    path = [quote_ident(schema)]
    if extension_schema not in (schema, "pg_catalog"):
        path.append(quote_ident(extension_schema))
    return f"SET {'LOCAL ' if local else ''}search_path TO " + ", ".join(path)


def drop_schema_cascade(conn: Connection, schema: str) -> None:
    """Drop a schema and everything in it, if it is there, in conn's transaction: the one way any schema
    (a project's, a spare, a scratch schema) is dropped."""
    conn.execute(text(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE"))


def lock_schema(conn: Connection, schema: str) -> None:
    """Per-schema transaction-level advisory lock: other projects are never blocked."""
    conn.execute(text(LOCK_SQL), {"key": lock_key(schema)})
