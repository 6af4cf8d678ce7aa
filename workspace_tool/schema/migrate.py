"""Bring one project schema to a revision: the careful path (lock, read, decide, run) and the fleet's fast
lane (one round trip, guarded), both sending one SchemaTransaction (schema/transaction.py).

The careful path is what ``WorkspaceManager.ensure`` runs (``ProjectWorkspaceManager`` through
``AsyncConnection.run_sync``), and what a fleet run falls back to when the fast lane doesn't apply.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from workspace_tool import registry, transactions
from workspace_tool.chain import Chain, Plan
from workspace_tool.dberrors import is_driver_error, sqlstate
from workspace_tool.errors import MigrationFailed, WorkspaceError
from workspace_tool.schema import roles
from workspace_tool.schema.operation import ENSURE, Operation
from workspace_tool.schema.state import check_managed, read_state
from workspace_tool.schema.transaction import STATE_CHANGED, Expected, RegistryRecord, SchemaTransaction
from workspace_tool.sql import lock_schema, quote_ident
from workspace_tool.vocabulary import Action, Path, RegistryAction


@dataclass(frozen=True)
class EnsureResult:
    """What one ensure/upgrade did to one project."""

    project_id: str
    schema: str
    action: Action
    from_revision: str | None
    to_revision: str | None
    duration_ms: float
    path: Path  # FAST, ONLINE, MIXED, or NONE when no SQL ran


@dataclass(frozen=True)
class Migration:
    """What to do to one schema: bring ``schema`` (of ``project_id``) to ``target`` under ``operation``'s
    rules; ``owner_role`` is granted the schema in the same transaction; ``adopt`` lets the chain run into
    a hand-made schema (one with relations but no alembic_version)."""

    project_id: str
    schema: str
    target: str | None
    operation: Operation = ENSURE
    owner_role: str | None = None
    adopt: bool = False


@dataclass(frozen=True)
class Sending:
    """How to reach the database: the chain, the extension's schema (on the search_path), the bound on
    every lock wait, everything online (the reference the fast path is verified against), sending
    statement by statement, and Citus (tenant schemas, sent statement by statement: see SchemaTransaction)."""

    chain: Chain
    extension_schema: str
    lock_timeout_ms: int | None = None
    online: bool = False
    statement_by_statement: bool = False
    citus: bool = False


def migrate(conn: Connection, how: Sending, what: Migration, *, started: float | None = None) -> EnsureResult:
    """The careful path: in one transaction on ``conn`` (not already in one), take the schema's lock and
    read its state (one round trip), decide by the operation's rules, and run the schema transaction,
    whose registry row commits with it.  Raises what the operation's rules say (WorkspaceOutdated, ...)."""
    started = time.perf_counter() if started is None else started
    chain, schema = how.chain, what.schema
    transactions.require(conn)
    with conn.begin():
        state = read_state(
            conn, what.project_id, schema, lock=True, lock_timeout_ms=how.lock_timeout_ms, citus=how.citus
        )
        current = state.version
        what.operation.check(chain, what.project_id, schema, current, what.target, exists=state.exists)
        adopted = check_managed(conn, what.project_id, schema, state, adopt=what.adopt)
        action = what.operation.action(chain, current, what.target, exists=state.exists)
        grants = tuple(roles.grant_statements(schema, what.owner_role)) if what.owner_role else ()
        if action is Action.CURRENT and state.recorded_ready_at(current) and not grants:
            return EnsureResult(what.project_id, schema, action, current, what.target, _ms(started), Path.NONE)
        plan = chain.plan(current, what.target, online=how.online) if action is not Action.CURRENT else None
        path = Path.NONE if plan is None else plan.path
        recorded_as = RegistryAction.ADOPT if adopted else RegistryAction.recording(action)
        transaction = SchemaTransaction(
            schema,
            how.extension_schema,
            () if plan is None else plan.steps,
            create_schema=not state.exists,
            grants=grants,
            record=RegistryRecord(what.project_id, what.target, recorded_as, path),
            citus=how.citus,
        )
        try:
            recorded = transaction.run(conn, chain, lock_held=True, statement_by_statement=how.statement_by_statement)
        except Exception as exc:
            if isinstance(exc, WorkspaceError) or is_driver_error(exc):
                raise
            # a revision's own Python error: the transaction rolls back
            raise MigrationFailed(schema, f"{type(exc).__name__}: {exc}") from exc
    duration = float(recorded) if isinstance(recorded, (int, float, Decimal)) else _ms(started)
    return EnsureResult(what.project_id, schema, action, current, what.target, duration, path)


def planned(
    how: Sending, what: Migration, version: str | None, *, exists: bool, expected: Expected | None = None
) -> SchemaTransaction:
    """The transaction that takes a schema at ``version`` to the target, its registry row included: what
    the fast lane sends (guarded by ``expected``) and what ``--sql`` renders."""
    plan = how.chain.plan(version, what.target)
    action = what.operation.action(how.chain, version, what.target, exists=exists)
    return SchemaTransaction(
        what.schema,
        how.extension_schema,
        plan.steps,
        lock_timeout_ms=how.lock_timeout_ms,
        create_schema=not exists,
        record=RegistryRecord(what.project_id, what.target, RegistryAction.recording(action), plan.path),
        expected=expected,
        citus=how.citus,
    )


def fast_lane(how: Sending, what: Migration, expected: Expected) -> SchemaTransaction | None:
    """The fleet's one-round-trip transaction for a schema as a batch read saw it, or None when it can't
    be one: an online step, an empty existing schema, a range that moves no version row."""
    if expected.exists and expected.version is None:
        return None
    transaction = planned(how, what, expected.version, exists=expected.exists, expected=expected)
    return transaction if transaction.steps and transaction.compiled and transaction.guarded else None


def migrate_expected(conn: Connection, how: Sending, what: Migration, expected: Expected) -> EnsureResult | None:
    """The fleet's fast lane: the whole migration without reading the schema first, guarded so that it
    changes nothing unless the schema is still as the batch read saw it: ONE round trip
    (``SchemaTransaction.send_batch``), or on Citus, which takes no batch, the same transaction sent
    statement by statement (``SchemaTransaction.run``).

    Returns None, with nothing changed, when this lane doesn't apply (not psycopg2, statement by statement
    off Citus, an online step, an empty schema) or the schema turned out not as read: the caller then uses
    ``migrate``. Database errors are raised as SQLAlchemy DBAPIErrors, after the transaction was rolled
    back."""
    one_by_one = how.statement_by_statement and not how.citus
    if conn.dialect.driver != "psycopg2" or conn.in_transaction() or one_by_one:
        return None
    transaction = fast_lane(how, what, expected)
    if transaction is None:
        return None
    started = time.perf_counter()
    try:
        if transaction.citus:
            with conn.begin():
                transaction.run(conn, how.chain)
        else:
            transaction.send_batch(conn)
    except Exception as failure:
        code = sqlstate(failure)
        if code == "22P02" and STATE_CHANGED in str(failure):
            return None
        if not conn.invalidated and code not in (None, "55P03") and _moved(conn, what, expected):
            return None  # it failed because the schema changed since it was read, not on its own account
        if isinstance(failure, conn.dialect.loaded_dbapi.Error):
            raise DBAPIError.instance(
                "fast lane batch",
                None,
                failure,
                conn.dialect.loaded_dbapi.Error,
                connection_invalidated=conn.invalidated,
            ) from failure
        raise
    assert transaction.record is not None
    action = what.operation.action(how.chain, expected.version, what.target, exists=expected.exists)
    return EnsureResult(
        what.project_id, what.schema, action, expected.version, what.target, _ms(started), transaction.record.path
    )


def _moved(conn: Connection, what: Migration, expected: Expected) -> bool:
    """After a failed batch: is the schema no longer as the caller read it?"""
    with conn.begin():
        state = read_state(conn, what.project_id, what.schema)
    return state.version != expected.version or (expected.version is None and state.exists)


def run_plan(
    conn: Connection,
    chain: Chain,
    schema: str,
    extension_schema: str,
    plan: Plan,
    *,
    create_schema: bool,
    citus: bool = False,
) -> None:
    """Run a plan into ``schema`` in conn's transaction with no lock and no registry row: for scratch
    schemas no one else sees, rolled back afterwards (references, autogenerate, the fast-path proof). On
    Citus (``citus``) they are tenant schemas, as project schemas are."""
    scratch = SchemaTransaction(
        schema, extension_schema, plan.steps, lock=False, create_schema=create_schema, citus=citus
    )
    scratch.run(conn, chain)


def drop_schema(conn: Connection, project_id: str, schema: str) -> bool:
    """Drop a project's schema and its registry row in one transaction under the schema's lock; False if
    neither existed."""
    transactions.require(conn)
    with conn.begin():
        lock_schema(conn, schema)
        existed = conn.execute(
            text("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :s)"), {"s": schema}
        ).scalar()
        conn.execute(text(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE"))
        deleted = conn.execute(registry.DELETE, {"project_id": project_id}).rowcount
    return bool(existed) or deleted > 0


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
