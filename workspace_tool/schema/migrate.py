"""Bring one project schema to a revision: the careful path (lock, read, decide, run) and the fleet's fast
lane (one round trip, guarded), both sending one schema plan (schema/plan.py) through the senders
(schema/send.py).

The careful path is what ``WorkspaceManager.ensure`` runs (``ProjectWorkspaceManager`` through
``AsyncConnection.run_sync``), and what a fleet run falls back to when the fast lane doesn't apply. It
is also the one way a range with a revision that can't run in a transaction is run: in parts, under the
schema's session lock (``send.run_in_parts``).
"""

from __future__ import annotations

import enum
import functools
import logging
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from workspace_tool import registry, transactions
from workspace_tool.chain import Chain, Plan
from workspace_tool.chain.plan import Path
from workspace_tool.dberrors import DEADLOCK_DETECTED, LOCK_NOT_AVAILABLE, STATE_CHANGED, is_connection_error, sqlstate
from workspace_tool.flavor import Flavor
from workspace_tool.namespace import DEFAULT, Namespace
from workspace_tool.registry.inventory import refuse_other_namespace
from workspace_tool.registry.table import RegistryAction
from workspace_tool.schema import roles, send
from workspace_tool.schema.operation import ENSURE, Action, Operation, recorded
from workspace_tool.schema.plan import Expected, RegistryRecord, SchemaPlan
from workspace_tool.schema.state import check_managed, lock_and_read_state, read_state
from workspace_tool.spares.settings import async_claim
from workspace_tool.sql import drop_schema_cascade, lock_schema

DEADLOCK_ATTEMPTS = 5  # the careful path's attempts at a migration PostgreSQL rolls back for a deadlock
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnsureResult:
    """What one ensure/upgrade did to one project."""

    project_id: str
    schema: str
    action: Action
    from_revision: str | None
    to_revision: str | None
    duration_ms: float
    path: Path  # FAST, ONLINE, MIXED, POOL (a spare claimed), or NONE when no SQL ran
    adopted: bool = False  # the chain was run into a hand-made schema (``adopt``; recorded as 'adopt')
    unchanged: bool = False  # nothing written: the schema and its registry row were as asked already


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
    """How to reach the database: the chain, the database's flavor (the extension's schema on the
    search_path, how statements are sent, whether a direct connection is configured for what needs a
    session: a range with a revision that runs outside a transaction then raises pooler.UseDirect, with
    nothing changed, for the caller to run it there), the bound on every lock wait, everything online (the
    reference the fast path is verified against), sending statement by statement, claiming a missing
    schema from the warm pool first (``pool``), and committing the fast lane's batches without waiting for
    their flush (``async_commit``)."""

    chain: Chain
    flavor: Flavor
    lock_timeout_ms: int | None = None
    online: bool = False
    statement_by_statement: bool = False
    pool: bool = False
    first_round_trip: bool = False  # a caller that hasn't read the schema: a missing one in ONE round trip
    # the fast lane's batches committed without waiting for their WAL flush (a fleet run's RunSpec.commit
    # async, which flushes them all once at its end: transactions.flush_commits)
    async_commit: bool = False
    # the fast lane's batch per range, as ``_range_batch`` found it: keyed by plain values (no dataclass hashed
    # per schema), each with the operation it is for; not part of what a Sending is (nor of its copies)
    _batches: dict[tuple[str | None, int, bool, str | None], tuple[Operation, _RangeBatch | None]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )


def claims(how: Sending, what: Migration) -> bool:
    """Whether a missing schema is first claimed from the warm pool (workspace_tool.spares): the pool is on
    (and the flavor supports it: see workspace_tool.spares), the operation creates schemas and the target is head, where
    spares are built (so a claim is exactly what creating it would do). No spare: the schema is built as
    before, in the same transaction."""
    return (
        how.pool
        and how.flavor.spares_refused is None
        and not how.online
        and what.operation.creates
        and what.target == how.chain.head
    )


def migrate(conn: Connection, how: Sending, what: Migration, *, started: float | None = None) -> EnsureResult:
    """The careful path: in one transaction on ``conn`` (not already in one), take the schema's lock and
    read its state (one round trip), decide by the operation's rules, and run the schema transaction,
    whose registry row commits with it.  Raises what the operation's rules say (WorkspaceOutdated, ...).

    When a missing schema may come from the warm pool (``claims``), the lock is taken with the claim (one
    round trip), and the state read only when no spare was claimed.

    A range with a revision that can't run in a transaction: the session's lock is taken too before that
    transaction ends (having decided nothing), and the range is run in parts under it. That needs a
    session (``Flavor.require_session``): with a direct connection configured pooler.UseDirect is raised
    instead, and through a pooler SessionRequired, both after a rollback (nothing changed).

    A deadlock (SQLSTATE 40P01: PostgreSQL rolled this side back) is run again, up to DEADLOCK_ATTEMPTS
    times in all: it is what waiting for the schema's lock ends in while another session builds an index
    concurrently in that schema (the build waits for every older snapshot, the waiter's too). Whatever
    was committed before recorded its revision, so the new attempt starts from the state it reads."""
    started = time.perf_counter() if started is None else started
    if how.first_round_trip:
        first = first_round_trip(conn, how, what, started)
        if isinstance(first, EnsureResult):
            return first
        if first is NO_SPARE:  # the claim changed nothing: the careful path doesn't send it again
            how = replace(how, pool=False)
    for attempt in range(1, DEADLOCK_ATTEMPTS + 1):
        try:
            return _migrate(conn, how, what, started)
        except Exception as exc:
            if sqlstate(exc) != DEADLOCK_DETECTED or attempt == DEADLOCK_ATTEMPTS or conn.invalidated:
                raise
    raise AssertionError("unreachable")


def _migrate(conn: Connection, how: Sending, what: Migration, started: float) -> EnsureResult:
    chain, schema = how.chain, what.schema
    transactions.require(conn)
    grants = tuple(roles.grant_statements(schema, what.owner_role)) if what.owner_role else ()
    with conn.begin():
        locking = time.perf_counter()
        if claims(how, what):
            claimed = _claim(conn, how, what, grants, started)
            if claimed is not None:
                return _logged(claimed, "claimed from the warm pool")
            state = read_state(conn, what.project_id, schema, chain.namespace)  # under the lock the claim took
        else:
            state = lock_and_read_state(conn, what.project_id, schema, how.flavor, how.lock_timeout_ms, chain.namespace)
        sending = f"careful path (lock and state read {_ms(locking):.1f} ms)"  # the lock wait included
        current = state.version
        if state.exists and not state.registered:  # another chain's (two chains in one database)?
            refuse_other_namespace(conn, chain.namespace, what.project_id, schema)
        what.operation.check(chain, what.project_id, schema, current, what.target, exists=state.exists)
        adopted = check_managed(conn, what.project_id, schema, state, adopt=what.adopt)
        action = what.operation.action(chain, current, what.target, exists=state.exists)
        if action is Action.CURRENT and state.recorded_ready_at(current) and not grants:
            result = EnsureResult(
                what.project_id, schema, action, current, what.target, _ms(started), Path.NONE, unchanged=True
            )
            return _logged(result, sending)
        range_ = None if action is Action.CURRENT else _range(chain, current, what.target, state.exists, how.online)
        path = Path.NONE if range_ is None else range_.path
        recorded_as = RegistryAction.ADOPT if adopted else recorded(action)
        plan = SchemaPlan(
            schema,
            how.flavor,
            () if range_ is None else range_.steps,
            lock_timeout_ms=how.lock_timeout_ms,  # the state read bounded this transaction; the parts each their own
            create_schema=not state.exists,
            grants=grants,
            record=RegistryRecord(what.project_id, what.target, recorded_as, path),
            namespace=chain.namespace,
        )
        sent = send.Sent()
        if plan.in_one_transaction:
            sent = send.run(conn, plan, chain, lock_held=True, statement_by_statement=how.statement_by_statement)
        else:
            how.flavor.require_session(conn, plan.needing_a_session(chain))
            send.hold_lock(conn, schema)
    if not plan.in_one_transaction:
        sent = send.run_in_parts(conn, plan, chain, statement_by_statement=how.statement_by_statement, started=started)
    if how.statement_by_statement:
        sending += ", statement by statement"
    result = EnsureResult(
        what.project_id, schema, action, current, what.target, _recorded_ms(sent, started), path, adopted
    )
    return _logged(result, sending)


def _claim(
    conn: Connection, how: Sending, what: Migration, grants: tuple[str, ...], started: float
) -> EnsureResult | None:
    """Take the schema's lock and claim a spare at head for it, registry row and grants included, in the
    caller's transaction; None when there was none (or the schema exists): nothing changed, the lock held."""
    sent = send.claim(conn, _claim_plan(how, what, grants), statement_by_statement=how.statement_by_statement)
    if not sent.claimed:
        return None
    duration = _recorded_ms(sent, started)
    return EnsureResult(what.project_id, what.schema, Action.CREATED, None, what.target, duration, Path.POOL)


def _claim_plan(how: Sending, what: Migration, grants: tuple[str, ...]) -> SchemaPlan:
    """The plan of a claim: a spare at head renamed the project's schema, its registry row, the grants."""
    return SchemaPlan(
        what.schema,
        how.flavor,
        how.chain.claim_plan().steps,
        lock_timeout_ms=how.lock_timeout_ms,
        grants=grants,
        record=RegistryRecord(what.project_id, what.target, RegistryAction.CREATE, Path.POOL),
        namespace=how.chain.namespace,
        async_commit=async_claim(how.chain),
    )


def planned(
    how: Sending, what: Migration, version: str | None, *, exists: bool, expected: Expected | None = None
) -> SchemaPlan:
    """The plan that takes a schema at ``version`` to the target, its registry row included: what the fast
    lane sends (guarded by ``expected``) and what ``--sql`` renders."""
    range_ = _range(how.chain, version, what.target, exists, online=False)
    action = what.operation.action(how.chain, version, what.target, exists=exists)
    return SchemaPlan(
        what.schema,
        how.flavor,
        range_.steps,
        lock_timeout_ms=how.lock_timeout_ms,
        create_schema=not exists,
        record=RegistryRecord(what.project_id, what.target, recorded(action), range_.path),
        expected=expected,
        namespace=how.chain.namespace,
        async_commit=how.async_commit,
    )


def _range(chain: Chain, version: str | None, target: str | None, exists: bool, online: bool) -> Plan:
    """The range a schema at ``version`` is taken through; a schema created in the same transaction gets
    the chain's plan for new schemas (``Chain.fresh_plan``: its history collapsed where that changes nothing)."""
    if not exists and version is None and not online:
        return chain.fresh_plan(target)
    return chain.plan(version, target, online=online)


def fast_lane(how: Sending, what: Migration, expected: Expected) -> SchemaPlan | None:
    """The fleet's guarded plan for a schema as a batch read saw it (one round trip, on a flavor that
    batches), or None when it can't be one: an online step, a step that can't run in a transaction, an
    empty existing schema, a range that moves no version row."""
    if expected.exists and expected.version is None:
        return None
    plan = planned(how, what, expected.version, exists=expected.exists, expected=expected)
    single = plan.compiled and plan.in_one_transaction
    return plan if plan.steps and single and plan.guarded else None


def migrate_expected(conn: Connection, how: Sending, what: Migration, expected: Expected) -> EnsureResult | None:
    """The fleet's fast lane: the whole migration without reading the schema first, guarded so that it
    changes nothing unless the schema is still as the batch read saw it: ONE round trip (``send.send_batch``),
    or on a flavor that takes no batch, the same plan in the round trips it allows (``send.send_trips``).

    Returns None, with nothing changed, when this lane doesn't apply (not psycopg2, statement by statement
    asked on a flavor that batches, an online step, an empty schema, a missing schema the warm pool may
    give) or the schema turned out not as read (SQLSTATE STATE_CHANGED: the plan's guard), or PostgreSQL
    rolled it back for a deadlock: the caller then uses ``migrate``. Database errors are raised as
    SQLAlchemy DBAPIErrors, after the transaction was rolled back."""
    one_by_one = how.statement_by_statement and how.flavor.batches
    if conn.dialect.driver != "psycopg2" or conn.in_transaction() or one_by_one:
        return None
    if not expected.exists and claims(how, what):
        return None
    batch = _range_batch(how, what, expected)  # the usual case: the range's batch, with this schema's names
    plan = fast_lane(how, what, expected) if batch is None else None
    if batch is None and plan is None:
        return None
    started = time.perf_counter()
    one_trip = batch is not None or (plan is not None and plan.batchable)
    try:
        if batch is not None:  # as send.send_batch sends a plan's batch
            send.send_raw(conn, what.schema, batch.filled(what), rollback=True)
        else:
            assert plan is not None  # returned above otherwise
            if one_trip:
                send.send_batch(conn, plan)
            elif how.statement_by_statement:
                with conn.begin():
                    send.run(conn, plan, how.chain, statement_by_statement=True)
            else:
                send.send_trips(conn, plan)
    except Exception as failure:
        code = sqlstate(failure)
        if code == STATE_CHANGED:
            log.debug("%s: not as the batch read saw it; the careful path instead", what.schema)
            return None
        if code == DEADLOCK_DETECTED:
            return None  # rolled back; the careful path waits for the lock again, in a new transaction
        if not conn.invalidated and code not in (None, LOCK_NOT_AVAILABLE) and _moved(conn, how, what, expected):
            log.debug("%s: changed since the batch read; the careful path instead", what.schema)
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
    if batch is not None:
        action, path = batch.action, batch.path
    else:
        assert plan is not None and plan.record is not None
        path = plan.record.path
        action = what.operation.action(how.chain, expected.version, what.target, exists=expected.exists)
    return _logged(
        EnsureResult(what.project_id, what.schema, action, expected.version, what.target, _ms(started), path),
        "fast lane (one round trip)" if one_trip else "fast lane (statement by statement)",
    )


# The schema's name and its project id in a range's batch planned once (``_range_batch``), filled in for each
# schema: PostgreSQL text never holds NUL, so they occur nowhere else in it.
_SCHEMA, _PROJECT = "\x00schema\x00", "\x00project\x00"
# Names that quote_ident and sql_literal write as they are, inside their quotes, and that no namespace's
# rewrite of the registry's name touches (no dot): only such names are filled into a planned batch.
_PLAIN = re.compile(r"[A-Za-z0-9_-]+")
_SAMPLE = ("p-1", "project_p_1")  # a plain project id and its schema: what a text planned once is checked with


def _plain(what: Migration) -> bool:
    """Whether the schema's and the project's names may be filled into a text planned once."""
    return bool(_PLAIN.fullmatch(what.schema) and _PLAIN.fullmatch(what.project_id))


def _filled(sql: str, project_id: str, schema: str) -> str:
    """A text planned with the placeholders, with these names in their places."""
    return sql.replace(_SCHEMA, schema).replace(_PROJECT, project_id)


def _written_as_planned(planned: str, sample: str) -> bool:
    """Whether a text planned with the placeholders, filled with ``_SAMPLE``'s names, is ``sample``: the same
    text planned for those names (else a name is written some other way than as it is)."""
    return _filled(planned, *_SAMPLE) == sample


@dataclass(frozen=True)
class _RangeBatch:
    """The fast lane's batch of one range for every schema at ``expected`` (``_SCHEMA`` and ``_PROJECT`` in
    place of their names), with what a schema's result says."""

    sql: str
    action: Action
    path: Path

    def filled(self, what: Migration) -> str:
        return _filled(self.sql, what.project_id, what.schema)


def _range_batch(how: Sending, what: Migration, expected: Expected) -> _RangeBatch | None:
    """``fast_lane(how, what, expected).batch()`` for a schema with a plain name, planned once per range
    (measured: planning and writing each schema's batch was 15-20 us of the ~110 us of client CPU a fleet
    run spends per schema); None otherwise (not one batch, or a name to plan for itself)."""
    if not _plain(what):
        return None
    operation = what.operation
    key = (what.target, id(operation), expected.exists, expected.version)
    found = how._batches.get(key)
    if found is None or found[0] is not operation:  # (the operation kept with it: its id is never reused)
        found = how._batches[key] = (operation, _planned_batch(how, what.target, operation, expected))
    return found[1]


@functools.lru_cache(maxsize=64)
def _planned_batch(how: Sending, target: str | None, operation: Operation, expected: Expected) -> _RangeBatch | None:
    """The range's batch with the placeholders, checked once against a plain schema's own plan: None (each
    schema planned for itself) if a name is written any other way than as it is."""

    def planned_for(project_id: str, schema: str) -> SchemaPlan | None:
        plan = fast_lane(how, Migration(project_id, schema, target, operation), expected)
        return plan if plan is not None and plan.batchable else None

    plan, sample = planned_for(_PROJECT, _SCHEMA), planned_for(*_SAMPLE)
    if plan is None or sample is None or plan.record is None:
        return None
    if not _written_as_planned(plan.batch(), sample.batch()):
        return None
    action = operation.action(how.chain, expected.version, target, exists=expected.exists)
    return _RangeBatch(plan.batch(), action, plan.record.path)


class NoSpare(enum.Enum):
    """What a claim sent alone (``claim_first``) found: no spare, or the schema exists. Nothing changed, and
    the schema's lock was released with its implicit transaction."""

    NO_SPARE = "no spare"


NO_SPARE = NoSpare.NO_SPARE


def claim_first(conn: Connection, how: Sending, what: Migration, started: float) -> EnsureResult | NoSpare | None:
    """A missing schema claimed from the warm pool in ONE round trip (``send.claim_alone``: one implicit
    transaction that takes the schema's lock, claims a spare, writes the registry row, committed as
    ``workspace_pool_claim_commit`` says), on psycopg2 or asyncpg, ``conn`` not in a transaction. No SQL runs
    through Alembic: the async manager sends it outside its lock on Alembic's globals.

    Returns the result, or NO_SPARE (nothing changed: no spare, or the schema exists), or None when this
    doesn't apply (the pool off, an owner role to grant, a caller that read the schema, ...) or the round
    trip failed on the database's account (e.g. a registry before r0006): the careful path then claims as
    before. A lost connection is raised (a DBAPIError on psycopg2)."""
    if (
        conn.dialect.driver not in ("psycopg2", "asyncpg")
        or conn.in_transaction()
        or not how.first_round_trip
        or how.statement_by_statement
        or what.owner_role
        or not claims(how, what)
    ):
        return None
    try:
        sent = send.claim_alone(conn, what.schema, _claim_alone_sql(how, what))
    except Exception as failure:
        if conn.invalidated or is_connection_error(failure):
            raise _as_dbapi_error(conn, "claim", failure) from failure
        log.debug("%s: no claim in one round trip (%s); the careful path", what.schema, sqlstate(failure))
        return None  # e.g. a registry before r0006: the careful path claims as before
    if not sent.claimed:
        return NO_SPARE
    duration = _recorded_ms(sent, started)
    result = EnsureResult(what.project_id, what.schema, Action.CREATED, None, what.target, duration, Path.POOL)
    return _logged(result, "claimed from the warm pool (one round trip)")


def _claim_alone_sql(how: Sending, what: Migration) -> str:
    """``_claim_plan(how, what, ()).claim_alone()``: for a schema with a plain name, planned once per chain,
    flavor, lock bound and target (``_claim_template``) and filled in (measured: planning and writing it was
    a sixth of the client's CPU of a first ensure claiming a spare)."""
    if _plain(what):
        template = _claim_template(how.chain, how.flavor, how.lock_timeout_ms, what.target)
        if template is not None:
            return _filled(template, what.project_id, what.schema)
    return _claim_plan(how, what, ()).claim_alone()


@functools.lru_cache(maxsize=64)
def _claim_template(chain: Chain, flavor: Flavor, lock_timeout_ms: int | None, target: str | None) -> str | None:
    """The claim sent alone with ``_SCHEMA`` and ``_PROJECT`` in place of the names, checked once against a
    plain schema's own: None (each claim planned for itself) if a name is written any other way."""
    how = Sending(chain, flavor, lock_timeout_ms=lock_timeout_ms, pool=True)

    def planned_for(project_id: str, schema: str) -> str:
        return _claim_plan(how, Migration(project_id, schema, target), ()).claim_alone()

    template = planned_for(_PROJECT, _SCHEMA)
    return template if _written_as_planned(template, planned_for(*_SAMPLE)) else None


def first_round_trip(conn: Connection, how: Sending, what: Migration, started: float) -> EnsureResult | NoSpare | None:
    """A schema expected missing (an ``ensure`` that hasn't read it: ``Sending.first_round_trip``) claimed
    from the warm pool (``claim_first``, psycopg2 or asyncpg), else built in ONE round trip (psycopg2): the
    fast lane's plan guarded by ``Expected(False, None)`` (lock, CREATE SCHEMA, the chain, the registry row)
    sent as one implicit transaction (``send.send_batch(implicit=True)``). The guard, under the schema's
    lock, runs the build only if the schema does not exist: for one that does (every existing project's first
    ensure in a process) nothing is changed and the server reports no error (``SchemaPlan.batch``), and the
    careful path runs.

    Returns None (or NO_SPARE when a claim was sent and found none: the careful path then claims no more),
    nothing changed, when the build doesn't apply (not psycopg2, in a transaction, statement by statement,
    an online step or one outside a transaction, a flavor that takes no batch, an owner role to grant, an
    operation that creates nothing), the schema exists, or the round trip failed on the database's account
    (a deadlock, no registry yet, a failing revision): the careful path then runs, reads the state and
    decides, or fails saying why as it always does. A lost connection is raised (a DBAPIError)."""
    tried: NoSpare | None = None
    if claims(how, what):
        claimed = claim_first(conn, how, what, started)
        if claimed is None or isinstance(claimed, EnsureResult):
            return claimed
        tried = claimed  # no spare: nothing changed; built as a new schema, in one round trip too
    if (
        conn.dialect.driver != "psycopg2"
        or conn.in_transaction()
        or how.online
        or how.statement_by_statement
        or what.owner_role
        or not what.operation.creates
    ):
        return tried
    plan = fast_lane(how, what, Expected(False, None))
    if plan is None or not plan.batchable:
        return tried
    try:
        sent = send.send_batch(conn, plan, implicit=True)
    except Exception as failure:
        if conn.invalidated or is_connection_error(failure):
            raise _as_dbapi_error(conn, "first round trip", failure) from failure
        log.debug("%s: not built in one round trip (%s); the careful path instead", what.schema, sqlstate(failure))
        return tried
    if sent.recorded_ms is None:
        log.debug("%s: exists, nothing changed; the careful path instead", what.schema)
        return tried
    assert plan.record is not None
    result = EnsureResult(
        what.project_id, what.schema, Action.CREATED, None, what.target, _recorded_ms(sent, started), plan.record.path
    )
    return _logged(result, "first round trip (guarded)")


def _as_dbapi_error(conn: Connection, what: str, failure: Exception) -> Exception:
    """A driver's exception as SQLAlchemy's DBAPIError (what the managers translate), else as it is."""
    if isinstance(failure, conn.dialect.loaded_dbapi.Error):
        return DBAPIError.instance(
            what, None, failure, conn.dialect.loaded_dbapi.Error, connection_invalidated=conn.invalidated
        )
    return failure


def _moved(conn: Connection, how: Sending, what: Migration, expected: Expected) -> bool:
    """After a failed batch: is the schema no longer as the caller read it?"""
    with conn.begin():
        state = read_state(conn, what.project_id, what.schema, how.chain.namespace)
    return state.version != expected.version or (expected.version is None and state.exists)


def run_plan(
    conn: Connection,
    chain: Chain,
    schema: str,
    flavor: Flavor,
    plan: Plan,
    *,
    create_schema: bool,
    commit: bool = False,
    lock_timeout_ms: int | None = None,
) -> None:
    """Run a plan into ``schema`` in conn's transaction with no lock and no registry row: for schemas no one
    else sees (scratch schemas rolled back afterwards: references, autogenerate, the fast-path proof; the
    warm pool's spares, under names no project has).
    With ``commit`` (a plan with a step that can't run in a transaction), on conn not in a transaction,
    each part committed: the caller drops the schema afterwards (``scratch_schema`` does). They are created
    as the flavor creates project schemas."""
    scratch = SchemaPlan(
        schema, flavor, plan.steps, lock=False, lock_timeout_ms=lock_timeout_ms, create_schema=create_schema
    )
    if commit:
        send.run_in_parts(conn, scratch, chain)
    else:
        send.run(conn, scratch, chain)


def in_one_transaction(plans: Sequence[Plan]) -> bool:
    """Whether every step of these plans can run in a transaction."""
    return all(step.transactional for plan in plans for step in plan.steps)


@contextmanager
def scratch_schema(
    conn: Connection,
    chain: Chain,
    schema: str,
    flavor: Flavor,
    plans: Sequence[tuple[Plan, bool]],
    *,
    lock_timeout_ms: int | None = None,
) -> Iterator[None]:
    """``schema``, a scratch schema no one else sees, taken through ``plans`` ((plan, create the schema)
    in turn), inside a transaction on conn (not in one) that is rolled back at the end. A plan with a
    step that can't run in a transaction can't be rolled back: then the plans run first, each part
    committed, and the schema is dropped at the end, whatever happens. Created as the flavor creates project
    schemas."""
    committed = not in_one_transaction([plan for plan, _ in plans])
    try:
        if committed:
            for plan, create in plans:
                run_plan(
                    conn,
                    chain,
                    schema,
                    flavor,
                    plan,
                    create_schema=create,
                    commit=True,
                    lock_timeout_ms=lock_timeout_ms,
                )
        with conn.begin() as transaction:
            for statement in [] if lock_timeout_ms is None else flavor.lock_timeout_statements(lock_timeout_ms):
                conn.exec_driver_sql(statement)
            if not committed:
                for plan, create in plans:
                    run_plan(conn, chain, schema, flavor, plan, create_schema=create)
            yield
            transaction.rollback()
    finally:
        if committed and not conn.invalidated:
            if conn.in_transaction():
                conn.rollback()
            with conn.begin():
                drop_schema_cascade(conn, schema)


def drop_schema(conn: Connection, project_id: str, schema: str, namespace: Namespace = DEFAULT) -> bool:
    """Drop a project's schema and its registry row in one transaction under the schema's lock; False if
    neither existed."""
    transactions.require(conn)
    with conn.begin():
        lock_schema(conn, schema)
        refuse_other_namespace(conn, namespace, project_id, schema)  # another chain's: not this one's to drop
        existed = conn.execute(
            text("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :s)"), {"s": schema}
        ).scalar()
        drop_schema_cascade(conn, schema)
        deleted = conn.execute(namespace.sql(registry.DELETE), {"project_id": project_id}).rowcount
    return bool(existed) or deleted > 0


def _recorded_ms(sent: send.Sent, started: float) -> float:
    """The duration the registry row recorded (the server's), else the one measured here."""
    return _ms(started) if sent.recorded_ms is None else sent.recorded_ms


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def _logged(result: EnsureResult, sending: str) -> EnsureResult:
    """One INFO line per schema a migration reached: what it did, the plan's path, how it was sent, how long."""
    if log.isEnabledFor(logging.INFO):
        log.info(
            "%s: %s %s -> %s, path %s, %s, %.1f ms",
            result.schema,
            result.action,
            result.from_revision or "base",
            result.to_revision or "base",
            result.path,
            sending,
            result.duration_ms,
        )
    return result
