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

A revision that can't run in a transaction (a NON_TRANSACTIONAL step: CREATE INDEX CONCURRENTLY, ...)
cuts the migration into parts (``parts()``), sent by ``run_in_parts`` on a connection that holds the
schema's session-level lock from start to end (``hold_lock``). That needs a session: through a transaction
pooler it is refused before anything is sent (workspace_tool.pooler), and the callers that have a direct
connection send it there::

    SELECT pg_advisory_lock(...)              -- the same lock, held by the session across the parts
    BEGIN ... COMMIT                          -- the steps before it, with the registry row they reach
    SET search_path TO <schema>, <ext>        -- for the session; its lock_timeout too
    CREATE INDEX CONCURRENTLY ...             -- each statement on its own, outside any transaction
    RESET search_path                         -- (the session's own settings are put back)
    BEGIN ... COMMIT                          -- its version row and registry row, then the steps after it
    SELECT pg_advisory_unlock(...)

A new schema at head can instead be claimed from the warm pool (a CLAIM step, workspace_tool.pool): the
prelude, then ONE statement that renames a spare already at head and writes the registry row, then the
grants. ``claim(conn)`` (which ``run`` calls for such a transaction) returns None when there was no spare:
nothing changed, the schema's lock is held, and the caller goes on in the same transaction.

A new step kind (chain/plan.py) or a new way of sending is added here, once, for every caller.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.util import await_only

from workspace_tool import pooler, transactions
from workspace_tool.chain import Chain, Step
from workspace_tool.chain.plan import split_version_move, split_version_statements
from workspace_tool.dberrors import describe, is_connection_error, is_driver_error, sqlstate
from workspace_tool.errors import NonTransactionalFailed, RevisionFailed, WorkspaceError
from workspace_tool.registry import upsert_sql
from workspace_tool.registry.spares import claim_statement
from workspace_tool.sql import (
    CITUS_TENANT,
    lock_statement,
    lock_timeout_statement,
    lock_timeout_statements,
    quote_ident,
    search_path_sql,
    sql_literal,
    unlock_statement,
)
from workspace_tool.vocabulary import Path, RegistryAction, StepKind

STATE_CHANGED = "workspace-tool:state-changed"
CLAIMED = True  # what ``claim`` returns for a spare claimed when the driver doesn't return the duration (asyncpg)
BEGIN = f"BEGIN ISOLATION LEVEL {transactions.ISOLATION_LEVEL};"  # whatever the server's default
COMMIT = "COMMIT;"
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
    earlier_ms: float = 0.0  # the migration's time before this transaction (its earlier parts), recorded too


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
        """Everything after the prelude, in order: statements, and the online steps between them. A claim:
        the claim with its registry row (one statement), then the grants on the renamed schema."""
        if self.claims:
            claim = self._steps_and_record()[1]
            return [f"{claim};", *(g + ";" for g in self.grants)]
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
    def claims(self) -> bool:
        """True for a schema claimed from the warm pool (a CLAIM step) rather than built."""
        return any(s.kind is StepKind.CLAIM for s in self.steps)

    @property
    def compiled(self) -> bool:
        return not any(s.online for s in self.steps)

    @property
    def in_one_transaction(self) -> bool:
        """False when a step can't run in a transaction: the migration is then sent in ``parts()``."""
        return all(s.transactional for s in self.steps)

    def parts(self) -> list[SchemaTransaction | Step]:
        """The migration cut around its steps that can't run in a transaction: transactions, each ending
        with the registry row of the revision it reaches, and between them those steps with only their
        own statements (the version table is made in the transaction before, the version row moved in
        the one after, once the step succeeded). The first transaction creates the schema, the last one
        makes the grants; a first transaction with nothing to do is left out."""
        if self.in_one_transaction:
            return [self]
        parts: list[SchemaTransaction | Step] = []
        pending: list[Step] = []
        for step in self.steps:
            if step.transactional:
                pending.append(step)
                continue
            made, own, moved = split_version_statements(step.statements)
            if made:
                pending.append(Step(StepKind.COMPILED, step.from_rev, step.from_rev, made))
            if pending or parts or self.create_schema:
                parts.append(self._part(pending, step.from_rev, first=not parts))
            parts.append(replace(step, statements=own))
            pending = [Step(StepKind.COMPILED, step.from_rev, step.to_rev, moved)] if moved else []
        parts.append(self._part(pending, None, first=False, last=True))
        return parts

    def _part(self, steps: list[Step], reached: str | None, *, first: bool, last: bool = False) -> SchemaTransaction:
        record = self.record if self.record is None or last else replace(self.record, revision=reached)
        return replace(
            self,
            steps=tuple(steps),
            create_schema=self.create_schema and first,
            grants=self.grants if last else (),
            record=record,
            expected=None,
        )

    def needing_a_session(self, chain: Chain) -> str:
        """What in this migration needs a session, for a refusal: the revisions that run outside a
        transaction, and the schema."""
        return f"revision {', '.join(chain.outside_transaction(self.steps))} ({self.schema})"

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
        if any(isinstance(u, Step) for u in units) or not self.in_one_transaction:
            raise ValueError("a transaction with online or non-transactional steps has no fixed statements")
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
            if self.claims:
                raise ValueError("a claim writes its registry row in the same statement: it needs a record")
            return self.steps, None
        r = self.record
        if self.claims:
            claim = self.steps[0]
            assert claim.spare_of is not None
            upsert = upsert_sql(r.project_id, self.schema, r.revision, r.action, r.path, per_row_of="claimed")
            return (), claim_statement(self.schema, claim.to_rev, claim.spare_of, upsert)
        if self.expected is None or not self.expected.exists or not self.guarded or self.citus:
            return self.steps, upsert_sql(
                r.project_id, self.schema, r.revision, r.action, r.path, earlier_ms=r.earlier_ms
            )
        last = self.steps[-1]
        moved = split_version_move(last.statements)
        assert moved is not None
        before, move = moved
        upsert = upsert_sql(
            r.project_id, self.schema, r.revision, r.action, r.path, per_row_of="moved", earlier_ms=r.earlier_ms
        )
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
        duration it recorded) when there is one, else None (a claim: see ``claim``). On Citus, always
        statement by statement."""
        if self.claims:
            return self.claim(conn, lock_held=lock_held, statement_by_statement=statement_by_statement)
        transactions.require(conn)
        if not self.in_one_transaction:
            raise ValueError("a step can't run in a transaction: send it with run_in_parts")
        statement_by_statement = statement_by_statement or self.citus
        units: list[str | Step] = [*([] if lock_held else self.prelude()), *self.units()]
        pending: list[str] = []
        result: object = None
        for unit in units:
            if isinstance(unit, Step):
                send(conn, pending, statement_by_statement=statement_by_statement)
                pending = []
                log.debug("%s: %s -> %s online through Alembic", self.schema, unit.from_rev, unit.to_rev)
                self._run_online(conn, chain, unit)
            else:
                pending.append(unit)
        if pending:
            result = send(conn, pending, statement_by_statement=statement_by_statement, result=self.record is not None)
        return result

    def _run_online(self, conn: Connection, chain: Chain, step: Step, *, outside_transaction: bool = False) -> None:
        """An online step through Alembic; a revision's own Python error is raised as RevisionFailed."""
        try:
            chain.run_online(
                conn,
                self.schema,
                self.extension_schema,
                step.from_rev,
                step.to_rev,
                outside_transaction=outside_transaction,
            )
        except Exception as exc:
            failed = revision_failed(chain, self.schema, step, exc)
            if failed is None:
                raise
            raise failed from exc

    def claim(self, conn: Connection, *, lock_held: bool = False, statement_by_statement: bool = False) -> object:
        """Claim a spare on ``conn``, in a transaction: the prelude (unless ``lock_held``) and the claim with
        its registry row in one round trip, then the grants. Returns the duration the row recorded (CLAIMED on
        asyncpg, which reads no rows in that round trip), or None when no spare was claimed: nothing changed
        then, and the transaction, holding the schema's lock, can go on (to build the schema instead)."""
        transactions.require(conn)
        claim, *grants = self.units()
        assert isinstance(claim, str)
        statements = [*([] if lock_held else self.prelude()), claim]
        if conn.dialect.driver == "asyncpg" and not statement_by_statement:
            recorded: object = CLAIMED if _returned_a_row(conn, statements) else None
        else:
            recorded = send(conn, statements, statement_by_statement=statement_by_statement, result=True)
        if recorded is not None:
            send(conn, [g for g in grants if isinstance(g, str)], statement_by_statement=statement_by_statement)
        return recorded

    def send_batch(self, conn: Connection) -> None:
        """The whole transaction as ONE round trip on psycopg2: BEGIN, every statement, COMMIT, in one
        simple query. ``conn`` must not be in a transaction. On failure the transaction is rolled back (or,
        if the connection is gone, ``conn`` invalidated) and the driver's exception raised."""
        if (
            not self.guarded
            or not self.compiled
            or not self.in_one_transaction
            or conn.dialect.driver != "psycopg2"
            or self.citus
        ):
            raise ValueError("only a guarded, compiled transaction on psycopg2, not Citus, is sent as one batch")
        batch = "\n".join([BEGIN, *self.statements(), COMMIT])
        log.debug("%s: one round trip:\n%s", self.schema, batch)
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
        an online step is shown rendered offline, in comments' company, for review. With a step that
        can't run in a transaction, the parts ``run_in_parts`` sends, under the session's lock."""
        lines = [f"-- {header}"] if header else []
        if self.in_one_transaction:
            lines += self._render_transaction(chain)
        else:
            if self.lock:
                lines += [
                    "-- the schema's lock, held by this session until its release at the end:",
                    lock_statement(self.schema, session=True) + ";",
                ]
            for part in self.parts():
                lines += (
                    self._render_outside(chain, part) if isinstance(part, Step) else part._render_transaction(chain)
                )
            if self.lock:
                lines.append(unlock_statement(self.schema) + ";")
        return "\n".join(lines) + "\n"

    def _render_transaction(self, chain: Chain) -> list[str]:
        lines = [BEGIN, *self.prelude()]
        for unit in self.units():
            lines += _render_online(chain, unit, "runs online through Alembic") if isinstance(unit, Step) else [unit]
        return [*lines, COMMIT]

    def _render_outside(self, chain: Chain, step: Step) -> list[str]:
        lines = [
            f"-- {_span(step)} can't run in a transaction: each statement runs on its own, outside any "
            "transaction (an invalid index a failed earlier run of it left, named in it, is dropped first)",
            *self._session_settings(),
        ]
        if step.online:
            lines += _render_online(chain, step, "runs online through Alembic, in autocommit")
        else:
            lines += step.statements
        lines.append("RESET search_path;")
        if self.lock_timeout_ms is not None:
            lines.append("RESET lock_timeout;")
        return lines

    # ------------------------------------------------- steps that can't run in a transaction
    def run_in_parts(
        self, conn: Connection, chain: Chain, *, statement_by_statement: bool = False, started: float | None = None
    ) -> object:
        """Send ``parts()`` on ``conn``, which is not in a transaction: each transaction in turn, committed,
        and between them each step that can't run in one (``_run_outside``). With ``lock``, the caller
        took the schema's session lock (``hold_lock``); it is released here at the end, whatever happens.
        The last part's registry row records the whole migration's duration, from ``started`` (a
        ``time.perf_counter()`` value; default: now); returns it, as ``run`` does. Refused (SessionRequired,
        nothing sent) on a connection that goes through a pooler."""
        if conn.in_transaction():
            raise ValueError("run_in_parts commits each part: conn must not be in a transaction")
        pooler.require_session(conn, self.needing_a_session(chain))  # a session's lock and search_path below
        started = time.perf_counter() if started is None else started
        recorded: object = None
        try:
            parts = self.parts()
            for i, part in enumerate(parts):
                if isinstance(part, Step):
                    self._run_outside(conn, chain, part)
                    continue
                if i == len(parts) - 1 and part.record is not None:
                    earlier = (time.perf_counter() - started) * 1000.0
                    part = replace(part, record=replace(part.record, earlier_ms=earlier))
                with conn.begin():
                    recorded = part.run(conn, chain, statement_by_statement=statement_by_statement)
        finally:
            if self.lock:
                _in_own_transaction(
                    conn, lambda: send(conn, [unlock_statement(self.schema) + ";"], statement_by_statement=False)
                )
        return recorded

    def _session_settings(self) -> list[str]:
        settings = [search_path_sql(self.schema, self.extension_schema, local=False) + ";"]
        if self.lock_timeout_ms is not None:
            settings.append(lock_timeout_statement(self.lock_timeout_ms, local=False) + ";")
        return settings

    def _run_outside(self, conn: Connection, chain: Chain, step: Step) -> None:
        """One step that can't run in a transaction, on conn in autocommit under the session's search_path
        (and lock_timeout): the invalid indexes that a failed earlier run of it left and that it names are
        dropped first, then each of its statements is sent on its own (or Alembic runs it). The session's
        settings are put back after. A failure raises NonTransactionalFailed, which says where the schema
        stays and names the invalid indexes it left; a lost connection is raised as it is."""
        with conn.begin():
            saved = conn.execute(_SETTINGS).one()
            send(conn, self._session_settings(), statement_by_statement=False)
            leftovers = _invalid_indexes(conn, self.schema, _named_in(chain, step))
        try:
            with _autocommit(conn):
                for name in leftovers:
                    _send_one(
                        conn,
                        f"DROP INDEX CONCURRENTLY IF EXISTS {quote_ident(self.schema)}.{quote_ident(name)}",
                        result=False,
                    )
                if step.online:
                    if conn.in_transaction():
                        conn.commit()  # Alembic opens its own transaction block (a no-op in autocommit)
                    self._run_online(conn, chain, step, outside_transaction=True)
                else:
                    for statement in step.statements:
                        _send_one(conn, statement, result=False)
        except Exception as failure:
            error = self._failed(conn, chain, step, failure)
            if error is failure:
                raise
            raise error from failure
        finally:
            _in_own_transaction(conn, lambda: conn.execute(_RESTORE, saved._asdict()))

    def _failed(self, conn: Connection, chain: Chain, step: Step, failure: Exception) -> Exception:
        """The error to raise for a failed step: NonTransactionalFailed (the database's refusal, with the
        invalid indexes it left, or a revision's own Python error). A lost connection too (``connection_lost``:
        the fleet retries it), naming the indexes the cut-short build left invalid, looked up on a new
        session; when even that fails, the indexes the step builds."""
        named = _named_in(chain, step)
        if conn.invalidated or is_connection_error(failure):
            left = _after_loss(conn, self.schema, named)
            return NonTransactionalFailed(
                self.schema,
                _span(step),
                step.from_rev,
                describe(failure, self.schema),
                _built_indexes(named) if left is None else left,
                sqlstate(failure),
                connection_lost=True,
                looked_up=left is not None,
            )
        left = ()
        with contextlib.suppress(Exception), conn.begin():
            left = _invalid_indexes(conn, self.schema, named)
        detail = failure.detail if isinstance(failure, RevisionFailed) else describe(failure, self.schema)
        return NonTransactionalFailed(self.schema, _span(step), step.from_rev, detail, left, sqlstate(failure))


def hold_lock(conn: Connection, schema: str) -> None:
    """In conn's transaction, which holds the schema's lock: take the session's lock on it too (granted at
    once), which outlives the transaction, for ``run_in_parts`` (which releases it)."""
    send(conn, [lock_statement(schema, session=True) + ";"], statement_by_statement=False)


def revision_failed(chain: Chain, schema: str, step: Step, exc: Exception) -> RevisionFailed | None:
    """``exc``, raised running ``step`` online, as RevisionFailed naming the revision whose code raised it
    (and where), when it is that revision's own Python error; None for a WorkspaceError or the database's
    error, which pass through as they are."""
    if isinstance(exc, WorkspaceError) or is_driver_error(exc):
        return None
    raised = chain.raised_in(exc)
    error = describe(exc, schema) + (f" (at {raised[1]})" if raised else "")
    return RevisionFailed(schema, raised[0] if raised else None, _span(step), error)


def _span(step: Step) -> str:
    return f"{step.from_rev or 'base'} -> {step.to_rev or 'base'}"


def _render_online(chain: Chain, step: Step, how: str) -> list[str]:
    """An online step in a script: its SQL rendered offline for review, or a comment if it can't be."""
    try:
        rendered = chain.compile_statements(step.from_rev, step.to_rev)
    except Exception:
        return [f"-- {_span(step)} {how}; it cannot be rendered offline"]
    return [f"-- {_span(step)} {how}; rendered offline for review:", *rendered]


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
    if conn.invalidated or conn.closed:
        return
    try:
        if conn.in_transaction():
            conn.rollback()
        with conn.begin():
            work()
    except Exception:
        conn.invalidate()


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
