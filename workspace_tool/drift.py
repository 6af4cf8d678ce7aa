"""Drift: does every project schema match what the chain builds?

The reference (``reference.for_check``) is the catalog of a schema the chain built from base to head:
stored in the registry by the last migrating run, or built in a scratch schema in a transaction that is
rolled back. Schemas are compared with it at the speed of reading the catalog: one query per batch of
schemas, spread over ``jobs`` connections, reduces each schema's catalog to a fingerprint
(``catalog.fingerprints``), and only the schemas whose fingerprint differs from the reference's are read
in detail (``catalog.snapshot``: tables, columns, types, nullability, defaults, indexes with method and
options, constraints, comments, alembic_version) and compared (``catalog.diff``): once per distinct
fingerprint, as schemas with equal fingerprints have equal catalogs. A schema's alembic_version comes from
the status read: it must hold exactly the head, as the reference's does. The warm pool's spares ready at
head (workspace_tool.spares) are compared too: each will become a project's schema as it is.

The application keeps working meanwhile. A project dropped while check runs is no problem: left out when
dropped before its version was read (as `status` does), else reported ``gone``, with no problem; a spare
claimed (renamed into a new project's schema) after it was listed is no spare any more, and left out. A
schema read at head and migrated by another run before its catalog was compared (another release's
`upgrade` during a rolling deploy) is reported at its new revision, as a check a moment later would
(``MOVED``), never as a catalog difference: the versions of the schemas whose fingerprints differ are
read again before they are read in detail, and a detailed read that finds another version reads the
next schema of its group instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from workspace_tool import recycling, registry, spares, transactions
from workspace_tool import reference as references
from workspace_tool.chain import Chain
from workspace_tool.dberrors import is_connection_error, translating
from workspace_tool.jobs import check_jobs, default_jobs, spare_jobs
from workspace_tool.registry.inventory import read_parallel, read_versions, versions_reader, without_dropped
from workspace_tool.schema.catalog import PIN_SEARCH_PATH, diff, fingerprints, snapshot
from workspace_tool.schema.state import State
from workspace_tool.spares.store import SpareState
from workspace_tool.status import ProjectStatus, collect_status

# Schemas per catalog query (at most; fewer so that every connection gets one). Each query reads pg_class
# whole (it has no index by schema), the rest through indexes, and it holds no lock but on catalogs, so
# batches can be large: over 10,000 schemas on 4 connections, `check` took 7.4 s with batches of 2,500,
# 7.9 s with 1,000 and 8.4 s with 500 (medians of 3, loaded machine, an earlier version of the query).
FINGERPRINT_BATCH = 2500
GONE = "gone"  # the state of a project dropped while check ran: not a problem
MOVED = "migrated by another run while check ran"  # said of a schema read at head, then migrated
_NAMESPACE = text("SELECT oid FROM pg_namespace WHERE nspname = :schema")


@dataclass
class SchemaCheck:
    project_id: str
    schema: str
    revision: str | None
    state: str  # as in `status`: 'at head', 'behind', 'missing', 'orphan', ...; 'spare'; 'gone' (dropped)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass
class CheckReport:
    head: str
    schemas: list[SchemaCheck]
    registry: bool = True  # False: this database has no registry yet (nothing was provisioned)
    spares: list[SchemaCheck] = field(default_factory=list)  # the warm pool's spares ready at head

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.schemas + self.spares)

    @property
    def failing(self) -> list[SchemaCheck]:
        return [s for s in self.schemas + self.spares if not s.ok]

    @property
    def gone(self) -> list[SchemaCheck]:
        """Projects dropped (by the application) while check ran, after their version was read."""
        return [s for s in self.schemas if s.state == GONE]

    def as_dict(self) -> dict[str, Any]:
        return {
            "head": self.head,
            "ok": self.ok,
            "checked": len(self.schemas) - len(self.gone),
            "failing": len(self.failing),
            "gone": len(self.gone),
            "schemas": [s.as_dict() for s in self.schemas],
            "spares": [s.as_dict() for s in self.spares],
        }


def check(
    engine: Engine,
    chain: Chain,
    project_ids: Sequence[str] | None = None,
    *,
    jobs: int | None = None,
    recycle_after: int | None = None,
) -> CheckReport:
    """Every project schema (or the named ones): at head, registered, ready, and equal to the reference;
    with no names, the warm pool's spares ready at head too. Read-only: writes nothing, not even the
    registry; a read-only role can run it once a migrating run stored the reference (see
    workspace_tool.reference). The reading connections are replaced every ``recycle_after`` schemas
    (default: workspace_recycle_after in alembic.ini; see workspace_tool.recycling)."""
    if project_ids is not None:
        for project_id in project_ids:
            chain.namespace.schema_for(project_id)
    recycle = recycling.resolve(chain, recycle_after)
    # like a fleet run's (an error if the pool can't serve --jobs), but by default no more than the pool spares
    jobs = spare_jobs(engine, default_jobs()) if jobs is None else check_jobs(engine, jobs)
    with translating(engine.url), transactions.connect(engine) as conn:
        with conn.begin():
            has_registry = registry.present(conn, chain.namespace)
            statuses = collect_status(conn, chain, project_ids, versions_reader(engine, jobs, recycle))
            spares = _spares(conn, chain) if project_ids is None else []
        schemas = [_from_status(chain, s) for s in statuses]
        at_head = [c for c in schemas if _comparable(chain, c)]
        if at_head or spares:
            _compare(engine, conn, chain, references.for_check(conn, chain), at_head + spares, jobs, recycle)
            spares = [s for s in spares if s.state != GONE]  # claimed meanwhile: a project's schema now
        recycling.due(conn, recycle)  # it read every schema itself when the pool had no other connection
    known = {s.project_id for s in statuses}
    schemas += [
        SchemaCheck(p, chain.namespace.schema_for(p), None, "missing", ["no schema and no registry row"])
        for p in project_ids or []
        if p not in known
    ]
    return CheckReport(chain.head, schemas, has_registry, spares)


def _spares(conn: Connection, chain: Chain) -> list[SchemaCheck]:
    """The spares ready at head, each with its alembic_version checked (the catalogs are compared after)."""
    ready = [s for s in spares.read_spares(conn, chain.namespace) if s.state(chain) == SpareState.READY]
    versions = read_versions(conn, [s.schema for s in ready])
    checks = []
    for spare in ready:
        if spare.schema not in versions:
            continue  # claimed since it was listed (renamed into a project's schema): no spare any more
        check = SchemaCheck("", spare.schema, versions.get(spare.schema), "spare")
        if check.revision != chain.head:
            check.problems.append(f"recorded at head {chain.head}, but its alembic_version says {check.revision}")
        checks.append(check)
    return checks


def _from_status(chain: Chain, status: ProjectStatus) -> SchemaCheck:
    """What the status alone says is wrong with a schema."""
    result = SchemaCheck(status.project_id, status.schema, status.revision, status.state)
    problems = result.problems
    if status.state == "missing":
        problems.append("registered, but the schema does not exist")
        return result
    if status.state == "orphan":
        problems.append("not in the registry (orphan)")
    if status.state == "failed":
        problems.append(f"marked failed in the registry: {status.last_error or 'no error recorded'}")
    if status.revision != chain.head:
        # a schema behind head differs from the head model by design
        problems.append(_not_at_head(chain, status.revision))
    elif status.registry_revision not in (None, status.revision) and status.registered:
        problems.append(f"the registry says revision {status.registry_revision}")
    return result


def _comparable(chain: Chain, result: SchemaCheck) -> bool:
    """A schema whose alembic_version holds exactly the head: its catalog is compared with the reference."""
    return result.state != "missing" and result.revision == chain.head


def _not_at_head(chain: Chain, revision: str | None) -> str:
    return f"at revision {revision or 'base'}, head is {chain.head}"


def _compare(
    engine: Engine,
    conn: Connection,
    chain: Chain,
    reference: references.Reference,
    schemas: list[SchemaCheck],
    jobs: int,
    recycle_after: int,
) -> None:
    """Fingerprint every schema; read in detail one schema per fingerprint that differs from the
    reference's, and give its differences to every schema with that fingerprint. A schema dropped (a
    spare claimed) since the status read is marked GONE, with no problem; one migrated since by another
    run, at its new revision (``_moved``). The reading connections are replaced after ``recycle_after``
    schemas."""
    prints = _fingerprints(engine, conn, [s.schema for s in schemas], jobs, recycle_after)
    differing: dict[str, list[SchemaCheck]] = {}
    for result in schemas:
        digest = prints.get(result.schema)
        if digest != reference.fingerprint:
            # no fingerprint: dropped since the status read, most likely; it is read on its own to know
            differing.setdefault(digest or f"unread:{result.schema}", []).append(result)
    if differing:  # migrated since the status read? (then its catalog is another revision's: not compared)
        with conn.begin():
            now = read_versions(conn, [r.schema for group in differing.values() for r in group])
        for key, group in differing.items():
            moved = [r for r in group if r.schema in now and now[r.schema] != r.revision]
            for result in moved:
                _moved(chain, result, now[result.schema])
            differing[key] = [r for r in group if r.schema not in {m.schema for m in moved}]
    with conn.begin():
        conn.execute(PIN_SEARCH_PATH)  # deparsed names depend on the search_path, as for the reference
        for group in differing.values():
            for i, result in enumerate(group):  # the first still as it was read is read: the group's catalog
                found = _detailed(conn, reference, result.schema, result.revision)
                if found is None:
                    result.state = GONE
                elif isinstance(found, _Moved):
                    _moved(chain, result, found.version)
                else:
                    for same in group[i:]:
                        same.problems.extend(found)
                    break


@dataclass(frozen=True)
class _Moved:
    version: str | None


def _moved(chain: Chain, result: SchemaCheck, version: str | None) -> None:
    """``result`` (read at head) was migrated to ``version`` by another run since: as a check a moment later
    would see it, with a note."""
    result.revision = version
    result.state = str(State.EMPTY if version is None else State.AHEAD if not chain.knows(version) else State.BEHIND)
    result.problems = [f"{_not_at_head(chain, version)} ({MOVED})"]


def _detailed(
    conn: Connection, reference: references.Reference, schema: str, version: str | None
) -> list[str] | _Moved | None:
    """How ``schema`` differs from the reference; None when it is gone: dropped before, or while, its
    catalog was read (the namespace's OID is read before and after: a schema dropped in between, even made
    anew, gave a partial read); ``_Moved`` when its one alembic_version row is not ``version`` any more (another
    run migrated it). In a savepoint, rolled back: that releases the lock on its alembic_version."""
    savepoint = conn.begin_nested()
    try:
        before = conn.execute(_NAMESPACE, {"schema": schema}).scalar()
        if before is None:
            return None
        catalog = snapshot(conn, schema)
        if conn.execute(_NAMESPACE, {"schema": schema}).scalar() != before:
            return None
    except DBAPIError as exc:  # a relation of it gone between two statements of the read
        if is_connection_error(exc) or conn.invalidated:
            raise
        savepoint.rollback()
        if conn.execute(_NAMESPACE, {"schema": schema}).scalar() is not None:
            raise
        return None
    finally:
        if savepoint.is_active:
            savepoint.rollback()
    found = catalog.get("alembic_version")
    if isinstance(found, list) and len(found) == 1 and found[0] != version:
        return _Moved(found[0])
    return diff(reference.catalog, catalog)


def _fingerprints(engine: Engine, conn: Connection, names: list[str], jobs: int, recycle_after: int) -> dict[str, str]:
    """catalog.fingerprints in batches spread over ``jobs`` connections (on ``conn`` when 0), each
    replaced after ``recycle_after`` schemas; a schema dropped while its batch is read is left out
    (``without_dropped``)."""
    batch = max(1, min(FINGERPRINT_BATCH, -(-len(names) // max(1, jobs))))

    def read(reading: Connection, chunk: list[str]) -> dict[str, str]:
        recycling.count(reading, len(chunk))  # its backend caches what the catalog functions looked up
        return without_dropped(reading, chunk, fingerprints)

    if jobs:
        return read_parallel(engine, names, jobs, batch, read, recycle_after)
    found: dict[str, str] = {}
    with conn.begin():  # the engine's pool has no connection to spare
        for start in range(0, len(names), batch):
            found.update(read(conn, names[start : start + batch]))
    return found
