"""The one reader of the fleet's state: registry rows, project schemas and their versions, read in
batches (spread over several connections when the engine's pool allows). Fleet planning, `status` and
`check` all read through ``read_fleet``; each project comes back as a ``SchemaRecord`` whose ``state`` is
the one vocabulary of states (workspace_tool.schema.state.State).

The application keeps creating and dropping projects while these reads run. The registry rows and the
project schemas are read in one statement (one snapshot: a project created or dropped meanwhile, its schema
and row in one transaction, is wholly in or wholly out); a schema dropped after that, before its version or
catalog is read, makes a batch's one statement fail as a whole, and the batch is read again without the
schemas gone (``without_dropped``); ``read_fleet`` leaves out a project gone by then (schema and row)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import Connection, Engine, TextClause, text
from sqlalchemy.exc import DBAPIError

from workspace_tool import recycling, registry, transactions
from workspace_tool.dberrors import is_connection_error
from workspace_tool.namespace import DEFAULT, Namespace, OtherNamespace
from workspace_tool.registry.table import RegistryStatus
from workspace_tool.schema.state import SchemaRecord
from workspace_tool.sql import quote_ident

# One UNION over every schema times out on large fleets, and planning cost grows faster than the batch:
# measured over 10,000 schemas, batches of 1000 took 2.5 s, of 200 about 1 s (0.4 s on 4 connections).
VERSION_BATCH = 200
T = TypeVar("T")
VersionsReader = Callable[[list[str]], dict[str, str | None]]
log = logging.getLogger(__name__)

# The version table is looked up per schema by (relname, relnamespace), pg_class's index: a join lets the
# planner, with pg_namespace's statistics stale (never analyzed since the fleet was made: an estimate of 1
# row), scan every alembic_version for each schema, O(N^2): 2-4 s over 2,000 schemas instead of 0.03 s.
_SCHEMAS = text(
    "SELECT n.nspname, EXISTS (SELECT 1 FROM pg_class c WHERE c.relname = 'alembic_version' "
    "AND c.relnamespace = n.oid AND c.relkind = 'r') AS has_version FROM pg_namespace n "
    "WHERE n.nspname LIKE :prefix"
)
# What planning and status need of each registry row (not its metadata).
_ROW = "project_id, schema_name, revision, status, last_action, last_duration_ms, last_path, last_error, updated_at"
# The registry's rows (all, or those of :ids) and the project-like schemas, in one statement: one snapshot.
_FLEET = (
    f"WITH s AS ({_SCHEMAS.text}), r AS (SELECT {_ROW} FROM {registry.REGISTRY_TABLE}{{where}}) "
    "SELECT r.*, s.nspname, s.has_version FROM r FULL JOIN s ON s.nspname::text = r.schema_name"
)
# A project quarantined by `drop --retain` (status 'dropped', its schema renamed aside) is not one of the
# fleet's: no run, status or check sees it (`list` and `purge --list` do; see workspace_tool.lifecycle.drop).
_LIVE = " WHERE status <> 'dropped'"
_ROWS_AND_SCHEMAS = text(_FLEET.format(where=_LIVE))
_SOME_ROWS_AND_SCHEMAS = text(_FLEET.format(where=_LIVE + " AND project_id = ANY(:ids)"))
# Of :schemas, those still there (a read that failed for a schema dropped meanwhile is retried with them).
_STILL_THERE = text(
    "SELECT s FROM unnest(CAST(:schemas AS text[])) AS s WHERE EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = s)"
)
_STILL_VERSIONED = text(
    "SELECT s FROM unnest(CAST(:schemas AS text[])) AS s "
    "WHERE to_regclass(quote_ident(s) || '.alembic_version') IS NOT NULL"
)
# Schemas whose version vanished during a read, as they are now (their registry rows too, when there is one).
_NOW = "SELECT s, EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = s) AS present, {registered} AS registered"
_NOW_REGISTERED = text(
    _NOW.format(registered=f"EXISTS (SELECT 1 FROM {registry.REGISTRY_TABLE} WHERE schema_name = s)")
    + " FROM unnest(CAST(:schemas AS text[])) AS s"
)
_NOW_UNREGISTERED = text(_NOW.format(registered="false") + " FROM unnest(CAST(:schemas AS text[])) AS s")


def has_registry(conn: Connection, namespace: Namespace = DEFAULT) -> bool:
    """True once something was provisioned in the namespace (its registry exists). Read-only."""
    with conn.begin():
        return registry.present(conn, namespace)


def registry_rows(conn: Connection, namespace: Namespace = DEFAULT) -> list[registry.RegistryRow]:
    """Every row of the namespace's registry. Read-only (an empty list when there is no registry yet)."""
    with conn.begin():
        if not registry.present(conn, namespace):
            return []
        return [registry.RegistryRow.from_row(r) for r in conn.execute(namespace.sql(registry.SELECT_ALL))]


# The registries of other namespaces in the database (each has the registry's version table).
_OTHER_REGISTRIES = text(
    "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    f"WHERE c.relname = '{registry.VERSION_TABLE}' AND c.relkind = 'r' AND n.nspname <> :registry ORDER BY 1"
)


def registered_elsewhere(conn: Connection, namespace: Namespace, schemas: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Of ``schemas``, those registered in another namespace's registry: schema -> (that registry, the project
    id there). One read when there is no other registry (the usual case)."""
    names = list(schemas)
    if not names:
        return {}
    found: dict[str, tuple[str, str]] = {}
    for other in conn.execute(_OTHER_REGISTRIES, {"registry": namespace.registry_schema}).scalars():
        table = f"{quote_ident(other)}.workspace_config"
        query = text(f"SELECT schema_name, project_id FROM {table} WHERE schema_name = ANY(CAST(:schemas AS text[]))")
        for schema, project_id in conn.execute(query, {"schemas": names}):
            found.setdefault(schema, (other, project_id))
    return found


def refuse_other_namespace(conn: Connection, namespace: Namespace, project_id: str, schema: str) -> None:
    """Raise OtherNamespace if ``schema`` is registered in another namespace's registry."""
    other = registered_elsewhere(conn, namespace, [schema]).get(schema)
    if other is not None:
        raise OtherNamespace(project_id, schema, *other)


def read_fleet(
    conn: Connection,
    project_ids: Sequence[str] | None = None,
    versions_of: VersionsReader | None = None,
    namespace: Namespace = DEFAULT,
    *,
    with_versions: bool = True,
    trusted: Callable[[str], bool] | None = None,
    registry_checked: bool = False,
) -> list[SchemaRecord]:
    """Every registered project and every project-like schema (or just ``project_ids``, in that order,
    whether or not they exist), with versions read in batches (on ``conn``, or by ``versions_of``, e.g.
    ``read_versions_parallel`` over several connections). Read-only; works before the registry exists.

    A schema dropped after the registry and the schemas were read, before its version was: its project is
    looked at again; gone altogether (no schema, no registry row: the application dropped it), it is left
    out (a named one comes back as neither there nor registered, as if read after); its schema alone gone,
    it is missing.

    Only the ``namespace``'s projects: a schema named like one of them but registered in another
    namespace's registry is that chain's, left out; naming one raises OtherNamespace.

    ``with_versions=False``: no schema's version is read (each record's ``version`` is None), for a run
    whose operation does not need them (exec, drop).

    ``trusted``: a registry row 'ready' at a revision it returns True for is taken at its word: its schema's
    version is not read, the record's ``version`` is the row's revision. For a run whose every schema's
    transaction checks that version itself (the fast lane's guard, which falls back to the careful path when
    it differs): the up-front read of those schemas' versions is then not needed. Any other row is read.

    ``registry_checked``: the caller has just made sure the registry exists at a revision this
    workspace-tool knows (a run, after ``registry.bootstrap``): it is not asked again."""
    started = time.perf_counter()
    has_registry = registry_checked or registry.present(conn, namespace)
    rows, schemas = _rows_and_schemas(conn, project_ids, namespace, has_registry=has_registry)
    registered = {row.schema_name for row in rows.values()}
    named = schemas if project_ids is None else {namespace.schema_for(p) for p in project_ids}
    foreign = registered_elsewhere(conn, namespace, [s for s in schemas if s in named and s not in registered])
    if project_ids is None:
        for schema in foreign:
            del schemas[schema]
        wanted = sorted(set(rows) | {namespace.project_id_for(s) for s in schemas})
    else:
        wanted = list(dict.fromkeys(project_ids))
    names = {p: (rows[p].schema_name if p in rows else namespace.schema_for(p)) for p in wanted}
    for p, schema in names.items():
        if p not in rows and schema in foreign:
            raise OtherNamespace(p, schema, *foreign[schema])
    versioned = [s for s in names.values() if schemas.get(s)] if with_versions else []
    taken = _taken_at_their_word(rows.values(), versioned, trusted) if trusted is not None else {}
    versioned = [s for s in versioned if s not in taken]
    versions = versions_of(versioned) if versions_of and versioned else read_versions(conn, versioned)
    vanished = [s for s in versioned if s not in versions]
    gone = _look_again(conn, vanished, schemas, versions, namespace, has_registry=has_registry) if vanished else set()
    versions.update(taken)
    log.info(
        "fleet read: %d project(s), %d registered, %d project schema(s), %d version(s) read%s, in %.0f ms%s",
        len(wanted),
        len(rows),
        len(schemas),
        len(versioned),
        f" ({len(taken)} taken from the registry)" if taken else "",
        (time.perf_counter() - started) * 1000,
        f"; {len(gone)} dropped meanwhile" if gone else "",
    )
    records = []
    for p in wanted:
        schema = names[p]
        if schema in gone:
            if project_ids is None:
                continue  # dropped while the fleet was read: no longer one of its projects
            row = None
        else:
            row = rows.get(p)
        if row is None:
            records.append(SchemaRecord(p, schema, schema in schemas, versions.get(schema), False))
        else:
            records.append(
                SchemaRecord(
                    p,
                    schema,
                    schema in schemas,
                    versions.get(schema),
                    True,
                    row.revision,
                    row.status,
                    row.last_action,
                    row.last_duration_ms,
                    row.last_path,
                    row.last_error,
                    row.updated_at,
                )
            )
    return records


def _taken_at_their_word(
    rows: Iterable[Any], versioned: list[str], trusted: Callable[[str], bool]
) -> dict[str, str | None]:
    """Of ``versioned``, the schemas whose registry row is ready at a revision ``trusted`` trusts -> it."""
    wanted = set(versioned)
    ready = RegistryStatus.READY.value  # a plain str compares faster than the enum member
    taken: dict[str, str | None] = {}
    for row in rows:
        revision = row.revision
        if row.status == ready and revision is not None and row.schema_name in wanted and trusted(revision):
            taken[row.schema_name] = revision
    return taken


def _rows_and_schemas(
    conn: Connection, project_ids: Sequence[str] | None, namespace: Namespace, *, has_registry: bool
) -> tuple[dict[str, Any], dict[str, bool]]:
    """The registry's rows by project id (all, or those of ``project_ids``) and the project schemas (with
    whether each has a version table), read in one statement when there is a registry."""
    if not has_registry:
        return {}, project_schemas(conn, namespace)
    like = namespace.schema_like
    if project_ids is None:
        found = conn.execute(namespace.sql(_ROWS_AND_SCHEMAS), {"prefix": like})
    else:
        found = conn.execute(namespace.sql(_SOME_ROWS_AND_SCHEMAS), {"prefix": like, "ids": list(project_ids)})
    rows: dict[str, Any] = {}
    schemas: dict[str, bool] = {}
    is_project_schema = namespace.is_project_schema
    for *row, nspname, has_version in found.all():  # unpacked: a Row's attributes cost more per read
        if row[0] is not None:
            rows[row[0]] = _RegistryRow._make(row)
        if nspname is not None and is_project_schema(nspname):
            schemas[nspname] = bool(has_version)
    return rows, schemas


class _RegistryRow(NamedTuple):
    """A registry row as ``_ROW`` reads it."""

    project_id: str
    schema_name: str
    revision: str | None
    status: str
    last_action: str | None
    last_duration_ms: float | None
    last_path: str | None
    last_error: str | None
    updated_at: Any


def _look_again(
    conn: Connection,
    vanished: list[str],
    schemas: dict[str, bool],
    versions: dict[str, str | None],
    namespace: Namespace,
    *,
    has_registry: bool,
) -> set[str]:
    """Schemas whose version table was gone when their version was read, as they are now: ``schemas``
    and ``versions`` updated; returns those gone with their registry rows (their projects were dropped)."""
    now = conn.execute(
        namespace.sql(_NOW_REGISTERED) if has_registry else _NOW_UNREGISTERED, {"schemas": vanished}
    ).all()
    gone = set()
    for schema, present, registered in now:
        if not present:
            del schemas[schema]
            if not registered:
                gone.add(schema)
        else:  # there again (made anew), or its version table alone dropped: read once more
            again = read_versions(conn, [schema])
            schemas[schema] = schema in again
            versions.update(again)
    return gone


def project_schemas(conn: Connection, namespace: Namespace = DEFAULT) -> dict[str, bool]:
    """Every schema named like a project schema of ``namespace`` -> whether it has an alembic_version table."""
    rows = conn.execute(_SCHEMAS, {"prefix": namespace.schema_like}).all()
    return {r[0]: bool(r[1]) for r in rows if namespace.is_project_schema(r[0])}


def read_versions(conn: Connection, schemas: Iterable[str], batch_size: int = VERSION_BATCH) -> dict[str, str | None]:
    """schema -> version_num (None for an empty version table), for schemas with a version table; a schema
    whose version table is gone (dropped meanwhile) is left out. Reads in batches of ``batch_size``
    schemas, one UNION ALL query per batch.

    Each batch runs in a savepoint that is rolled back once its rows are read: that releases the
    AccessShareLocks on its version tables, so reading 10,000 schemas in one transaction does not run out
    of lock slots (``max_locks_per_transaction``: "out of shared memory"). The schemas read are counted
    on ``conn`` (``recycling.count``: its backend now caches their version tables)."""
    names = list(schemas)
    versions: dict[str, str | None] = {}
    for start in range(0, len(names), batch_size):
        batch = names[start : start + batch_size]
        versions.update(without_dropped(conn, batch, _read_batch, _STILL_VERSIONED))
        recycling.count(conn, len(batch))
    return versions


def _read_batch(conn: Connection, batch: list[str]) -> dict[str, str | None]:
    union = " UNION ALL ".join(
        f"SELECT {i} AS i, (SELECT string_agg(version_num, ',') FROM {quote_ident(s)}.alembic_version)"
        for i, s in enumerate(batch)
    )
    return {batch[i]: version for i, version in conn.execute(text(union))}


def without_dropped(
    conn: Connection,
    names: list[str],
    read: Callable[[Connection, list[str]], dict[str, T]],
    still_there: TextClause = _STILL_THERE,
) -> dict[str, T]:
    """``read(conn, names)``, one statement over many schemas, in a savepoint of conn's transaction that is
    rolled back once read (the locks it took are released). Such a statement fails as a whole when one
    of its schemas is dropped while it runs (a relation or schema that does not exist, a catalog entry a
    deparse looks up gone): then it runs again without the schemas gone (``still_there`` says which are
    left), until it succeeds; the error is raised as it is when none was gone (or the connection was
    lost). What is gone is simply not in the result."""
    while names:
        savepoint = conn.begin_nested()
        try:
            found = read(conn, names)
        except DBAPIError as exc:
            if is_connection_error(exc) or conn.invalidated:
                raise
            savepoint.rollback()
            left = list(conn.execute(still_there, {"schemas": names}).scalars())
            if len(left) == len(names):
                raise
            log.info("%d of %d schema(s) dropped while read: again without them", len(names) - len(left), len(names))
            names = left
            continue
        savepoint.rollback()
        return found
    return {}


def read_versions_parallel(
    engine: Engine,
    schemas: Iterable[str],
    jobs: int,
    recycle_after: int = recycling.DEFAULT_RECYCLE_AFTER,
    batch_size: int = VERSION_BATCH,
) -> dict[str, str | None]:
    """read_versions spread over ``jobs`` connections (each batch its own short transaction), each
    replaced by a new one after ``recycle_after`` schemas (see read_parallel)."""

    def read(conn: Connection, chunk: list[str]) -> dict[str, str | None]:
        return read_versions(conn, chunk, batch_size)

    return read_parallel(engine, schemas, jobs, batch_size, read, recycle_after)


def versions_reader(
    engine: Engine, jobs: int, recycle_after: int = recycling.DEFAULT_RECYCLE_AFTER
) -> VersionsReader | None:
    """For ``collect_status``: read versions on ``jobs`` connections of the engine (each replaced after
    ``recycle_after`` schemas), or (None) on the caller's own when there is no spare one."""
    return (lambda names: read_versions_parallel(engine, names, jobs, recycle_after)) if jobs > 0 else None


def read_parallel(
    engine: Engine,
    names: Iterable[str],
    jobs: int,
    batch_size: int,
    read: Callable[[Connection, list[str]], dict[str, T]],
    recycle_after: int = recycling.DEFAULT_RECYCLE_AFTER,
) -> dict[str, T]:
    """``read(conn, chunk)`` for chunks of ``batch_size`` names, spread over ``jobs`` connections, each
    chunk in its own short transaction; the results merged. ``read`` counts the schemas it touches
    (``recycling.count``); a connection whose backend has touched ``recycle_after`` schemas (0: never) is
    closed after its chunk and the next chunk connects anew, so that no backend caches the catalog entries
    of the whole fleet (workspace_tool.recycling)."""
    names = list(names)
    chunks = [names[i : i + batch_size] for i in range(0, len(names), batch_size)]

    def read_chunk(chunk: list[str]) -> dict[str, T]:
        with transactions.connect(engine) as conn:
            with conn.begin():
                found = read(conn, chunk)
            recycling.due(conn, recycle_after)  # when it is, closing it ends its backend
            return found

    started = time.perf_counter()
    merged: dict[str, T] = {}
    connections = 1 if jobs <= 1 or len(chunks) <= 1 else min(jobs, len(chunks))
    if connections == 1:
        for chunk in chunks:
            merged.update(read_chunk(chunk))
    else:
        with ThreadPoolExecutor(max_workers=connections, thread_name_prefix="wst-read") as pool:
            for part in pool.map(read_chunk, chunks):
                merged.update(part)
    log.info(
        "read %d schema(s) in %d batch(es) of up to %d on %d connection(s) in %.0f ms",
        len(names),
        len(chunks),
        batch_size,
        connections,
        (time.perf_counter() - started) * 1000,
    )
    return merged
