"""project_registry.workspace_config: the table of projects, its rows, and the SQL that reads and writes them.

A row is written in the same transaction as the schema change it records (see schema/plan.py).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, text

from workspace_tool.sql import sql_literal
from workspace_tool.words import Word


class RegistryAction(Word):
    """The registry's last_action: what the last run did (status 'ready') or tried to do ('failed')."""

    CREATE = "create"  # the chain run into a new (or empty) schema
    UPGRADE = "upgrade"
    DOWNGRADE = "downgrade"
    REGISTER = "register"  # a row written for a schema already at its revision
    ADOPT = "adopt"  # the chain run into a hand-made schema, on request
    IMPORT = "import"  # built at an export's revision and its data copied in (workspace_tool.lifecycle)
    CLONE = "clone"  # built at another project's revision and its rows copied, server-side
    STAMP = "stamp"  # its version row set by hand (`workspace-tool stamp`): no revision ran
    QUARANTINE = "quarantine"  # dropped with --retain: its schema kept aside until restored or purged
    RESTORE = "restore"  # brought back from quarantine


class RegistryStatus(Word):
    READY = "ready"
    FAILED = "failed"
    DROPPED = "dropped"  # quarantined by `drop --retain`: its schema renamed aside (registry r0007)


REGISTRY_SCHEMA = "project_registry"
REGISTRY_TABLE = f"{REGISTRY_SCHEMA}.workspace_config"


@dataclass(frozen=True)
class RegistryRow:
    project_id: str
    schema_name: str
    revision: str | None
    status: str
    created_at: dt.datetime
    updated_at: dt.datetime
    last_action: str | None
    last_duration_ms: float | None
    last_path: str | None
    last_error: str | None
    metadata: dict[str, Any]

    @classmethod
    def from_row(cls, row: Row[Any]) -> RegistryRow:
        return cls(**row._asdict())


_COLUMNS = (
    "project_id, schema_name, revision, status, created_at, updated_at, last_action, "
    "last_duration_ms, last_path, last_error, metadata"
)
SELECT_ALL = text(f"SELECT {_COLUMNS} FROM {REGISTRY_TABLE} ORDER BY project_id")

# After a rollback, in a transaction of its own; only a row that already exists is marked.
MARK_FAILED = text(
    f"UPDATE {REGISTRY_TABLE} SET status = 'failed', last_action = :action, last_error = :error, "
    "updated_at = now() WHERE project_id = :project_id"
)
DELETE = text(f"DELETE FROM {REGISTRY_TABLE} WHERE project_id = :project_id")


EXPECT_VERSION_FUNCTION = f"{REGISTRY_SCHEMA}.expect_version"  # r0005


def expect_version_sql(found: str, schema: str, version: str | None) -> str:
    """The guard of a transaction sent without reading ``schema`` first (r0005's function): raises SQLSTATE
    dberrors.STATE_CHANGED, rolling the transaction back, unless ``found`` (a SQL boolean: the version
    moved from ``version``, the one read) holds."""
    return f"{EXPECT_VERSION_FUNCTION}({found}, {sql_literal(schema)}, {sql_literal(version)})"


# The same upsert as literal SQL, to ride at the end of a migration batch (one round trip less). The
# duration is the server's: from the transaction's start (lock wait included) to this statement, plus
# what came before it in a migration sent in parts ({earlier} ms: a revision that can't run in a transaction).
SERVER_DURATION_MS = "round(({earlier}extract(epoch FROM clock_timestamp() - now()) * 1000)::numeric, 3)"


def upsert_sql(
    project_id: str,
    schema: str,
    revision: str | None,
    action: RegistryAction,
    path: str,
    *,
    per_row_of: str | None = None,
    earlier_ms: float = 0.0,
) -> str:
    """UPSERT as one statement with literals, returning the duration it recorded. ``per_row_of``: a CTE
    name; the row is written once per row of it (so not at all when it is empty). ``earlier_ms``: the
    migration's time before this transaction began (its earlier parts), added to the recorded duration."""
    literals = [sql_literal(v) for v in (project_id, schema, revision, RegistryStatus.READY, action)]
    duration = SERVER_DURATION_MS.format(earlier=f"{float(earlier_ms):.3f} + " if earlier_ms else "")
    values = ", ".join([*literals, duration, sql_literal(path), "NULL"])
    source = f"VALUES ({values})" if per_row_of is None else f"SELECT {values} FROM {per_row_of}"
    return (
        f"INSERT INTO {REGISTRY_TABLE} AS w (project_id, schema_name, revision, status, last_action, "
        f"last_duration_ms, last_path, last_error) {source} "
        "ON CONFLICT (project_id) DO UPDATE SET revision = EXCLUDED.revision, status = 'ready', "
        "last_action = EXCLUDED.last_action, last_duration_ms = EXCLUDED.last_duration_ms, "
        "last_path = EXCLUDED.last_path, last_error = NULL, updated_at = now() RETURNING last_duration_ms"
    )


def migrating_schema() -> str:
    """In a registry revision: the schema of the registry being migrated (its namespace's: Alembic's version
    table is there, see ``RegistryChain.upgrade``)."""
    from alembic import op

    return str(op.get_context().version_table_schema or REGISTRY_SCHEMA)


def in_migrating_registry(statement: str) -> str:
    """In a registry revision: ``statement``, written against the default registry, for the one migrated."""
    from workspace_tool.namespace import Namespace

    return Namespace(migrating_schema()).sql(statement)


def update_sql(
    project_id: str,
    revision: str | None,
    action: RegistryAction,
    path: str,
    *,
    per_row_of: str,
    earlier_ms: float = 0.0,
) -> str:
    """The existing row of a project rewritten as ``upsert_sql`` writes it, once per row of the CTE
    ``per_row_of``, returning the duration it recorded: no row when the project has none (the guard of a
    fleet batch then fails, changing nothing, and the careful path writes it). Cheaper than the upsert (no
    insert attempted first): measured about 6% of a fleet schema's transaction on the server."""
    duration = SERVER_DURATION_MS.format(earlier=f"{float(earlier_ms):.3f} + " if earlier_ms else "")
    return (
        f"UPDATE {REGISTRY_TABLE} AS w SET revision = {sql_literal(revision)}, status = 'ready', "
        f"last_action = {sql_literal(action)}, last_duration_ms = {duration}, last_path = {sql_literal(path)}, "
        f"last_error = NULL, updated_at = now() FROM {per_row_of} WHERE w.project_id = {sql_literal(project_id)} "
        "RETURNING w.last_duration_ms"
    )
