"""Bulk drop, and its undo: each selected project dropped in a transaction of its own (its schema, its
registry row, a quarantined copy of it), so that a run over any number of projects holds the locks of one
schema at a time per connection, far inside the server's lock table (max_locks_per_transaction = 64 is
the default: one transaction over 400 schemas runs it out, "out of shared memory"). Run by the fleet runner
(DropTask), with its selectors, jobs, failure limits, progress and report.

With ``retain`` a project is quarantined instead: its schema renamed aside (``quarantine_name``), its
registry row kept with status 'dropped' and metadata->'quarantine' = {schema, dropped_at, until}. Fleet runs
see it as missing and leave it alone; ``restore`` brings it back as it was, ``purge`` removes it for good,
and ``purge_expired`` (`drop --purge-expired`) purges those past their date."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, text

from workspace_tool import registry, transactions
from workspace_tool.dberrors import INVALID_SCHEMA_NAME, sqlstate, translating
from workspace_tool.errors import WorkspaceNotFound
from workspace_tool.flavor import Flavor
from workspace_tool.lifecycle import batch
from workspace_tool.lifecycle.errors import LifecycleRefused, NotQuarantined, ProjectExists
from workspace_tool.namespace import DEFAULT, Namespace
from workspace_tool.registry.inventory import refuse_other_namespace
from workspace_tool.registry.table import RegistryAction, RegistryStatus
from workspace_tool.schema.operation import Operation, Refusal, Work
from workspace_tool.schema.state import SchemaRecord
from workspace_tool.sql import (
    DEFAULT_LOCK_TIMEOUT_MS,
    drop_schema_cascade,
    lock_schema,
    lock_timeout_statement,
    quote_ident,
    sql_literal,
)

QUARANTINE_PREFIX = "dropped_"  # not a project schema's name: no fleet run, status or pool sees it
_EXISTS = text("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :s)")
# Written against the default registry; each sent through the chain's namespace (Namespace.sql).
_TABLE = registry.REGISTRY_TABLE
_ROW = text(
    f"SELECT status, revision, metadata->'quarantine' AS quarantine FROM {_TABLE} WHERE project_id = :p FOR UPDATE"
)
_QUARANTINE = text(
    f"INSERT INTO {_TABLE} AS w (project_id, schema_name, revision, status, last_action, metadata) "
    "VALUES (:p, :schema, :revision, 'dropped', :action, jsonb_build_object('quarantine', "
    "jsonb_build_object('schema', :aside, 'dropped_at', now(), 'until', now() + make_interval(secs => :secs), "
    "'by', :by))) "
    "ON CONFLICT (project_id) DO UPDATE SET status = 'dropped', last_action = EXCLUDED.last_action, "
    "last_error = NULL, updated_at = now(), metadata = w.metadata || EXCLUDED.metadata"
)
_RESTORED = text(
    f"UPDATE {_TABLE} SET status = 'ready', last_action = :action, updated_at = now(), "
    "metadata = metadata - 'quarantine' WHERE project_id = :p"
)
_EXPIRED = text(
    f"SELECT project_id FROM {_TABLE} WHERE status = 'dropped' "
    "AND (metadata->'quarantine'->>'until')::timestamptz <= now() ORDER BY project_id"
)
# A quarantined copy, whether or not the project was made again since (ensure leaves metadata as it is).
_QUARANTINED = text(
    f"SELECT project_id, metadata->'quarantine' AS quarantine FROM {_TABLE} "
    "WHERE metadata ? 'quarantine' ORDER BY project_id"
)
_FORGET = text(f"UPDATE {_TABLE} SET metadata = metadata - 'quarantine', updated_at = now() WHERE project_id = :p")


def quarantine_name(schema: str, namespace: Namespace = DEFAULT) -> str:
    """Where a quarantined project's schema waits: dropped_<id> in the default namespace (at most 58
    characters); in another, dropped_<4 hex of its prefix>_<id> (at most 63), so that two chains' copies of
    one id never meet. Not a project schema's name in either: no fleet run, status or pool sees it."""
    rest = schema[len(namespace.schema_prefix) :]
    if namespace.is_default:
        return QUARANTINE_PREFIX + rest
    tag = hashlib.sha256(namespace.schema_prefix.encode()).hexdigest()[:4]
    return f"{QUARANTINE_PREFIX}{tag}_{rest}"


@dataclass(frozen=True)
class DropTask:
    """What a bulk drop does to each selected project (the fleet runner's SchemaTask), in ``namespace``.
    ``retain_s``: quarantine for that many seconds instead."""

    retain_s: float | None = None
    by: str = "drop"  # what quarantined it: 'drop', or 'move' (a move under way: see move.py)
    namespace: Namespace = DEFAULT

    @property
    def reads_versions(self) -> bool:
        """A quarantine records the revision its schema was at; a drop needs none."""
        return self.retain_s is not None

    def refusal(self, record: SchemaRecord) -> Refusal | None:
        if not record.exists and not record.registered:
            return Refusal.ABSENT
        if self.retain_s is not None and not record.exists:
            return Refusal.MISSING  # nothing to quarantine: drop it without --retain
        return None

    def run(self, conn: Connection, work: Work, flavor: Flavor, lock_timeout_ms: int) -> str | None:
        transactions.require(conn)
        if self.retain_s is None:
            return _drop(conn, work, flavor, lock_timeout_ms, self.namespace)
        with conn.begin():
            for statement in flavor.lock_timeout_statements(lock_timeout_ms):
                conn.exec_driver_sql(statement)
            lock_schema(conn, work.schema)
            if not conn.execute(_EXISTS, {"s": work.schema}).scalar():
                raise WorkspaceNotFound(work.project_id, work.schema)  # dropped since the read: gone
            return _quarantine(conn, work, self.retain_s, self.by, self.namespace)


def _drop(conn: Connection, work: Work, flavor: Flavor, lock_timeout_ms: int, namespace: Namespace) -> str:
    """One round trip (batch.transaction; on Citus five: BEGIN with the lock and the guard, the SETs, each
    DROP SCHEMA alone, the registry row with COMMIT): under the project's lock, a guard that there is
    something to drop (its schema, a quarantined copy, its registry row), then drop them all. The guard
    failing means it was dropped since the read (gone), and nothing is changed."""
    schema, aside, project_id = work.schema, quarantine_name(work.schema, namespace), sql_literal(work.project_id)
    found = (
        f"EXISTS (SELECT 1 FROM pg_namespace WHERE nspname IN ({sql_literal(schema)}, {sql_literal(aside)})) "
        f"OR EXISTS (SELECT 1 FROM {_TABLE} WHERE project_id = {project_id})"
    )
    statements = [
        *batch.locked(flavor, schema, lock_timeout_ms, [namespace.sql(batch.found_guard(found, schema))]),
        f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE",
        f"DROP SCHEMA IF EXISTS {quote_ident(aside)} CASCADE",
        namespace.sql(f"DELETE FROM {_TABLE} WHERE project_id = {project_id}"),
    ]
    try:
        batch.transaction(conn, flavor, schema, statements, read=False)
    except Exception as exc:
        if sqlstate(exc) == INVALID_SCHEMA_NAME:  # the guard: nothing was there, dropped since the read
            raise WorkspaceNotFound(work.project_id, work.schema) from None
        raise
    return "dropped"


def _quarantine(conn: Connection, work: Work, retain_s: float, by: str, namespace: Namespace) -> str:
    aside = quarantine_name(work.schema, namespace)
    if conn.execute(_EXISTS, {"s": aside}).scalar():
        raise LifecycleRefused(
            f"{work.project_id} already has a quarantined copy ({aside}): `workspace-tool purge "
            f"{work.project_id} --yes` first, or drop it without --retain"
        )
    conn.execute(text(f"ALTER SCHEMA {quote_ident(work.schema)} RENAME TO {quote_ident(aside)}"))
    conn.execute(
        namespace.sql(_QUARANTINE),
        {
            "p": work.project_id,
            "schema": work.schema,
            "revision": work.from_revision,
            "action": str(RegistryAction.QUARANTINE),
            "aside": aside,
            "secs": retain_s,
            "by": by,
        },
    )
    return f"quarantined as {aside}"


def drop_one(
    engine: Engine, project_id: str, *, namespace: Namespace = DEFAULT, lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS
) -> bool:
    """Drop one project (its schema, its registry row, a quarantined copy of it) in one transaction under
    its lock; False if there was nothing to drop. Another chain's schema (OtherNamespace) is refused."""
    schema = namespace.schema_for(project_id)
    with translating(engine.url), transactions.connect(engine) as conn:
        flavor = registry.bootstrap(conn, namespace)
        with translating(engine.url, schema):
            with conn.begin():
                refuse_other_namespace(conn, namespace, project_id, schema)
            try:
                DropTask(namespace=namespace).run(conn, Work(project_id, schema, None), flavor, lock_timeout_ms)
            except WorkspaceNotFound:
                return False
    return True


def drop_operation(retain_s: float | None = None, namespace: Namespace = DEFAULT) -> Operation:
    """The fleet Operation of a bulk drop (or quarantine, with ``retain_s``) in ``namespace``: run it with
    ``fleet.run(engine, chain, drop_operation(...), spec)``."""
    name = "drop" if retain_s is None else "quarantine"
    task = DropTask(retain_s, namespace=namespace)
    return Operation(name, upgrades=False, downgrades=False, creates=False, task=task)


# ------------------------------------------------------------------------------- restore, purge
@dataclass(frozen=True)
class Quarantined:
    project_id: str
    schema: str  # where it waits
    dropped_at: str
    until: str
    by: str = "drop"  # 'drop' (drop --retain) or 'move' (a move under way)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def quarantined(engine: Engine, namespace: Namespace = DEFAULT) -> list[Quarantined]:
    """The projects in quarantine, by id. Read-only."""
    with translating(engine.url), transactions.connect(engine) as conn:
        if not registry.present(conn, namespace):
            return []
        return [_described(r.project_id, r.quarantine) for r in conn.execute(namespace.sql(_QUARANTINED))]


def _described(project_id: str, quarantine: Any) -> Quarantined:
    q = quarantine if isinstance(quarantine, dict) else json.loads(quarantine)
    return Quarantined(project_id, q["schema"], str(q["dropped_at"]), str(q["until"]), str(q.get("by", "drop")))


def restore(
    engine: Engine, project_id: str, *, namespace: Namespace = DEFAULT, lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS
) -> Quarantined:
    """Bring a quarantined project back as it was dropped (schema renamed back, registry row ready)."""
    schema = namespace.schema_for(project_id)
    with translating(engine.url, schema), transactions.connect(engine) as conn, conn.begin():
        found = _locked_quarantine(conn, project_id, schema, namespace, lock_timeout_ms)
        if conn.execute(_EXISTS, {"s": schema}).scalar():
            raise ProjectExists(project_id, schema)
        conn.execute(text(f"ALTER SCHEMA {quote_ident(found.schema)} RENAME TO {quote_ident(schema)}"))
        conn.execute(namespace.sql(_RESTORED), {"p": project_id, "action": str(RegistryAction.RESTORE)})
    return found


def purge(
    engine: Engine, project_id: str, *, namespace: Namespace = DEFAULT, lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS
) -> Quarantined:
    """Remove a quarantined project for good: its quarantined schema and its registry row (a project made
    again since keeps its schema and row: only the quarantined copy goes)."""
    schema = namespace.schema_for(project_id)
    with translating(engine.url, schema), transactions.connect(engine) as conn, conn.begin():
        found = _locked_quarantine(conn, project_id, schema, namespace, lock_timeout_ms, live_too=True)
        drop_schema_cascade(conn, found.schema)
        if conn.execute(_EXISTS, {"s": schema}).scalar():
            conn.execute(namespace.sql(_FORGET), {"p": project_id})
        else:
            conn.execute(namespace.sql(registry.DELETE), {"project_id": project_id})
    return found


def purge_expired(
    engine: Engine, *, namespace: Namespace = DEFAULT, lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS
) -> list[Quarantined]:
    """Purge every quarantined project past its date, each in a transaction of its own."""
    with translating(engine.url), transactions.connect(engine) as conn:
        if not registry.present(conn, namespace):
            return []
        expired = list(conn.execute(namespace.sql(_EXPIRED)).scalars())
    purged = []
    for project_id in expired:
        try:
            purged.append(purge(engine, project_id, namespace=namespace, lock_timeout_ms=lock_timeout_ms))
        except NotQuarantined:
            continue  # restored (or purged) since it was read
    return purged


def quarantine_state(conn: Connection, project_id: str, namespace: Namespace = DEFAULT) -> Quarantined | None:
    """The project's quarantine as its registry row says (in conn's transaction), or None."""
    if not registry.present(conn, namespace):
        return None
    row = conn.execute(namespace.sql(_ROW), {"p": project_id}).first()
    if row is None or row.status != RegistryStatus.DROPPED or not row.quarantine:
        return None
    return _described(project_id, row.quarantine)


def _locked_quarantine(
    conn: Connection,
    project_id: str,
    schema: str,
    namespace: Namespace,
    lock_timeout_ms: int,
    *,
    live_too: bool = False,
) -> Quarantined:
    """Under the project's lock, its quarantined copy: of a dropped project (or, ``live_too``, of one made
    again since); NotQuarantined when there is none."""
    conn.exec_driver_sql(lock_timeout_statement(lock_timeout_ms))
    lock_schema(conn, schema)
    row = conn.execute(namespace.sql(_ROW), {"p": project_id}).first() if registry.present(conn, namespace) else None
    if row is None or not row.quarantine or not (live_too or row.status == RegistryStatus.DROPPED):
        raise NotQuarantined(project_id)
    return _described(project_id, row.quarantine)


def as_seconds(text_: str) -> float:
    """'30d', '12h', '90min', '45s', '2w' as seconds (for --retain); ValueError otherwise."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|min|h|d|w)\s*", text_)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{text_!r} is not a duration like 30d, 12h, 90min")
    factor = {"s": 1, "min": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
    return float(match.group(1)) * factor
