"""Bring one project schema to a revision, on one connection, in one transaction under its lock.

This is the shared core of ``WorkspaceManager.ensure`` and ``ProjectWorkspaceManager`` (which runs it
through ``AsyncConnection.run_sync``) and of the fleet's per-schema work.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.util import await_only

from . import registry, roles
from .chain import Chain, Plan
from .errors import MigrationFailed, UnknownRevision, WorkspaceError, WorkspaceNotFound, WorkspaceOutdated
from .naming import quote_ident
from .targeting import LOCK_SQL, lock_key, lock_schema, search_path_sql


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
    registered_revision: str | None
    registered: bool
    has_version_table: bool = False


_STATE = text(
    "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :schema) AS schema_exists, "
    "to_regclass(:version_table) IS NOT NULL AS has_version_table, "
    # a row marked failed has no "registered revision": reaching its revision again rewrites it as ready
    f"(SELECT revision FROM {registry.REGISTRY_TABLE} WHERE project_id = :project_id AND status = 'ready') "
    "AS registered_revision, "
    f"EXISTS (SELECT 1 FROM {registry.REGISTRY_TABLE} WHERE project_id = :project_id) AS registered"
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
        bool(row.schema_exists), version, row.registered_revision, bool(row.registered), bool(row.has_version_table)
    )


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
    empty_version_table: bool = False,
) -> None:
    """Apply a plan's steps on conn, which is in a transaction holding the schema's lock.

    ``empty_version_table``: the schema has an alembic_version table with no row (Alembic leaves one
    after an online downgrade to base); compiled SQL from base creates that table, so it goes first."""
    prelude = (f"CREATE SCHEMA {quote_ident(schema)};\n" if create_schema else "") + (
        search_path_sql(schema, extension_schema) + ";\n"
    )
    if empty_version_table and plan.steps and plan.steps[0].sql is not None and plan.from_rev is None:
        prelude += f"DROP TABLE {version_table(schema)};\n"
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
        else:
            exec_batch(conn, prelude + step.sql)
        prelude = ""
    if prelude and create_schema:
        exec_batch(conn, prelude)


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
) -> EnsureResult:
    """Bring ``schema`` to ``target`` in one transaction on ``conn`` (not already in one) under the
    schema's advisory lock, writing the registry row in the same transaction.  ``online=True`` runs the
    whole range through Alembic instead of replaying compiled SQL.  ``lock_timeout_ms`` bounds every lock
    wait in the transaction (the schema's advisory lock, each DDL's table locks): SQLSTATE 55P03.
    ``owner_role`` grants that role the schema in the same transaction (see roles.py)."""
    started = time.perf_counter() if started is None else started
    with conn.begin():
        if lock_timeout_ms is not None:
            conn.execute(text("SELECT set_config('lock_timeout', :t, true)"), {"t": f"{int(lock_timeout_ms)}ms"})
        state = read_state(conn, project_id, schema, lock=True)
        current = state.version
        chain.check_known(schema, current)
        if not state.exists and not create:
            raise WorkspaceNotFound(project_id, schema)
        if current == target and state.exists:
            action, plan_path = "current", "none"
            if state.registered and state.registered_revision == current and owner_role is None:
                return EnsureResult(project_id, schema, action, current, target, _ms(started), plan_path)
        else:
            upgrading = chain.is_upgrade(current, target)
            if upgrading and not allow_upgrade and state.exists:
                raise WorkspaceOutdated(project_id, schema, current, str(target))
            if not upgrading and not allow_downgrade:
                raise UnknownRevision(schema, str(current))
            plan = chain.plan(current, target, online=online)
            run_plan(
                conn,
                chain,
                schema,
                extension_schema,
                plan,
                create_schema=not state.exists,
                empty_version_table=state.has_version_table and current is None,
            )
            plan_path = plan.path
            action = "created" if current is None else ("upgraded" if upgrading else "downgraded")
        if owner_role is not None:
            exec_batch(conn, roles.grant_sql(schema, owner_role))
        duration = _ms(started)
        conn.execute(registry.UPSERT, registry.upsert_params(project_id, schema, target, action, duration, plan_path))
    return EnsureResult(project_id, schema, action, current, target, duration, plan_path)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
