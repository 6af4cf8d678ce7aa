"""The library's transactions are real transactions, whatever the caller's engine or connection says.

Under ``isolation_level="AUTOCOMMIT"`` (an engine's, or a connection's) ``Connection.begin()`` sends no
BEGIN: every statement commits on its own, so ``SET LOCAL search_path`` and ``pg_advisory_xact_lock``
end with the statement that set them, an ALTER meant for a project's table can land in ``public``, and a
failing revision leaves a half-made schema.  And under REPEATABLE READ or SERIALIZABLE the state read that
follows the schema's lock would see a snapshot taken before the lock was granted.

So every connection the library opens for itself (to migrate, lock, drop, bootstrap, read a fleet, build a
scratch schema) is pinned to READ COMMITTED with :func:`connect` / :func:`own`.  That costs no round trip
on psycopg2 or asyncpg: both keep the level on the client and put it in the BEGIN they send anyway
(``BEGIN ISOLATION LEVEL READ COMMITTED``), and SQLAlchemy restores the connection's own level when it
goes back to the pool, so the caller's engine is left as it was.  A connection handed in by a caller is
checked instead (:func:`require`): one in autocommit is refused with a ConfigurationError.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, Engine

from workspace_tool.errors import ConfigurationError

ISOLATION_LEVEL = "READ COMMITTED"
# How a schema transaction commits: without waiting for its WAL flush (``SET LOCAL synchronous_commit = off``),
# or as the server's synchronous_commit says. A fleet run's (RunSpec.commit), a warm-pool claim's
# (workspace_pool_claim_commit).
COMMITS = ("async", "durable")
# Takes a transaction id, so that its commit writes a commit record and waits for it to be flushed.
_TAKE_AN_XID = "SELECT txid_current()"


def own(conn: Connection) -> Connection:
    """Pin a connection the library opened (not in a transaction yet) to READ COMMITTED transactions;
    returns it."""
    return conn.execution_options(isolation_level=ISOLATION_LEVEL)


def connect(engine: Engine) -> Connection:
    """``engine.connect()``, in real READ COMMITTED transactions whatever the engine's isolation level."""
    conn = engine.connect()
    try:
        return own(conn)
    except BaseException:
        conn.close()
        raise


def flush_commits(engine: Engine) -> None:
    """Return once every transaction committed on the server so far is flushed, as the server's
    synchronous_commit says (the WAL on disk; with synchronous standbys, on theirs too): one transaction that
    takes a transaction id and commits, which waits for the WAL up to its own commit record, and the WAL is
    flushed in order. After a fleet run whose schema transactions committed without waiting (``async``): the
    run reports once they are all as durable as a commit that waited, at the cost of one flush."""
    with connect(engine) as conn, conn.begin():
        conn.exec_driver_sql(_TAKE_AN_XID)


def in_autocommit(conn: Connection) -> bool:
    """Whether the DBAPI connection commits each statement on its own (psycopg2, asyncpg's adapter and
    psycopg all say so in ``autocommit``); no round trip."""
    return bool(getattr(conn.connection.dbapi_connection, "autocommit", False))


def require(conn: Connection) -> None:
    """Refuse a connection in autocommit: the work about to run on it relies on a real transaction."""
    if in_autocommit(conn):
        raise ConfigurationError(
            "this connection is in autocommit mode (isolation_level='AUTOCOMMIT'), where workspace-tool's "
            "schema lock, search_path and all-or-nothing migrations can't hold: pass a connection that runs "
            "transactions, e.g. conn.execution_options(isolation_level='READ COMMITTED')"
        )


def in_own_transaction(conn: Connection, work: Callable[[], object]) -> Exception | None:
    """Run ``work`` in a transaction of its own on conn, after rolling back what a failure left open (a
    clean-up after an error: a lock to release, settings to put back, a half-built schema to drop); nothing
    on a connection that is gone. Returns the error it failed with (None: done, or gone), for the caller's
    own policy: invalidate the connection, or log and go on."""
    if conn.invalidated or conn.closed:
        return None
    try:
        if conn.in_transaction():
            conn.rollback()
        with conn.begin():
            work()
    except Exception as exc:
        return exc
    return None
