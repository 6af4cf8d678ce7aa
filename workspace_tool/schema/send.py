"""Sending a schema's plan (schema/plan.py): the senders, each the one way of its kind.

* ``run(conn, plan, chain)``: on a connection in a transaction, runs of statements sent as one batch each,
  and online steps through Alembic (the careful path: ensure, the fleet's fallback, scratch schemas, spares);
  statement by statement instead (one per round trip) on request, or when the flavor takes no batch. A
  claim's plan goes through ``claim``. Returns what was ``Sent``.
* ``send_batch(conn, plan)``: the whole transaction, BEGIN to COMMIT, as ONE round trip (the fleet's fast
  lane), for a plan that is ``batchable``; with ``implicit``, without BEGIN and COMMIT (a first ensure).
* ``run_in_parts(conn, plan, chain)``: a plan with a step that can't run in a transaction, on a connection
  that holds the schema's session-level lock (``hold_lock``): each transaction committed in turn, and
  between them each such step outside any transaction (``_run_outside``). That needs a session: through a
  transaction pooler it is refused before anything is sent (``Flavor.require_session``), and the callers
  that have a direct connection send it there.

The statements themselves come from the plan: what is sent here is what ``SchemaPlan.render`` prints.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.util import await_only

from workspace_tool import transactions
from workspace_tool.chain import Chain, Step
from workspace_tool.dberrors import describe, is_connection_error, is_driver_error, sqlstate
from workspace_tool.errors import NonTransactionalFailed, RevisionFailed, WorkspaceError
from workspace_tool.flavor import Flavor
from workspace_tool.schema.plan import BEGIN, COMMIT, SchemaPlan, span
from workspace_tool.sql import lock_statement, quote_ident, unlock_statement

# The session's settings a non-transactional step changes, read before and put back after.
_SETTINGS = text(
    "SELECT current_setting('search_path') AS search_path, current_setting('lock_timeout') AS lock_timeout"
)
_RESTORE = text(
    "SELECT set_config('search_path', :search_path, false), set_config('lock_timeout', :lock_timeout, false)"
)
# Indexes left INVALID in a schema (a failed CREATE INDEX CONCURRENTLY, or one still being built).
_INVALID_INDEXES = text(
    "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :schema AND NOT i.indisvalid ORDER BY 1"
)
log = logging.getLogger(__name__)  # DEBUG: the SQL sent on the raw driver (SQLAlchemy's engine log can't see it)


@dataclass(frozen=True)
class Sent:
    """What sending a plan did: ``recorded_ms``, the duration its registry row recorded (the server's), when
    it was read back (not on asyncpg's one-round-trip claim, nor for a plan with no registry row); and for a
    claim, whether a spare was ``claimed`` (False: none was, nothing changed, the schema's lock is held)."""

    recorded_ms: float | None = None
    claimed: bool = False


def _sent(value: object, *, claimed: bool = False) -> Sent:
    recorded = float(value) if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool) else None
    return Sent(recorded, claimed)


# --------------------------------------------------------------------------- in a transaction
def run(
    conn: Connection,
    plan: SchemaPlan,
    chain: Chain,
    *,
    lock_held: bool = False,
    statement_by_statement: bool = False,
) -> Sent:
    """Send ``plan`` on ``conn``, which is in a transaction (the caller commits or rolls back). ``lock_held``:
    the caller already sent the prelude (with its state read). Statement by statement when asked, or when
    the flavor takes no batch."""
    if plan.claims:
        return claim(conn, plan, lock_held=lock_held, statement_by_statement=statement_by_statement)
    transactions.require(conn)
    if not plan.in_one_transaction:
        raise ValueError("a step can't run in a transaction: send it with run_in_parts")
    flavor = plan.flavor
    units: list[str | Step] = [*([] if lock_held else plan.prelude()), *plan.units()]
    pending: list[str] = []
    for unit in units:
        if isinstance(unit, Step):
            send(conn, pending, statement_by_statement=statement_by_statement, flavor=flavor)
            pending = []
            log.debug("%s: %s -> %s online through Alembic", plan.schema, unit.from_rev, unit.to_rev)
            _run_online(conn, plan, chain, unit)
        else:
            pending.append(unit)
    recorded = send(
        conn, pending, statement_by_statement=statement_by_statement, result=plan.record is not None, flavor=flavor
    )
    return _sent(recorded)


def claim(conn: Connection, plan: SchemaPlan, *, lock_held: bool = False, statement_by_statement: bool = False) -> Sent:
    """Claim a spare on ``conn``, in a transaction: the prelude (unless ``lock_held``) and the claim with its
    registry row in one round trip, then the grants. ``claimed`` False when no spare was claimed: nothing
    changed then, and the transaction, holding the schema's lock, can go on (to build the schema instead)."""
    transactions.require(conn)
    first, *grants = plan.units()
    assert isinstance(first, str)
    statements = [*([] if lock_held else plan.prelude()), first]
    if conn.dialect.driver == "asyncpg" and not statement_by_statement:
        if not lock_held:
            _lock_through_the_adapter(conn, plan)
            statements = [first]
        sent = Sent(None, claimed=_returned_a_row(conn, statements))  # asyncpg reads no row from a batch
    else:
        recorded = send(conn, statements, statement_by_statement=statement_by_statement, result=True)
        sent = _sent(recorded, claimed=recorded is not None)
    if sent.claimed:
        send(conn, [g for g in grants if isinstance(g, str)], statement_by_statement=statement_by_statement)
    return sent


def _lock_through_the_adapter(conn: Connection, plan: SchemaPlan) -> None:
    """asyncpg: the prelude (the lock timeout, the schema's lock: ``SchemaPlan.prelude``) sent through
    SQLAlchemy, whose adapter begins its transaction first. What is then sent on the driver itself is in that
    transaction, and the lock held to its end; sent on the driver first, a batch is an implicit transaction of
    its own, which releases the lock when it ends (and commits what it did there and then)."""
    for statement in plan.prelude():
        conn.exec_driver_sql(statement)


def _run_online(conn: Connection, plan: SchemaPlan, chain: Chain, step: Step, *, outside: bool = False) -> None:
    """An online step through Alembic; a revision's own Python error is raised as RevisionFailed."""
    try:
        chain.run_online(
            conn, plan.schema, plan.flavor.extension_schema, step.from_rev, step.to_rev, outside_transaction=outside
        )
    except Exception as exc:
        failed = revision_failed(chain, plan.schema, step, exc)
        if failed is None:
            raise
        raise failed from exc


# --------------------------------------------------------------------------- one round trip
def send_batch(conn: Connection, plan: SchemaPlan, *, implicit: bool = False) -> Sent:
    """The whole transaction as ONE round trip on psycopg2: BEGIN, every statement, COMMIT, in one simple
    query (``SchemaPlan.batch``). ``conn`` must not be in a transaction. On failure the transaction is
    rolled back (or, if the connection is gone, ``conn`` invalidated) and the driver's exception raised.

    ``implicit``: without BEGIN and COMMIT (a first ensure): PostgreSQL runs a query string of many
    statements as one implicit transaction, committed at its end, and on failure rolled back whole with the
    session left idle, so no ROLLBACK is sent either. The plan, a new schema's build, then runs only if the
    schema does not exist (``SchemaPlan.batch``): ``recorded_ms`` None says it existed and nothing changed.
    Returns the duration its registry row recorded."""
    if conn.dialect.driver != "psycopg2":
        raise ValueError("only psycopg2 sends a batch of statements in one round trip")
    return _sent(send_raw(conn, plan.schema, plan.batch(implicit=implicit), rollback=not implicit))


def send_trips(conn: Connection, plan: SchemaPlan) -> Sent:
    """A guarded, compiled plan in one transaction on a flavor that takes no one batch (Citus), on psycopg2:
    BEGIN, the plan's statements, COMMIT, in the round trips the flavor allows (``Flavor.round_trips``: on
    Citus, COMMIT shares the last queries' round trip), each sent on the raw connection (``send_raw``: none
    of SQLAlchemy's work per statement, which is most of the fleet's client CPU per schema there). ``conn``
    must not be in a transaction. On failure the transaction is rolled back (or, if the connection is gone,
    ``conn`` invalidated) and the driver's exception raised. Nothing is read back (with COMMIT in the last
    round trip, psycopg2 returns COMMIT's result, not the registry row's): the caller measures the duration."""
    if conn.dialect.driver != "psycopg2":
        raise ValueError("only psycopg2 sends a plan's round trips on the raw connection")
    trips = ["\n".join(trip) for trip in plan.flavor.round_trips([BEGIN, *plan.statements(), COMMIT])]
    send_raw(conn, plan.schema, trips, rollback=True)
    return Sent()


def claim_alone(conn: Connection, schema: str, sql: str) -> Sent:
    """A claim in ONE round trip on psycopg2 or asyncpg, ``conn`` not in a transaction: ``sql``, a
    ``SchemaPlan.claim_alone``, one implicit transaction that takes the schema's lock, claims a spare and
    writes its registry row. ``claimed`` False: there was no spare (or the schema exists), nothing changed
    and the lock is released. asyncpg reads no row back from it (``recorded_ms`` None)."""
    if conn.dialect.driver == "asyncpg":
        log.debug("%s: one round trip on asyncpg:\n%s", schema, sql)
        return Sent(None, claimed=_returned_a_row(conn, [sql]))
    if conn.dialect.driver != "psycopg2":
        raise ValueError("only psycopg2 and asyncpg send a claim alone in one round trip")
    recorded = send_raw(conn, schema, sql)
    return _sent(recorded, claimed=recorded is not None)


def send_raw(conn: Connection, schema: str, sql: str | Sequence[str], *, rollback: bool = False) -> object:
    """``send_reply``'s first column of the first row of the last statement that returned one (None: none
    did)."""
    return send_reply(conn, schema, sql, rollback=rollback).value


@dataclass(frozen=True)
class Reply:
    """What ``send_reply`` read back: ``value``, the first column of the first row of the last statement that
    returned one (None: none did); ``rows``, the row count of the last round trip whose last statement
    reported one (a COMMIT or a SET reports none; -1: none did); ``each``, every round trip's own (the first
    column of its last statement's first row, or None; that statement's row count, or -1), in order."""

    value: object = None
    rows: int = -1
    each: tuple[tuple[object, int], ...] = ()


def send_reply(conn: Connection, schema: str, sql: str | Sequence[str], *, rollback: bool = False) -> Reply:
    """Send ``sql`` (statements carrying their own transaction, or one implicit transaction) in ONE round trip
    (or each string of a sequence in one of its own, in turn) on conn's psycopg2 connection in autocommit,
    seen by the engine's cursor events as SQLAlchemy's own statements are. On failure, a ROLLBACK when
    ``rollback`` or when the server says a transaction block is still open (else the server rolled the
    implicit transaction back), or ``conn`` invalidated if the connection is gone; the driver's exception is
    raised."""
    trips = [sql] if isinstance(sql, str) else list(sql)
    if log.isEnabledFor(logging.DEBUG):
        counted = "one round trip" if len(trips) == 1 else f"{len(trips)} round trips"
        log.debug("%s: %s:\n%s", schema, counted, "\n".join(trips))
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    autocommit, isolation = dbapi.autocommit, dbapi.isolation_level
    # psycopg2 sends `SET default_transaction_isolation TO DEFAULT` (a round trip of its own) whenever
    # autocommit goes off on a connection whose isolation level was set (every library connection's is:
    # transactions.own): the level is cleared first and put back after, which sends nothing.
    # A connection in autocommit already (an engine's isolation_level="AUTOCOMMIT") is left as it is: there,
    # psycopg2 would send `SET default_transaction_isolation` for a level put back.
    if not autocommit:
        dbapi.isolation_level = None
        dbapi.autocommit = True  # the statements carry their own transaction
    value: object = None
    rows = -1
    each: list[tuple[object, int]] = []
    # the engine's cursor events, only when something listens: checked as SQLAlchemy checks them before each
    # statement of its own (a flag set once a listener is added to the connection or its engine, even
    # mid-run), then the dispatch (without listeners it is false), per call: never cached across schemas
    before = after = None
    if conn._has_events or conn.engine._has_events:
        before = conn.dispatch.before_cursor_execute or None
        after = conn.dispatch.after_cursor_execute or None
    try:
        cursor = dbapi.cursor()
        try:
            for trip in trips:
                if before is not None:
                    before(conn, cursor, trip, (), None, False)
                cursor.execute(trip)
                if cursor.rowcount >= 0:
                    rows = cursor.rowcount
                first = None
                if cursor.description is not None and (row := cursor.fetchone()) is not None:
                    value = first = row[0]
                each.append((first, cursor.rowcount))
                if after is not None:
                    after(conn, cursor, trip, (), None, False)
        finally:
            cursor.close()
    except Exception:
        try:
            if dbapi.closed:
                raise ConnectionError("closed")
            if rollback or in_transaction_block(conn):
                again = dbapi.cursor()
                again.execute("ROLLBACK")
                again.close()
        except Exception:
            conn.invalidate()  # the connection is gone: never hand it back to the pool
        raise
    finally:
        if not autocommit and not conn.invalidated:
            try:  # (not contextlib.suppress: this runs once per schema of a fleet run)
                dbapi.autocommit = False
                dbapi.isolation_level = isolation
            except Exception:
                pass
    return Reply(value, rows, tuple(each))


def in_transaction_block(conn: Connection) -> bool:
    """Whether the server says conn's session is in a transaction block (open, or failed and waiting for its
    ROLLBACK), as its last answer reported it (libpq's PQtransactionStatus: no round trip)."""
    info = getattr(conn.connection.dbapi_connection, "info", None)
    return getattr(info, "transaction_status", _IDLE) in _IN_BLOCK


_IDLE = 0  # libpq's PQTRANS_IDLE; PQTRANS_INTRANS and PQTRANS_INERROR are 2 and 3 (psycopg2 and psycopg 3 alike)
_IN_BLOCK = (2, 3)


# --------------------------------------------------------------------------- outside a transaction
def hold_lock(conn: Connection, schema: str) -> None:
    """In conn's transaction, which holds the schema's lock: take the session's lock on it too (granted at
    once), which outlives the transaction, for ``run_in_parts`` (which releases it)."""
    send(conn, [lock_statement(schema, session=True) + ";"], statement_by_statement=False)


def run_in_parts(
    conn: Connection,
    plan: SchemaPlan,
    chain: Chain,
    *,
    statement_by_statement: bool = False,
    started: float | None = None,
) -> Sent:
    """Send ``plan.parts()`` on ``conn``, which is not in a transaction: each transaction in turn, committed,
    and between them each step that can't run in one (``_run_outside``). With ``plan.lock``, the caller
    took the schema's session lock (``hold_lock``); it is released here at the end, whatever happens. The
    last part's registry row records the whole migration's duration, from ``started`` (a
    ``time.perf_counter()`` value; default: now); returns what it recorded, as ``run`` does. Refused
    (SessionRequired, nothing sent) on a connection that goes through a pooler."""
    if conn.in_transaction():
        raise ValueError("run_in_parts commits each part: conn must not be in a transaction")
    # a session's lock and search_path below, on this very connection: refused through a pooler
    plan.flavor.with_direct(False).require_session(conn, plan.needing_a_session(chain))
    started = time.perf_counter() if started is None else started
    sent = Sent()
    try:
        parts = plan.parts()
        for i, part in enumerate(parts):
            if isinstance(part, Step):
                _run_outside(conn, plan, chain, part)
                continue
            if i == len(parts) - 1:
                part = part.recording_earlier((time.perf_counter() - started) * 1000.0)
            with conn.begin():
                sent = run(conn, part, chain, statement_by_statement=statement_by_statement)
    finally:
        if plan.lock:
            _in_own_transaction(
                conn, lambda: send(conn, [unlock_statement(plan.schema) + ";"], statement_by_statement=False)
            )
    return sent


def _run_outside(conn: Connection, plan: SchemaPlan, chain: Chain, step: Step) -> None:
    """One step that can't run in a transaction, on conn in autocommit under the session's search_path
    (and lock_timeout): the invalid indexes that a failed earlier run of it left and that it names are
    dropped first, then each of its statements is sent on its own (or Alembic runs it). The session's
    settings are put back after. A failure raises NonTransactionalFailed, which says where the schema
    stays and names the invalid indexes it left; a lost connection is raised as it is."""
    schema = plan.schema
    with conn.begin():
        saved = conn.execute(_SETTINGS).one()
        send(conn, plan.session_settings(), statement_by_statement=False)
        leftovers = _invalid_indexes(conn, schema, _named_in(chain, step))
    try:
        with _autocommit(conn):
            for name in leftovers:
                _send_one(
                    conn, f"DROP INDEX CONCURRENTLY IF EXISTS {quote_ident(schema)}.{quote_ident(name)}", result=False
                )
            if step.online:
                if conn.in_transaction():
                    conn.commit()  # Alembic opens its own transaction block (a no-op in autocommit)
                _run_online(conn, plan, chain, step, outside=True)
            else:
                for statement in step.statements:
                    _send_one(conn, statement, result=False)
    except Exception as failure:
        error = _failed(conn, schema, chain, step, failure)
        if error is failure:
            raise
        raise error from failure
    finally:
        _in_own_transaction(conn, lambda: conn.execute(_RESTORE, saved._asdict()))


def _failed(conn: Connection, schema: str, chain: Chain, step: Step, failure: Exception) -> Exception:
    """The error to raise for a failed step: NonTransactionalFailed (the database's refusal, with the
    invalid indexes it left, or a revision's own Python error). A lost connection too (``connection_lost``:
    the fleet retries it), naming the indexes the cut-short build left invalid, looked up on a new
    session; when even that fails, the indexes the step builds."""
    named = _named_in(chain, step)
    if conn.invalidated or is_connection_error(failure):
        left = _after_loss(conn, schema, named)
        return NonTransactionalFailed(
            schema,
            span(step),
            step.from_rev,
            describe(failure, schema),
            _built_indexes(named) if left is None else left,
            sqlstate(failure),
            connection_lost=True,
            looked_up=left is not None,
        )
    left = ()
    with contextlib.suppress(Exception), conn.begin():
        left = _invalid_indexes(conn, schema, named)
    detail = failure.detail if isinstance(failure, RevisionFailed) else describe(failure, schema)
    return NonTransactionalFailed(schema, span(step), step.from_rev, detail, left, sqlstate(failure))


def revision_failed(chain: Chain, schema: str, step: Step, exc: Exception) -> RevisionFailed | None:
    """``exc``, raised running ``step`` online, as RevisionFailed naming the revision whose code raised it
    (and where), when it is that revision's own Python error; None for a WorkspaceError or the database's
    error, which pass through as they are."""
    if isinstance(exc, WorkspaceError) or is_driver_error(exc):
        return None
    raised = chain.raised_in(exc)
    error = describe(exc, schema) + (f" (at {raised[1]})" if raised else "")
    return RevisionFailed(schema, raised[0] if raised else None, span(step), error)


def _named_in(chain: Chain, step: Step) -> str:
    """The text an index a step builds is named in: its statements, or its revision's source."""
    if step.statements:
        return "\n".join(step.statements)
    return chain.source(step.to_rev if chain.is_upgrade(step.from_rev, step.to_rev) else step.from_rev)


def _after_loss(conn: Connection, schema: str, named_in: str) -> tuple[str, ...] | None:
    """After conn's connection was lost in a step: the invalid indexes of the schema the step names, read
    on a new session (conn reconnects, then is invalidated again: its callers still see it lost, and the
    session's lock went with the old one), or None when that can't be done (the server is gone)."""
    try:
        if conn.in_transaction():
            conn.rollback()  # SQLAlchemy's bookkeeping: the connection is gone
        with conn.begin():
            return _invalid_indexes(conn, schema, named_in)
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            conn.invalidate()


# The index a CREATE INDEX CONCURRENTLY builds (compiled SQL), or op.create_index's name (a revision's source).
_BUILT = re.compile(
    r'CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?("(?:[^"]|"")+"|[\w$]+)'
    r"|\bcreate_index\(\s*(?:index_name\s*=\s*)?[\"']([^\"']+)[\"']",
    flags=re.IGNORECASE,
)


def _built_indexes(named_in: str) -> tuple[str, ...]:
    """The indexes a step's SQL (or its revision's source) builds concurrently, by name."""
    names = (m[1] or m[2] for m in _BUILT.finditer(named_in))
    return tuple(dict.fromkeys(n[1:-1].replace('""', '"') if n.startswith('"') else n for n in names))


def _invalid_indexes(conn: Connection, schema: str, named_in: str) -> tuple[str, ...]:
    """The schema's invalid indexes whose names appear in ``named_in`` (a step's SQL)."""
    names = conn.execute(_INVALID_INDEXES, {"schema": schema}).scalars()
    return tuple(n for n in names if re.search(rf"(?<![\w$]){re.escape(n)}(?![\w$])", named_in, flags=re.IGNORECASE))


@contextlib.contextmanager
def _autocommit(conn: Connection) -> Iterator[None]:
    """conn (not in a transaction) in autocommit for the block, then back to its isolation level."""
    previous = conn.get_execution_options().get("isolation_level") or transactions.ISOLATION_LEVEL
    conn.execution_options(isolation_level="AUTOCOMMIT")
    try:
        yield
    finally:
        if not conn.invalidated:
            try:
                if conn.in_transaction():
                    conn.rollback()  # SQLAlchemy's own bookkeeping: nothing is open on the server
                conn.execution_options(isolation_level=previous)
            except Exception:
                conn.invalidate()  # never back to a pool in autocommit


def _in_own_transaction(conn: Connection, work: Callable[[], Any]) -> None:
    """Run ``work`` in a transaction of its own on conn (a session's lock released, its settings put
    back); if that fails, conn is invalidated: a session that may still hold the lock, or the project's
    search_path, never goes back to the pool."""
    if transactions.in_own_transaction(conn, work) is not None:
        conn.invalidate()


# --------------------------------------------------------------------------- statements on the wire
def send(
    conn: Connection,
    statements: Sequence[str],
    *,
    statement_by_statement: bool,
    result: bool = False,
    flavor: Flavor | None = None,
) -> object:
    """Send statements in conn's transaction: as one batch (simple query protocol), in the runs ``flavor``
    says may share a round trip (``Flavor.round_trips``), or one per round trip. With ``result``, return
    the first column of the last statement's first row."""
    if not statements:
        return None
    if statement_by_statement:
        groups = [[s] for s in statements]
    else:
        groups = [list(statements)] if flavor is None else flavor.round_trips(statements)
        if result and conn.dialect.driver != "psycopg2" and len(groups[-1]) > 1:
            groups[-1:] = [groups[-1][:-1], groups[-1][-1:]]  # asyncpg returns nothing from a batch
    value: object = None
    for i, group in enumerate(groups):
        if not group:
            continue
        value = _send_one(conn, "\n".join(group), result=result and i == len(groups) - 1)
    return value


def _returned_a_row(conn: Connection, statements: Sequence[str]) -> bool:
    """asyncpg: send the statements in ONE round trip (its extended protocol, which returns rows, takes one
    statement at a time and prepares it first: two round trips more); the simple protocol returns no rows,
    but the last statement's status, ``SELECT 1`` when it returned one."""
    driver = conn.connection.driver_connection
    assert driver is not None
    return bool(await_only(driver.execute("\n".join(statements))) == "SELECT 1")


def _send_one(conn: Connection, sql: str, *, result: bool) -> object:
    if conn.dialect.driver == "asyncpg":
        # The adapter's transaction has begun: the caller took the schema lock through it.
        log.debug("sent on asyncpg:\n%s", sql)
        driver = conn.connection.driver_connection
        assert driver is not None
        return await_only(driver.fetchval(sql) if result else driver.execute(sql))
    executed = conn.exec_driver_sql(sql, execution_options={"no_parameters": True})
    return executed.scalar() if result else None
