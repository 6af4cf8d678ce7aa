"""`import FILE [--as ID] [--upgrade]`: the manifest checked first (a file that is not an export, a chain
that doesn't hold its revision, an existing id: refused before any SQL), then ONE transaction under the
project's lock: the schema built at the file's revision, every table's rows COPYed in (each checked against
its checksum), sequences set, the project registered (and with ``upgrade``, the chain run on to head).
Anything wrong on the way (a damaged table, a full disk) rolls it all back: nothing is left behind."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine

from workspace_tool import registry, transactions
from workspace_tool.chain import Chain
from workspace_tool.dberrors import translating
from workspace_tool.lifecycle.build import create_at, upgrade_in_place
from workspace_tool.lifecycle.errors import ChainMismatch, ExportDamaged, NotAnExport
from workspace_tool.lifecycle.export import chain_identity
from workspace_tool.lifecycle.fileformat import Reader, TableSource, read_manifest
from workspace_tool.lifecycle.tables import Table, indexes_built_after, project_tables, row_counts, set_sequences
from workspace_tool.registry import known as cache
from workspace_tool.registry.table import RegistryAction
from workspace_tool.sql import DEFAULT_LOCK_TIMEOUT_MS, quote_ident


@dataclass(frozen=True)
class ImportResult:
    project_id: str
    schema: str
    revision: str  # the file's
    to_revision: str  # the project's now (head with upgrade)
    tables: int
    rows: int
    ms: float

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def check_manifest(chain: Chain, path: str) -> dict[str, Any]:
    """The file's manifest, checked against ``chain``: its revision known, with the same revisions before it."""
    manifest = read_manifest(path)
    try:
        revision = str(manifest["revision"])
        identity = manifest["chain"]["identity"]
        tables = manifest["tables"]
        chain.namespace.schema_for(manifest["project_id"])
        for entry in tables:
            _ = (entry["table"], entry["rows"], entry["sha256"], entry["columns"])
    except (KeyError, TypeError):
        raise NotAnExport(path, "its manifest lacks what an export's has") from None
    if manifest.get("copy_format") != "binary":
        raise NotAnExport(path, f"its data is in {manifest.get('copy_format')!r} COPY format, not binary")
    if not chain.knows(revision):
        raise ChainMismatch(f"{path} is at revision {revision}, which this chain does not have")
    if chain_identity(chain, revision) != identity:
        raise ChainMismatch(f"{path} was made by another chain (its revisions up to {revision} differ)")
    return manifest


def import_project(
    engine: Engine,
    chain: Chain,
    path: str | os.PathLike[str],
    *,
    as_id: str | None = None,
    upgrade: bool = False,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
) -> ImportResult:
    """Import the export at ``path`` as its project (or ``as_id``); see the module's docstring."""
    started = time.perf_counter()
    source = os.fspath(path)
    manifest = check_manifest(chain, source)
    project_id = as_id or str(manifest["project_id"])
    schema = chain.namespace.schema_for(project_id)
    revision = str(manifest["revision"])
    entries: list[dict[str, Any]] = manifest["tables"]
    with translating(engine.url, schema), transactions.connect(engine) as conn, open(source, "rb") as file:
        flavor = registry.bootstrap(conn, chain.namespace)
        reader = Reader(source, file)
        with conn.begin():
            create_at(conn, chain, flavor, project_id, schema, revision, RegistryAction.IMPORT, lock_timeout_ms)
            tables = {t.name: t for t in project_tables(conn, schema)}
            _check_tables(source, entries, tables)
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                with indexes_built_after(conn, schema):
                    for table_source in reader.tables(entries):
                        _copy_in(conn, cursor, schema, tables[table_source.entry["table"]], table_source, source)
            finally:
                cursor.close()
            counts = row_counts(conn, schema, [tables[e["table"]] for e in entries])
            for entry in entries:
                if counts[entry["table"]] != entry["rows"]:
                    raise ExportDamaged(source, f"table {entry['table']} holds {entry['rows']} rows, not as copied")
            set_sequences(conn, schema)
            to_revision = revision
            if upgrade and revision != chain.head:
                to_revision = upgrade_in_place(conn, chain, flavor, project_id, schema, revision, lock_timeout_ms)
    cache.invalidate(cache.database_key(engine.url, chain.config_path), [project_id])
    return ImportResult(
        project_id,
        schema,
        revision,
        to_revision,
        len(entries),
        sum(int(e["rows"]) for e in entries),
        (time.perf_counter() - started) * 1000,
    )


def _check_tables(path: str, entries: list[dict[str, Any]], tables: dict[str, Table]) -> None:
    """The file's tables and columns are those the chain built at its revision."""
    named = {e["table"] for e in entries}
    if named != set(tables):
        differ = sorted(named ^ set(tables))
        raise ChainMismatch(f"{path}'s tables are not those its revision builds here ({', '.join(differ)})")
    for entry in entries:
        if tuple(entry["columns"]) != tables[entry["table"]].columns:
            raise ChainMismatch(f"{path}'s table {entry['table']} has other columns than its revision builds here")


def _copy_in(conn: Connection, cursor: Any, schema: str, table: Table, data: TableSource, path: str) -> None:
    columns = ", ".join(quote_ident(c) for c in data.entry["columns"])
    sql = f"COPY {table.qualified(schema)} ({columns}) FROM STDIN WITH (FORMAT binary)"
    try:
        cursor.copy_expert(sql, data)
    except Exception as exc:
        # the COPY refused the data: a damaged file says so (its checksum), else the database's error
        try:
            data.finish()
        except ExportDamaged:
            raise ExportDamaged(path, f"table {table.name}'s checksum does not match") from exc
        raise
