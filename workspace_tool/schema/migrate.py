"""Bring one project schema to a revision, on one connection, in one transaction under its lock.

This is the shared core of ``WorkspaceManager.ensure`` and ``ProjectWorkspaceManager`` (which runs it
through ``AsyncConnection.run_sync``) and of the fleet's per-schema work.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.util import await_only

from workspace_tool import registry, transactions
from workspace_tool.chain import Chain, Plan
from workspace_tool.errors import (
    MigrationFailed,
    UnknownRevision,
    UnmanagedSchema,
    WorkspaceAhead,
    WorkspaceError,
    WorkspaceNotFound,
    WorkspaceOutdated,
)
from workspace_tool.naming import quote_ident
from workspace_tool.schema import roles
from workspace_tool.sql import LOCK_SQL, lock_key, lock_schema, search_path_sql


@dataclass(frozen=True)
class EnsureResult:
    """What one ensure/upgrade did to one project."""

    project_id: str
    schema: str
    action: str  # 'cached', 'verified', 'current', 'created', 'upgraded', 'downgraded'
    from_revision: str | None
    to_revision: str | None
    duration_ms: float
    path: str  # 'fast', 'online', 'mixed', or 'none' when no SQL ran


@dataclass(frozen=True)
class SchemaState:
    exists: bool
    version: str | None
    registry_revision: str | None  # the registry row's revision (None at base, or when there is no row)
    registry_status: str | None  # 'ready', 'failed', or None when the project has no registry row
    has_version_table: bool = False

    @property
    def registered(self) -> bool:
        return self.registry_status is not None

    def recorded_ready_at(self, revision: str | None) -> bool:
        """True if the registry row says ready at ``revision`` (a failed row is rewritten once reached)."""
        return self.registry_status == "ready" and self.registry_revision == revision


_STATE = text(
    "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :schema) AS schema_exists, "
    "to_regclass(:version_table) IS NOT NULL AS has_version_table, r.revision AS registry_revision, "
    "r.status AS registry_status "
    f"FROM (SELECT 1) AS one LEFT JOIN {registry.REGISTRY_TABLE} AS r ON r.project_id = :project_id"
)
# An existing schema without a version table: which relations does it hold? (pg_class has no index on
# relnamespace alone: only asked in that rare case, never on the path of a normal ensure.)
_RELATIONS = text(
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = :schema AND c.relkind NOT IN ('i', 'I') ORDER BY c.relname"  # indexes go with tables
)


def version_table(schema: str) -> str:
    return f"{quote_ident(schema)}.alembic_version"


# The schema's lock and then its state, in one round trip (psycopg2 sends both as one simple query; in
# READ COMMITTED the second statement takes its snapshot after the lock is granted, so it sees whatever
# the lock holder committed).  asyncpg's extended protocol takes one statement at a time.
_LOCKED_STATE = text(LOCK_SQL + ";\n" + str(_STATE))


def read_state(conn: Connection, project_id: str, schema: str, *, lock: bool = False) -> SchemaState:
    """The schema's state; with ``lock=True`` after taking its advisory lock (one round trip on psycopg2)."""
    params = {"schema": schema, "version_table": version_table(schema), "project_id": project_id}
    if lock and conn.dialect.driver == "psycopg2":
        row = conn.execute(_LOCKED_STATE, {**params, "key": lock_key(schema)}).one()
    else:
        if lock:
            lock_schema(conn, schema)
        row = conn.execute(_STATE, params).one()
    version: str | None = None
    if row.has_version_table:
        versions = conn.execute(text(f"SELECT version_num FROM {version_table(schema)}")).scalars().all()
        if len(versions) > 1:
            raise UnknownRevision(schema, ",".join(versions))
        version = versions[0] if versions else None
    return SchemaState(
        bool(row.schema_exists), version, row.registry_revision, row.registry_status, bool(row.has_version_table)
    )


def check_managed(conn: Connection, project_id: str, schema: str, state: SchemaState, *, adopt: bool) -> bool:
    """True if ``schema`` exists with relations but no alembic_version (workspace-tool did not make it) and
    ``adopt`` allows running the chain into it; raise UnmanagedSchema if it doesn't. False otherwise: an
    empty schema, or one with a version table, is provisioned as usual."""
    if not state.exists or state.has_version_table:
        return False
    relations = list(conn.execute(_RELATIONS, {"schema": schema}).scalars())
    if relations and not adopt:
        raise UnmanagedSchema(project_id, schema, relations)
    return bool(relations)


def action_for(chain: Chain, current: str | None, target: str | None, *, exists: bool = True) -> str:
    """EnsureResult.action for bringing a schema at ``current`` to ``target``."""
    if current == target and exists:
        return "current"
    if current is None:
        return "created"
    return "upgraded" if chain.is_upgrade(current, target) else "downgraded"


def exec_batch_scalar(conn: Connection, sql: str) -> object:
    """Send a batch on psycopg2 and return the first column of its last statement's first row."""
    return conn.exec_driver_sql(sql, execution_options={"no_parameters": True}).scalar()


def exec_batch(conn: Connection, sql: str) -> None:
    """Send many statements as one batch (simple query protocol), inside conn's transaction."""
    if conn.dialect.driver == "asyncpg":
        # The adapter's transaction has begun: the caller took the schema lock through it.
        await_only(conn.connection.driver_connection.execute(sql))  # type: ignore[union-attr]
    else:
        conn.exec_driver_sql(sql, execution_options={"no_parameters": True})


def run_plan(
    conn: Connection,
    chain: Chain,
    schema: str,
    extension_schema: str,
    plan: Plan,
    *,
    create_schema: bool,
    epilogue: str | None = None,
) -> object:
    """Apply a plan's steps on conn, which is in a transaction holding the schema's lock.

    ``epilogue`` (psycopg2 only, and only when the last step is compiled) rides at the end of the last
    batch; its scalar result is returned. Otherwise nothing is sent for it and None is returned."""
    transactions.require(conn)
    prelude = (f"CREATE SCHEMA {quote_ident(schema)};\n" if create_schema else "") + (
        search_path_sql(schema, extension_schema) + ";\n"
    )
    for step in plan.steps:
        if step.sql is None:
            if prelude:
                exec_batch(conn, prelude)
            try:
                chain.run_online(conn, schema, extension_schema, step.from_rev, step.to_rev)
            except (WorkspaceError, DBAPIError, OSError):
                raise
            except Exception as exc:  # a revision's own Python error: the transaction rolls back
                raise MigrationFailed(schema, f"{type(exc).__name__}: {exc}") from exc
        elif epilogue is not None and step is plan.steps[-1] and conn.dialect.driver == "psycopg2":
            return exec_batch_scalar(conn, prelude + step.sql + epilogue)
        else:
            exec_batch(conn, prelude + step.sql)
        prelude = ""
    if prelude and create_schema:
        exec_batch(conn, prelude)
    return None


def migrate_on(
    conn: Connection,
    chain: Chain,
    project_id: str,
    schema: str,
    extension_schema: str,
    *,
    target: str | None,
    allow_upgrade: bool = True,
    allow_downgrade: bool = False,
    create: bool = True,
    started: float | None = None,
    online: bool = False,
    lock_timeout_ms: int | None = None,
    owner_role: str | None = None,
    adopt: bool = False,
) -> EnsureResult:
    """Bring ``schema`` to ``target`` in one transaction on ``conn`` (not already in one) under the
    schema's advisory lock, writing the registry row in the same transaction.  ``online=True`` runs the
    whole range through Alembic instead of replaying compiled SQL.  ``lock_timeout_ms`` bounds every lock
    wait in the transaction (the schema's advisory lock, each DDL's table locks): SQLSTATE 55P03.
    ``owner_role`` grants that role the schema in the same transaction (see roles.py).  An existing
    schema holding relations but no alembic_version is refused (UnmanagedSchema) unless ``adopt``."""
    started = time.perf_counter() if started is None else started
    transactions.require(conn)
    with conn.begin():
        if lock_timeout_ms is not None:
            conn.execute(text("SELECT set_config('lock_timeout', :t, true)"), {"t": f"{int(lock_timeout_ms)}ms"})
        state = read_state(conn, project_id, schema, lock=True)
        current = state.version
        chain.check_known(schema, current)
        if not state.exists and not create:
            raise WorkspaceNotFound(project_id, schema)
        adopted = check_managed(conn, project_id, schema, state, adopt=adopt)
        action = action_for(chain, current, target, exists=state.exists)
        recorded_as = registry.ADOPT if adopted else registry.recorded_action(action)
        if action == "current":
            plan_path = "none"
            if state.recorded_ready_at(current) and owner_role is None:
                return EnsureResult(project_id, schema, action, current, target, _ms(started), plan_path)
        else:
            upgrading = chain.is_upgrade(current, target)
            if upgrading and not allow_upgrade and state.exists:
                raise WorkspaceOutdated(project_id, schema, current, str(target))
            if not upgrading and not allow_downgrade:
                raise WorkspaceAhead(project_id, schema, str(current), target)
            plan = chain.plan(current, target, online=online)
            # The registry row rides in the last batch when nothing else has to run after it.
            epilogue = None if owner_role else registry.upsert_sql(project_id, schema, target, recorded_as, plan.path)
            recorded = run_plan(
                conn,
                chain,
                schema,
                extension_schema,
                plan,
                create_schema=not state.exists,
                epilogue=epilogue,
            )
            plan_path = plan.path
            if recorded is not None:
                duration = float(recorded)  # type: ignore[arg-type]
                return EnsureResult(project_id, schema, action, current, target, duration, plan_path)
        if owner_role is not None:
            exec_batch(conn, roles.grant_sql(schema, owner_role))
        duration = _ms(started)
        conn.execute(
            registry.UPSERT, registry.upsert_params(project_id, schema, target, recorded_as, duration, plan_path)
        )
    return EnsureResult(project_id, schema, action, current, target, duration, plan_path)


# The statement that moves alembic_version at the end of a compiled range (Alembic's offline rendering).
_FINAL_VERSION_MOVE = re.compile(
    r"^(UPDATE alembic_version SET version_num='[^']*' WHERE alembic_version\.version_num = '[^']*'"
    r"|DELETE FROM alembic_version WHERE alembic_version\.version_num = '[^']*');\s*\Z",
    re.MULTILINE,
)


STATE_CHANGED = "workspace-tool:state-changed"


def _move_version_and_record(move: str, upsert: str) -> str:
    """One statement: move alembic_version, write the registry row only if the version moved, and raise
    (an invalid integer cast carrying STATE_CHANGED) if it did not, so the batch can't commit."""
    return (
        f"WITH moved AS ({move} RETURNING 1), recorded AS ({upsert}) "
        f"SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM recorded) THEN ('{STATE_CHANGED} ' || now())::int END"
    )


def migrate_expected(
    conn: Connection,
    chain: Chain,
    project_id: str,
    schema: str,
    extension_schema: str,
    *,
    expected_exists: bool,
    expected_version: str | None,
    target: str | None,
) -> EnsureResult | None:
    """The fleet's fast lane, for a schema whose state the caller has just read in a batch read: the
    whole migration is ONE round trip, ``BEGIN; lock; search_path; compiled SQL; registry row; COMMIT``.
    The final version UPDATE/DELETE and the registry upsert share one statement that fails unless the
    version moved from what was read; for a new schema, CREATE SCHEMA itself fails if it appeared.

    Returns None, with nothing changed, when this lane doesn't apply (not psycopg2, an online step, an
    empty schema) or the schema turned out not as read: the caller then uses migrate_on. Database errors
    are raised as SQLAlchemy DBAPIErrors, after the transaction was rolled back."""
    if conn.dialect.driver != "psycopg2" or conn.in_transaction() or (expected_exists and expected_version is None):
        return None
    plan = chain.plan(expected_version, target)
    sql = plan.sql
    if sql is None or not plan.steps:
        return None
    action = action_for(chain, expected_version, target, exists=expected_exists)
    recorded_as = registry.recorded_action(action)
    if expected_exists:
        final = _FINAL_VERSION_MOVE.search(sql)
        if final is None:
            return None
        body = sql[: final.start()]
        upsert = registry.upsert_sql(project_id, schema, target, recorded_as, plan.path, per_row_of="moved")
        record = _move_version_and_record(final.group(1), upsert)
    else:
        body = f"CREATE SCHEMA {quote_ident(schema)};\n" + sql
        record = registry.upsert_sql(project_id, schema, target, recorded_as, plan.path)
    batch = (
        f"BEGIN ISOLATION LEVEL {transactions.ISOLATION_LEVEL};\n"  # whatever the server's default
        f"SELECT pg_advisory_xact_lock(hashtextextended({registry.sql_literal(lock_key(schema))}, 0));\n"
        + search_path_sql(schema, extension_schema)
        + ";\n"
        + body
        + record
        + ";\nCOMMIT;"
    )
    started = time.perf_counter()
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    failure: Exception | None = None
    autocommit = dbapi.autocommit
    dbapi.autocommit = True  # the batch carries its own BEGIN and COMMIT
    try:
        cursor = dbapi.cursor()
        try:
            cursor.execute(batch)
        finally:
            cursor.close()
    except Exception as exc:
        failure = exc
        try:
            rollback = dbapi.cursor()
            rollback.execute("ROLLBACK")
            rollback.close()
        except Exception:
            conn.invalidate()  # the connection is gone: never hand it back to the pool
    finally:
        if not conn.invalidated:
            with contextlib.suppress(Exception):
                dbapi.autocommit = autocommit
    if failure is not None:
        code = getattr(failure, "pgcode", None)
        if code == "22P02" and STATE_CHANGED in str(failure):
            return None
        if not conn.invalidated and code not in (None, "55P03") and _moved(conn, project_id, schema, expected_version):
            return None  # it failed because the schema changed since it was read, not on its own account
        if isinstance(failure, conn.dialect.loaded_dbapi.Error):
            raise DBAPIError.instance(
                "fast lane batch",
                None,
                failure,
                conn.dialect.loaded_dbapi.Error,
                connection_invalidated=conn.invalidated,
            ) from failure
        raise failure
    return EnsureResult(project_id, schema, action, expected_version, target, _ms(started), plan.path)


def drop_on(conn: Connection, project_id: str, schema: str) -> bool:
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


def _moved(conn: Connection, project_id: str, schema: str, expected_version: str | None) -> bool:
    """After a failed batch: is the schema no longer as the caller read it?"""
    with conn.begin():
        state = read_state(conn, project_id, schema)
    return state.version != expected_version or (expected_version is None and state.exists)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
