"""One schema's state: as read under its lock before migrating it (SchemaState), and as a batch read of
many schemas saw it (SchemaRecord, with the one vocabulary of states `status` shows and runs select on)."""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, TextClause, text

from workspace_tool.chain import Chain
from workspace_tool.errors import UnknownRevision, UnmanagedSchema
from workspace_tool.flavor import Flavor
from workspace_tool.namespace import DEFAULT, Namespace
from workspace_tool.registry import REGISTRY_TABLE
from workspace_tool.registry.table import RegistryStatus
from workspace_tool.sql import LOCK_SQL, lock_key, lock_schema, quote_ident
from workspace_tool.words import Word


class State(Word):
    """A project's state, as `status` shows it (tables and JSON) and as fleet runs select on (--state): one
    word each, hyphenated."""

    AT_HEAD = "at-head"
    BEHIND = "behind"
    AHEAD = "ahead"  # a revision this chain does not know
    FAILED = "failed"  # the last run failed on it
    EMPTY = "empty"  # a schema at base (no revision)
    MISSING = "missing"  # registered, but no schema
    ORPHAN = "orphan"  # a project schema with no registry row

    @classmethod
    def parse(cls, word: str) -> State:
        """A state as a user may write it: any case, spaces or underscores for the hyphen, and the spellings
        `status` wrote before issue 22 ('at head', 'ahead/unknown'); a ValueError if it is none."""
        text = word.strip().lower().replace(" ", "-").replace("_", "-")
        return cls(_OLD_STATES.get(text, text))


_OLD_STATES = {"ahead/unknown": "ahead"}  # what status wrote before issue 22


def version_table(schema: str) -> str:
    return f"{quote_ident(schema)}.alembic_version"


@dataclass(frozen=True)
class SchemaState:
    """A schema as read inside its transaction, after its lock: what the migration decides on."""

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
        return self.registry_status == RegistryStatus.READY and self.registry_revision == revision


_STATE = text(
    "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :schema) AS schema_exists, "
    "to_regclass(:version_table) IS NOT NULL AS has_version_table, r.revision AS registry_revision, "
    "r.status AS registry_status "
    f"FROM (SELECT 1) AS one LEFT JOIN {REGISTRY_TABLE} AS r ON r.project_id = :project_id"
)
# The schema's lock and then its state, in one round trip (psycopg2 sends both as one simple query; in
# READ COMMITTED the second statement takes its snapshot after the lock is granted, so it sees whatever
# the lock holder committed).  asyncpg's extended protocol takes one statement at a time.
_LOCKED_STATE_SQL = LOCK_SQL + ";\n" + str(_STATE)
# An existing schema without a version table: which relations does it hold? (pg_class has no index on
# relnamespace alone: only asked in that rare case, never on the path of a normal ensure.)
_RELATIONS = text(
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = :schema AND c.relkind NOT IN ('i', 'I') ORDER BY c.relname"  # indexes go with tables
)


@functools.lru_cache(maxsize=64)
def _locked_state(prefix: str, namespace: Namespace) -> TextClause:
    """The lock and the state read after ``prefix`` (the lock timeout's statements), in ``namespace``'s
    registry, built once per prefix and namespace: a TextClause is compiled once and then found in
    SQLAlchemy's compiled cache (building one per call cost a quarter of a millisecond per ensure)."""
    return text(prefix + namespace.sql(_LOCKED_STATE_SQL))


def read_state(conn: Connection, project_id: str, schema: str, namespace: Namespace = DEFAULT) -> SchemaState:
    """The schema's state, read in conn's transaction (under the schema's lock when the caller holds it)."""
    params = {"schema": schema, "version_table": version_table(schema), "project_id": project_id}
    return _state(conn, schema, conn.execute(namespace.sql(_STATE), params).one())


def lock_and_read_state(
    conn: Connection,
    project_id: str,
    schema: str,
    flavor: Flavor,
    lock_timeout_ms: int | None = None,
    namespace: Namespace = DEFAULT,
) -> SchemaState:
    """Take the schema's advisory lock (every lock wait of the transaction bounded by ``lock_timeout_ms``,
    with the flavor's statements), then read its state: one round trip on psycopg2 (the lock timeout's
    statements first, as the flavor groups them, on a flavor that takes no batch: a distributed database
    replays a SET LOCAL's whole query string on its other nodes; the lock and the read, both local, still
    share one)."""
    params = {"schema": schema, "version_table": version_table(schema), "project_id": project_id}
    bound = [] if lock_timeout_ms is None else flavor.lock_timeout_statements(lock_timeout_ms)
    batched = conn.dialect.driver == "psycopg2"
    if not flavor.batches or not batched:
        for group in flavor.round_trips(bound) if batched else [[s] for s in bound]:
            conn.exec_driver_sql("\n".join(s + ";" for s in group) if len(group) > 1 else group[0])
        bound = []
    if batched:
        prefix = "".join(s + ";\n" for s in bound)
        row = conn.execute(_locked_state(prefix, namespace), {**params, "key": lock_key(schema)}).one()
    else:
        lock_schema(conn, schema)
        row = conn.execute(namespace.sql(_STATE), params).one()
    return _state(conn, schema, row)


def _state(conn: Connection, schema: str, row: Row[Any]) -> SchemaState:
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


@dataclass(frozen=True)
class SchemaRecord:
    """One project as a batch read of the fleet saw it: its schema (and version) and its registry row."""

    project_id: str
    schema: str
    exists: bool
    version: str | None  # the schema's alembic_version (None: base, an empty table, or no table)
    registered: bool
    registry_revision: str | None = None
    registry_status: str | None = None
    last_action: str | None = None
    last_duration_ms: float | None = None
    last_path: str | None = None
    last_error: str | None = None
    updated_at: dt.datetime | None = None

    def state(self, chain: Chain) -> State:
        """The project's state: one vocabulary for `status`, `check` and fleet runs."""
        if not self.exists:
            return State.MISSING
        if not self.registered:
            return State.ORPHAN
        if self.registry_status == RegistryStatus.FAILED:
            return State.FAILED
        if self.version is None:
            return State.EMPTY
        if not chain.knows(self.version):
            return State.AHEAD
        return State.AT_HEAD if self.version == chain.head else State.BEHIND

    def recorded_ready_at(self, revision: str | None) -> bool:
        return self.registered and self.registry_status == RegistryStatus.READY and self.registry_revision == revision
