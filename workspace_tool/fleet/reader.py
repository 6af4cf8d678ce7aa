"""Read the state of many project schemas at once: which exist, their versions, their registry rows."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, text

from workspace_tool import registry, transactions
from workspace_tool.chain import Chain
from workspace_tool.naming import SCHEMA_PREFIX, is_project_schema, project_for, quote_ident, schema_for

# One UNION over every schema times out on large fleets, and planning cost grows faster than the batch:
# measured over 10,000 schemas, batches of 1000 took 2.5 s, of 200 about 1 s (0.4 s on 4 connections).
VERSION_BATCH = 200
T = TypeVar("T")

_SCHEMAS = text(
    "SELECT n.nspname, c.oid IS NOT NULL AS has_version FROM pg_namespace n "
    "LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = 'alembic_version' AND c.relkind = 'r' "
    "WHERE n.nspname LIKE :prefix"
)


@dataclass(frozen=True)
class ProjectStatus:
    project_id: str
    schema: str
    revision: str | None  # what the schema's alembic_version says; None when missing or empty
    registry_revision: str | None
    state: str  # 'at head', 'behind', 'ahead/unknown', 'missing', 'orphan', 'failed', 'empty'
    registered: bool
    last_action: str | None = None
    last_duration_ms: float | None = None
    last_path: str | None = None
    last_error: str | None = None
    updated_at: dt.datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def project_schemas(conn: Connection) -> dict[str, bool]:
    """Every schema named like a project schema -> whether it has an alembic_version table."""
    rows = conn.execute(_SCHEMAS, {"prefix": SCHEMA_PREFIX.replace("_", r"\_") + "%"}).all()
    return {r[0]: bool(r[1]) for r in rows if is_project_schema(r[0])}


def read_versions(conn: Connection, schemas: Iterable[str], batch_size: int = VERSION_BATCH) -> dict[str, str | None]:
    """schema -> version_num (None for an empty version table), for schemas with a version table.
    Reads in batches of ``batch_size`` schemas, one UNION ALL query per batch.

    Each batch runs in a savepoint that is rolled back once its rows are read: that releases the
    AccessShareLocks on its version tables, so reading 10,000 schemas in one transaction does not run out
    of lock slots (``max_locks_per_transaction``: "out of shared memory")."""
    names = list(schemas)
    versions: dict[str, str | None] = {}
    for start in range(0, len(names), batch_size):
        batch = names[start : start + batch_size]
        union = " UNION ALL ".join(
            f"SELECT {i} AS i, (SELECT string_agg(version_num, ',') FROM {quote_ident(s)}.alembic_version)"
            for i, s in enumerate(batch)
        )
        savepoint = conn.begin_nested()
        try:
            rows = conn.execute(text(union)).all()
        finally:
            savepoint.rollback()
        for i, version in rows:
            versions[batch[i]] = version
    return versions


def read_versions_parallel(
    engine: Engine, schemas: Iterable[str], jobs: int, batch_size: int = VERSION_BATCH
) -> dict[str, str | None]:
    """read_versions spread over ``jobs`` connections (each batch its own short transaction)."""
    return read_parallel(engine, schemas, jobs, batch_size, lambda conn, chunk: read_versions(conn, chunk, batch_size))


def versions_reader(engine: Engine, jobs: int) -> Callable[[list[str]], dict[str, str | None]] | None:
    """For ``collect_status``: read versions on ``jobs`` connections of the engine, or (None) on the
    caller's own when there is no spare one."""
    return (lambda names: read_versions_parallel(engine, names, jobs)) if jobs > 0 else None


def read_parallel(
    engine: Engine,
    names: Iterable[str],
    jobs: int,
    batch_size: int,
    read: Callable[[Connection, list[str]], dict[str, T]],
) -> dict[str, T]:
    """``read(conn, chunk)`` for chunks of ``batch_size`` names, spread over ``jobs`` connections, each
    chunk in its own short transaction; the results merged."""
    names = list(names)
    chunks = [names[i : i + batch_size] for i in range(0, len(names), batch_size)]

    def read_chunk(chunk: list[str]) -> dict[str, T]:
        with transactions.connect(engine) as conn, conn.begin():
            return read(conn, chunk)

    merged: dict[str, T] = {}
    if jobs <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            merged.update(read_chunk(chunk))
        return merged
    with ThreadPoolExecutor(max_workers=min(jobs, len(chunks)), thread_name_prefix="wst-read") as pool:
        for part in pool.map(read_chunk, chunks):
            merged.update(part)
    return merged


def classify(chain: Chain, revision: str | None, exists: bool, registered: bool, status: str | None) -> str:
    if not exists:
        return "missing"
    if not registered:
        return "orphan"
    if status == "failed":
        return "failed"
    if revision is None:
        return "empty"
    if not chain.knows(revision):
        return "ahead/unknown"
    return "at head" if revision == chain.head else "behind"


def collect_status(
    conn: Connection,
    chain: Chain,
    project_ids: Sequence[str] | None = None,
    versions_of: Callable[[list[str]], dict[str, str | None]] | None = None,
) -> list[ProjectStatus]:
    """Status of the given projects, or of every registered project plus orphan schemas. Read-only: with
    no registry yet (nothing provisioned), project schemas found are orphans. Versions are read on
    ``conn``, or by ``versions_of`` (e.g. ``read_versions_parallel`` over several connections)."""
    rows: list[registry.RegistryRow] = []
    if registry.present(conn):
        found = (
            conn.execute(registry.SELECT_ALL)
            if project_ids is None
            else conn.execute(registry.SELECT_SOME, {"ids": list(project_ids)})
        )
        rows = [registry.RegistryRow.from_row(r) for r in found]
    by_project = {r.project_id: r for r in rows}
    schemas = project_schemas(conn)
    wanted = sorted({project_for(s) for s in schemas} | set(by_project)) if project_ids is None else project_ids
    names = {p: by_project[p].schema_name if p in by_project else schema_for(p) for p in wanted}
    with_versions = [s for s in names.values() if schemas.get(s)]
    versions = versions_of(with_versions) if versions_of else read_versions(conn, with_versions)
    result = []
    for project_id in sorted(names):
        row = by_project.get(project_id)
        schema = names[project_id]
        revision = versions.get(schema)
        exists = schema in schemas
        registered = row is not None
        if not exists and not registered:
            continue
        state = classify(chain, revision, exists, registered, row.status if row else None)
        result.append(
            ProjectStatus(
                project_id=project_id,
                schema=schema,
                revision=revision,
                registry_revision=row.revision if row else None,
                state=state,
                registered=registered,
                last_action=row.last_action if row else None,
                last_duration_ms=row.last_duration_ms if row else None,
                last_path=row.last_path if row else None,
                last_error=row.last_error if row else None,
                updated_at=row.updated_at if row else None,
            )
        )
    return result


FLEET_STATES = ("at head", "behind", "ahead/unknown", "failed", "empty", "missing", "orphan")


def fleet_summary(chain: Chain, statuses: Sequence[ProjectStatus]) -> dict[str, Any]:
    """Counts by state and by revision, and the schemas needing attention: missing (registered, no
    schema), orphans (a project schema with no registry row), failed (the last run failed on them)."""
    counts = dict.fromkeys(FLEET_STATES, 0)
    by_revision: dict[tuple[str | None, str], int] = {}
    for s in statuses:
        counts[s.state] = counts.get(s.state, 0) + 1
        key = (s.revision, s.state)
        by_revision[key] = by_revision.get(key, 0) + 1
    order = {rev: chain.position(rev) if chain.knows(rev) else 10**9 for rev, _ in by_revision}

    def pick(state: str, *fields: str) -> list[dict[str, Any]]:
        return [{k: getattr(s, k) for k in ("project_id", "schema", *fields)} for s in statuses if s.state == state]

    return {
        "head": chain.head,
        "total": len(statuses),
        "counts": counts,
        "revisions": [
            {"revision": rev, "state": state, "schemas": n}
            for (rev, state), n in sorted(by_revision.items(), key=lambda kv: (-order[kv[0][0]], kv[0][1]))
        ],
        "missing": pick("missing", "registry_revision"),
        "orphans": pick("orphan", "revision"),
        "failed": pick("failed", "revision", "last_action", "last_error"),
    }
