"""Connection poolers in front of the database (PgBouncer in transaction mode, and the like): telling whether
a connection goes through one, and keeping what needs a session off it.

Behind a transaction pooler a client connection is lent a server connection for one transaction at a
time; whatever outlives a transaction on the server (a ``SET`` without LOCAL, a session advisory lock, a
prepared statement) stays on that server connection for its next client, and the client's next
transaction may run on another one. So everything workspace-tool sends over a connection that may be
pooled holds only transaction-scoped state (``SET LOCAL``, ``pg_advisory_xact_lock``). The one thing that
can't is a revision that runs outside a transaction (``schema.send.run_in_parts``): its statements
each commit on their own, under the schema's session lock and the session's search_path. That needs a
session, which a **direct** connection (a URL that bypasses the pooler) gives: ``direct_engine=`` of the
managers and of ``fleet.run``, ``--direct-url`` / ``WORKSPACE_TOOL_DIRECT_URL`` / ``workspace_direct_url``
for the command line. Without one, such work is refused before it starts when a pooler is detected.

**Detection** (``behind_pooler``, ``detect``): a server reports its backend's process id when a client
logs in (libpq's ``PQbackendPID``, asyncpg's ``get_server_pid()``); a pooler answers the login itself and
reports an id of its own, so ``SELECT pg_backend_pid()`` names another process. One round trip, once per
engine (cached), and only when something about to run needs a session (or is ``exec``'s SQL, which ends
with ``SESSION_RESET`` behind a pooler): the ensure path and every transactional migration never ask.
Comparing ``pg_backend_pid()`` across two transactions would not do: measured with PgBouncer 1.18, an idle
pooler hands a client the same server connection again and again (its idle list is last-in first-out), so
the id does not change. Any pooler is detected this way, one in session mode too: there, give its URL as the
direct URL. A direct engine is trusted, not probed (``trust``).
"""

from __future__ import annotations

import threading
import weakref

from sqlalchemy import Connection, Engine

from workspace_tool import transactions
from workspace_tool.errors import SessionRequired

_DETECTED: weakref.WeakKeyDictionary[Engine, bool] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()
_PROBING = threading.Lock()  # held by the thread probing
BACKEND_PID = "SELECT pg_backend_pid()"


# What a transaction that ran SQL not of the library's making (`exec`'s) ends with behind a pooler, so that
# nothing of that SQL outlives it on the server connection lent to it: every setting back to the session's
# default (a SET without LOCAL included, and the role), the session's advisory locks released, its prepared
# statements, cursors, LISTENs and temporary tables gone. All of it transactional: a rollback undoes a
# session SET anyway, the commit keeps the reset.
SESSION_RESET = (
    "RESET ALL",
    "RESET ROLE",
    "SELECT pg_advisory_unlock_all()",
    "DEALLOCATE ALL",
    "CLOSE ALL",
    "UNLISTEN *",
    "DISCARD TEMP",
)


class UseDirect(Exception):
    """Raised, with nothing changed, where work needs a session and a direct connection is configured: the
    caller runs that work again on it."""


def trust(engine: Engine) -> None:
    """Take ``engine`` to reach the server directly (a direct URL): what needs a session runs on it."""
    with _LOCK:
        _DETECTED[engine] = False


def behind_pooler(conn: Connection) -> bool:
    """Whether ``conn`` goes through a pooler: its login reported another backend than the one serving it.
    Cached per engine; on a miss, one round trip on ``conn`` (in its transaction, or one of its own)."""
    engine = conn.engine
    with _LOCK:
        known = _DETECTED.get(engine)
    if known is not None:
        return known
    if conn.in_transaction():  # it holds a server connection a probe by another thread might be waiting for
        return _probed(conn)
    with _PROBING:  # threads asking at once (a fleet run's workers) wait for one probe, not one each
        with _LOCK:
            known = _DETECTED.get(engine)
        return _probed(conn) if known is None else known


def _probed(conn: Connection) -> bool:
    found = _probe(conn)
    with _LOCK:
        return _DETECTED.setdefault(conn.engine, found)


def detect(engine: Engine) -> bool:
    """``behind_pooler`` for an engine, on a connection of its own when not known yet."""
    with _LOCK:
        known = _DETECTED.get(engine)
    if known is not None:
        return known
    with transactions.connect(engine) as conn, conn.begin():
        return behind_pooler(conn)


def _probe(conn: Connection) -> bool:
    reported = _login_pid(conn.connection.driver_connection)
    if reported is None:  # a driver that doesn't say: taken as a server, as before this check existed
        return False
    if conn.in_transaction():
        actual = conn.exec_driver_sql(BACKEND_PID).scalar()
    else:
        with conn.begin():
            actual = conn.exec_driver_sql(BACKEND_PID).scalar()
    return int(reported) != actual


def _login_pid(driver_connection: object) -> int | None:
    """The backend process id the login reported (psycopg2, psycopg 3, asyncpg), without a round trip."""
    info = getattr(driver_connection, "info", None)
    pid = getattr(info, "backend_pid", None)  # psycopg2 >= 2.8, psycopg 3
    if pid is None:
        for method in ("get_backend_pid", "get_server_pid"):  # older psycopg2; asyncpg
            getter = getattr(driver_connection, method, None)
            if callable(getter):
                pid = getter()
                break
    return pid if isinstance(pid, int) else None


def require_session(conn: Connection, what: str, *, direct: bool = False) -> None:
    """Before work that needs a session (``what`` runs outside a transaction) starts on ``conn``: with a
    direct connection configured (``direct``), UseDirect for the caller to run it there; through a pooler,
    SessionRequired (one line: what to set); otherwise nothing, and the work runs on ``conn``."""
    if direct:
        raise UseDirect(what)
    if behind_pooler(conn):
        raise SessionRequired(what)


def require_session_engine(engine: Engine, what: str) -> None:
    """``require_session`` for work about to start on ``engine`` with no direct connection configured."""
    if detect(engine):
        raise SessionRequired(what)
