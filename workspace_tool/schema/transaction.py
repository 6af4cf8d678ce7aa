"""One schema's transaction: the one definition of what moves a project schema from one revision to another.

    BEGIN ISOLATION LEVEL READ COMMITTED
    SET LOCAL lock_timeout = '...'            -- when bounded (on Citus, propagated to the workers)
    SELECT pg_advisory_xact_lock(...)         -- the schema's lock: other schemas never wait
    CREATE SCHEMA ...                         -- when it does not exist (on Citus, a tenant schema)
    SET LOCAL search_path TO <schema>, <extension schema>
    <the version check>                       -- Citus's guard: fails unless the version is as expected
    <the plan's steps>                        -- compiled statements, or Alembic online
    <grants>                                  -- an owner role, when asked
    <the registry row>                        -- guarded: written only if the version moved as expected
    COMMIT

A ``SchemaTransaction`` is built once and sent one of these ways:

* ``run(conn, chain)``: on a connection in a transaction, runs of statements sent as one batch each and
  online steps through Alembic (the careful path: ensure, the fleet's fallback, scratch schemas);
  ``statement_by_statement=True`` sends one statement per round trip instead (Citus forwards a DDL's whole
  query string to its workers, which take one statement at a time): always so for ``citus=True``;
* ``send_batch(conn)``: the whole transaction, BEGIN to COMMIT, as ONE round trip (the fleet's fast lane;
  never on Citus, where the same guarded transaction goes through ``run``);
* ``render(chain)``: the exact text of ``upgrade --sql``, which psql can run.

A new step kind (chain/plan.py) or a new way of sending is added here, once, for every caller.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection
from sqlalchemy.util import await_only

from workspace_tool import transactions
from workspace_tool.chain import Chain, Step
from workspace_tool.chain.plan import split_version_move
from workspace_tool.registry import upsert_sql
from workspace_tool.sql import (
    CITUS_TENANT,
    lock_statement,
    lock_timeout_statements,
    quote_ident,
    search_path_sql,
    sql_literal,
)
from workspace_tool.vocabulary import Path, RegistryAction

STATE_CHANGED = "workspace-tool:state-changed"
BEGIN = f"BEGIN ISOLATION LEVEL {transactions.ISOLATION_LEVEL};"  # whatever the server's default
COMMIT = "COMMIT;"


@dataclass(frozen=True)
class Expected:
    """The schema as a batch read saw it. The transaction's guards make it fail, changing nothing, if the
    schema is no longer so: CREATE SCHEMA fails if it appeared, and the registry row is written by the
    statement that moves alembic_version from ``version`` (it raises STATE_CHANGED if nothing moved)."""

    exists: bool
    version: str | None


@dataclass(frozen=True)
class RegistryRecord:
    """The registry row the transaction writes (``project_registry.workspace_config``)."""

    project_id: str
    revision: str | None
    action: RegistryAction
    path: Path


@dataclass(frozen=True)
class SchemaTransaction:
    schema: str
    extension_schema: str
    steps: tuple[Step, ...] = ()
    lock: bool = True  # the schema's advisory lock (scratch schemas, which no one else sees, go without)
    lock_timeout_ms: int | None = None
    create_schema: bool = False
    grants: tuple[str, ...] = ()
    record: RegistryRecord | None = None
    expected: Expected | None = None  # None: the caller took the lock and read the state itself
    # Citus (schema-based sharding): the schema is created as a tenant schema whatever the role's setting,
    # the lock timeout bounds the workers' lock waits too, and ``run`` sends one statement per round trip.
    citus: bool = False

    # -------------------------------------------------------------- what it says
    def prelude(self) -> list[str]:
        """What comes first: the lock timeout, then the schema's lock."""
        bound = [] if self.lock_timeout_ms is None else lock_timeout_statements(self.lock_timeout_ms, citus=self.citus)
        statements = [s + ";" for s in bound]
        if self.lock:
            statements.append(lock_statement(self.schema) + ";")
        return statements

    def units(self) -> list[str | Step]:
        """Everything after the prelude, in order: statements, and the online steps between them."""
        units: list[str | Step] = []
        if self.create_schema:
            if self.citus:
                units.append(CITUS_TENANT + ";")
            units.append(f"CREATE SCHEMA {quote_ident(self.schema)};")
        units.append(search_path_sql(self.schema, self.extension_schema) + ";")
        if (check := self._version_check()) is not None:
            units.append(check + ";")
        steps, record = self._steps_and_record()
        for step in steps:
            if step.online:
                units.append(step)
            else:
                units.extend(step.statements)
        units.extend(g + ";" for g in self.grants)
        if record is not None:
            units.append(record + ";")
        return units

    @property
    def compiled(self) -> bool:
        return not any(s.online for s in self.steps)

    @property
    def guarded(self) -> bool:
        """True when the transaction checks the schema is as ``expected`` (sendable without reading it)."""
        if self.expected is None:
            return False
        if not self.expected.exists:
            return self.create_schema
        return self.expected.version is not None and self._final_version_move() is not None

    def statements(self) -> list[str]:
        """Every statement from the lock to the registry row, when all steps are compiled."""
        units = self.units()
        if any(isinstance(u, Step) for u in units):
            raise ValueError("a transaction with online steps has no fixed statements")
        return self.prelude() + [u for u in units if isinstance(u, str)]

    def _final_version_move(self) -> str | None:
        if not self.steps or self.steps[-1].online:
            return None
        last = self.steps[-1]
        moved = split_version_move(last.statements)
        return None if moved is None else moved[1]

    def _version_check(self) -> str | None:
        """On Citus, the guard of an existing schema: a statement that fails unless its version is still the
        expected one, sent first (under the schema's lock, nothing else moves it), instead of the statement
        below that moves the version and writes the registry row together: Citus runs a CTE that modifies
        a distributed table through intermediate results (measured: a third more time per schema)."""
        if not self.citus or self.expected is None or not self.expected.exists or not self.guarded:
            return None
        return (
            f"SELECT CASE WHEN count(*) = 0 THEN ('{STATE_CHANGED} ' || now())::int END "
            f"FROM alembic_version WHERE version_num = {sql_literal(self.expected.version)}"
        )

    def _steps_and_record(self) -> tuple[tuple[Step, ...], str | None]:
        """The steps, and the registry upsert; with a guard on an existing schema, the last step's final
        version UPDATE/DELETE and the upsert become one statement that fails unless the version moved
        (off Citus: there, ``_version_check``)."""
        if self.record is None:
            return self.steps, None
        r = self.record
        if self.expected is None or not self.expected.exists or not self.guarded or self.citus:
            return self.steps, upsert_sql(r.project_id, self.schema, r.revision, r.action, r.path)
        last = self.steps[-1]
        moved = split_version_move(last.statements)
        assert moved is not None
        before, move = moved
        upsert = upsert_sql(r.project_id, self.schema, r.revision, r.action, r.path, per_row_of="moved")
        record = (
            f"WITH moved AS ({move} RETURNING 1), recorded AS ({upsert}) "
            f"SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM recorded) THEN ('{STATE_CHANGED} ' || now())::int END"
        )
        return (*self.steps[:-1], Step(last.kind, last.from_rev, last.to_rev, before)), record

    # --------------------------------------------------------------- sending it
    def run(
        self, conn: Connection, chain: Chain, *, lock_held: bool = False, statement_by_statement: bool = False
    ) -> object:
        """Run on ``conn``, which is in a transaction (the caller commits or rolls back). ``lock_held``: the
        caller already sent the prelude (with its state read). Returns the registry statement's result (the
        duration it recorded) when there is one, else None. On Citus, always statement by statement."""
        transactions.require(conn)
        statement_by_statement = statement_by_statement or self.citus
        units: list[str | Step] = [*([] if lock_held else self.prelude()), *self.units()]
        pending: list[str] = []
        result: object = None
        for unit in units:
            if isinstance(unit, Step):
                send(conn, pending, statement_by_statement=statement_by_statement)
                pending = []
                chain.run_online(conn, self.schema, self.extension_schema, unit.from_rev, unit.to_rev)
            else:
                pending.append(unit)
        if pending:
            result = send(conn, pending, statement_by_statement=statement_by_statement, result=self.record is not None)
        return result

    def send_batch(self, conn: Connection) -> None:
        """The whole transaction as ONE round trip on psycopg2: BEGIN, every statement, COMMIT, in one
        simple query. ``conn`` must not be in a transaction. On failure the transaction is rolled back (or,
        if the connection is gone, ``conn`` invalidated) and the driver's exception raised."""
        if not self.guarded or not self.compiled or conn.dialect.driver != "psycopg2" or self.citus:
            raise ValueError("only a guarded, compiled transaction on psycopg2, not Citus, is sent as one batch")
        batch = "\n".join([BEGIN, *self.statements(), COMMIT])
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        autocommit = dbapi.autocommit
        dbapi.autocommit = True  # the batch carries its own BEGIN and COMMIT
        try:
            cursor = dbapi.cursor()
            try:
                cursor.execute(batch)
            finally:
                cursor.close()
        except Exception:
            try:
                rollback = dbapi.cursor()
                rollback.execute("ROLLBACK")
                rollback.close()
            except Exception:
                conn.invalidate()  # the connection is gone: never hand it back to the pool
            raise
        finally:
            if not conn.invalidated:
                with contextlib.suppress(Exception):
                    dbapi.autocommit = autocommit

    def render(self, chain: Chain, header: str | None = None) -> str:
        """The transaction as a script a DBA can read, or run with psql: exactly what ``send_batch`` sends;
        an online step is shown rendered offline, in comments' company, for review."""
        lines = [f"-- {header}"] if header else []
        lines += [BEGIN, *self.prelude()]
        for unit in self.units():
            if not isinstance(unit, Step):
                lines.append(unit)
                continue
            span = f"{unit.from_rev or 'base'} -> {unit.to_rev or 'base'}"
            try:
                rendered = chain.compile_statements(unit.from_rev, unit.to_rev)
            except Exception:
                lines.append(f"-- {span} runs online through Alembic; it cannot be rendered offline")
            else:
                lines.append(f"-- {span} runs online through Alembic; rendered offline for review:")
                lines.extend(rendered)
        lines.append(COMMIT)
        return "\n".join(lines) + "\n"


def send(conn: Connection, statements: Sequence[str], *, statement_by_statement: bool, result: bool = False) -> object:
    """Send statements in conn's transaction: as one batch (simple query protocol), or one per round trip.
    With ``result``, return the first column of the last statement's first row."""
    if not statements:
        return None
    if statement_by_statement:
        groups = [[s] for s in statements]
    elif result and conn.dialect.driver != "psycopg2":
        groups = [list(statements[:-1]), [statements[-1]]]  # asyncpg returns nothing from a batch
    else:
        groups = [list(statements)]
    value: object = None
    for i, group in enumerate(groups):
        if not group:
            continue
        value = _send_one(conn, "\n".join(group), result=result and i == len(groups) - 1)
    return value


def _send_one(conn: Connection, sql: str, *, result: bool) -> object:
    if conn.dialect.driver == "asyncpg":
        # The adapter's transaction has begun: the caller took the schema lock through it.
        driver = conn.connection.driver_connection
        assert driver is not None
        return await_only(driver.fetchval(sql) if result else driver.execute(sql))
    executed = conn.exec_driver_sql(sql, execution_options={"no_parameters": True})
    return executed.scalar() if result else None
