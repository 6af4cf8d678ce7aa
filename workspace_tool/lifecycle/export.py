"""`export ID -o FILE`: one project's rows, table by table as binary COPY, in one consistent snapshot,
streamed to one file with a manifest (fileformat.py). No DDL travels: the chain rebuilds the schema at the
export's revision, so the file restores into any database running the same chain."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from sqlalchemy import Connection, Engine, text

from workspace_tool import transactions
from workspace_tool.chain import Chain
from workspace_tool.dberrors import translating
from workspace_tool.errors import UnknownRevision, WorkspaceNotFound
from workspace_tool.lifecycle.build import lineage
from workspace_tool.lifecycle.errors import LifecycleRefused
from workspace_tool.lifecycle.fileformat import Writer
from workspace_tool.lifecycle.tables import project_tables
from workspace_tool.schema.state import version_table

FORMAT = 1
COPY_FORMAT = "binary"


@dataclass(frozen=True)
class ExportResult:
    project_id: str
    path: str
    revision: str
    tables: int
    rows: int
    bytes: int
    ms: float

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def chain_identity(chain: Chain, revision: str) -> str:
    """What an import checks its chain against: a digest of the revisions from base to ``revision``."""
    return hashlib.sha256("\n".join(lineage(chain, revision)).encode()).hexdigest()


def tool_version() -> str:
    try:
        return metadata.version("workspace-tool")
    except metadata.PackageNotFoundError:
        return "unknown"


def export_project(
    engine: Engine, chain: Chain, project_id: str, path: str | os.PathLike[str], *, schema: str | None = None
) -> ExportResult:
    """Write ``project_id``'s rows to ``path`` (written beside it first, then renamed: a failed export
    leaves no file; a path that is not a regular file, such as a FIFO or a device, is refused). Read in one
    REPEATABLE READ snapshot, so the rows and the revision agree; no lock is taken (a migration waits for
    nothing). ``schema``: read from this schema instead of the project's (a move exports the project's
    quarantined schema)."""
    import time

    started = time.perf_counter()
    schema = schema or chain.namespace.schema_for(project_id)
    target = os.fspath(path)
    final = os.path.realpath(target)  # through a symlink: the file it points to is replaced, not the link
    if os.path.exists(final) and not os.path.isfile(final):  # a FIFO, a device: the rename would replace it
        raise LifecycleRefused(f"cannot write {target}: it is not a regular file; nothing was exported")
    partial = final + ".partial"
    with translating(engine.url, schema), transactions.connect(engine) as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            revision = _revision(conn, chain, project_id, schema)
            try:
                try:
                    out = open(partial, "wb")  # noqa: SIM115 (closed below, also on the way out of an error)
                except OSError as exc:
                    raise LifecycleRefused(
                        f"cannot write {target}: {exc.strerror or exc}; nothing was exported"
                    ) from None
                with out:
                    manifest = _write(conn, out, chain, project_id, schema, revision)
                os.replace(partial, final)
            finally:
                if os.path.exists(partial):
                    os.unlink(partial)
    tables = manifest["tables"]
    return ExportResult(
        project_id,
        target,
        revision,
        len(tables),
        sum(t["rows"] for t in tables),
        os.path.getsize(target),
        (time.perf_counter() - started) * 1000,
    )


def _revision(conn: Connection, chain: Chain, project_id: str, schema: str) -> str:
    exists = conn.execute(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": version_table(schema)}).scalar()
    if not exists:
        raise WorkspaceNotFound(project_id, schema)
    version = conn.execute(text(f"SELECT version_num FROM {version_table(schema)}")).scalar()
    if version is None or not chain.knows(version):
        raise UnknownRevision(schema, str(version or "base"))
    return str(version)


def _write(conn: Connection, out: Any, chain: Chain, project_id: str, schema: str, revision: str) -> dict[str, Any]:
    writer = Writer(out)
    entries: list[dict[str, Any]] = []
    tables = project_tables(conn, schema)
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        for table in tables:
            sink = writer.table()
            sql = f"COPY {table.qualified(schema)} ({table.column_list()}) TO STDOUT WITH (FORMAT {COPY_FORMAT})"
            cursor.copy_expert(sql, sink)
            entry = sink.close(table.name, int(cursor.rowcount))
            entries.append({**entry, "columns": list(table.columns)})
    finally:
        cursor.close()
    manifest = {
        "format": FORMAT,
        "project_id": project_id,
        "revision": revision,
        "chain": {"identity": chain_identity(chain, revision), "base": chain.revisions[0]},
        "copy_format": COPY_FORMAT,
        "tool_version": tool_version(),
        "server_version": conn.execute(text("SHOW server_version")).scalar(),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "tables": entries,
    }
    writer.finish(manifest)
    return manifest
