"""`clone SRC DST [--no-data]`: a copy of a project inside one database, server-side (INSERT ... SELECT per
table: no row goes through the client), in one transaction under both projects' locks: DST built at SRC's
revision, its rows copied, its sequences set, registered (action 'clone'). Independent of SRC afterwards."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, text

from workspace_tool import registry, transactions
from workspace_tool.chain import Chain
from workspace_tool.dberrors import translating
from workspace_tool.errors import UnknownRevision, WorkspaceNotFound
from workspace_tool.lifecycle.build import create_at
from workspace_tool.lifecycle.errors import ProjectExists
from workspace_tool.lifecycle.tables import Table, indexes_built_after, project_tables, set_sequences
from workspace_tool.registry import known as cache
from workspace_tool.registry.table import RegistryAction
from workspace_tool.schema.state import version_table
from workspace_tool.sql import DEFAULT_LOCK_TIMEOUT_MS, lock_schema


@dataclass(frozen=True)
class CloneResult:
    source: str
    project_id: str
    schema: str
    revision: str
    tables: int
    rows: int
    ms: float

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def clone_project(
    engine: Engine,
    chain: Chain,
    source: str,
    target: str,
    *,
    data: bool = True,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
) -> CloneResult:
    """Copy ``source`` to a new project ``target``; see the module's docstring. ``data=False``: the schema
    at the source's revision, without its rows."""
    started = time.perf_counter()
    source_schema, schema = chain.namespace.schema_for(source), chain.namespace.schema_for(target)
    if source == target:
        raise ProjectExists(target, schema)
    with translating(engine.url, schema), transactions.connect(engine) as conn:
        flavor = registry.bootstrap(conn, chain.namespace)
        with conn.begin():
            for statement in flavor.lock_timeout_statements(lock_timeout_ms):
                conn.exec_driver_sql(statement)
            lock_schema(conn, source_schema)  # no migration of the source while it is read
            found = conn.execute(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": version_table(source_schema)})
            if not found.scalar():
                raise WorkspaceNotFound(source, source_schema)
            revision = conn.execute(text(f"SELECT version_num FROM {version_table(source_schema)}")).scalar()
            if revision is None or not chain.knows(revision):
                raise UnknownRevision(source_schema, str(revision or "base"))
            create_at(conn, chain, flavor, target, schema, revision, RegistryAction.CLONE, lock_timeout_ms)
            rows = 0
            tables = project_tables(conn, schema)
            if data:
                with indexes_built_after(conn, schema):
                    rows = _copy(conn, tables, source_schema, schema)
                set_sequences(conn, schema)
    cache.invalidate(cache.database_key(engine.url, chain.config_path), [target])
    return CloneResult(source, target, schema, str(revision), len(tables), rows, (time.perf_counter() - started) * 1000)


def _copy(conn: Connection, tables: list[Table], source_schema: str, schema: str) -> int:
    """Every table's rows from ``source_schema`` into ``schema``, server-side; how many."""
    rows = 0
    for table in tables:
        columns = table.column_list()
        rows += conn.execute(
            text(
                f"INSERT INTO {table.qualified(schema)} ({columns}) "
                f"SELECT {columns} FROM {table.qualified(source_schema)}"
            )
        ).rowcount
    return rows
