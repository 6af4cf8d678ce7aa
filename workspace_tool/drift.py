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
head (workspace_tool.pool) are compared too: each will become a project's schema as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine

from workspace_tool import pool, recycling, registry, transactions
from workspace_tool import reference as references
from workspace_tool.chain import Chain
from workspace_tool.dberrors import translating
from workspace_tool.fleet.reader import read_parallel, read_versions, versions_reader
from workspace_tool.jobs import check_jobs, default_jobs, spare_jobs
from workspace_tool.naming import schema_for
from workspace_tool.schema.catalog import PIN_SEARCH_PATH, diff, fingerprints, snapshot
from workspace_tool.status import ProjectStatus, collect_status
from workspace_tool.vocabulary import SpareState

# Schemas per catalog query (at most; fewer so that every connection gets one). Each query reads pg_class
# whole (it has no index by schema), the rest through indexes, and it holds no lock but on catalogs, so
# batches can be large: over 10,000 schemas on 4 connections, `check` took 7.4 s with batches of 2,500,
# 7.9 s with 1,000 and 8.4 s with 500 (medians of 3, loaded machine, an earlier version of the query).
FINGERPRINT_BATCH = 2500


@dataclass
class SchemaCheck:
    project_id: str
    schema: str
    revision: str | None
    state: str  # as in `status`: 'at head', 'behind', 'missing', 'orphan', ...; 'spare' for a spare
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

    def as_dict(self) -> dict[str, Any]:
        return {
            "head": self.head,
            "ok": self.ok,
            "checked": len(self.schemas),
            "failing": len(self.failing),
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
            schema_for(project_id)
    recycle = recycling.resolve(chain, recycle_after)
    # like a fleet run's (an error if the pool can't serve --jobs), but by default no more than the pool spares
    jobs = spare_jobs(engine, default_jobs()) if jobs is None else check_jobs(engine, jobs)
    with translating(engine.url), transactions.connect(engine) as conn:
        with conn.begin():
            has_registry = registry.present(conn)
            statuses = collect_status(conn, chain, project_ids, versions_reader(engine, jobs, recycle))
            spares = _spares(conn, chain) if project_ids is None else []
        schemas = [_from_status(chain, s) for s in statuses]
        at_head = [c for c in schemas if _comparable(chain, c)]
        if at_head or spares:
            _compare(engine, conn, references.for_check(conn, chain), at_head + spares, jobs, recycle)
        recycling.due(conn, recycle)  # it read every schema itself when the pool had no other connection
    known = {s.project_id for s in statuses}
    schemas += [
        SchemaCheck(p, schema_for(p), None, "missing", ["no schema and no registry row"])
        for p in project_ids or []
        if p not in known
    ]
    return CheckReport(chain.head, schemas, has_registry, spares)


def _spares(conn: Connection, chain: Chain) -> list[SchemaCheck]:
    """The spares ready at head, each with its alembic_version checked (the catalogs are compared after)."""
    ready = [s for s in pool.read_spares(conn) if s.state(chain) == SpareState.READY]
    versions = read_versions(conn, [s.schema for s in ready])
    checks = []
    for spare in ready:
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
        problems.append(f"at revision {status.revision or 'base'}, head is {chain.head}")
    elif status.registry_revision not in (None, status.revision) and status.registered:
        problems.append(f"the registry says revision {status.registry_revision}")
    return result


def _comparable(chain: Chain, result: SchemaCheck) -> bool:
    """A schema whose alembic_version holds exactly the head: its catalog is compared with the reference."""
    return result.state != "missing" and result.revision == chain.head


def _compare(
    engine: Engine,
    conn: Connection,
    reference: references.Reference,
    schemas: list[SchemaCheck],
    jobs: int,
    recycle_after: int,
) -> None:
    """Fingerprint every schema; read in detail one schema per fingerprint that differs from the
    reference's, and give its differences to every schema with that fingerprint."""
    prints = _fingerprints(engine, conn, [s.schema for s in schemas], jobs, recycle_after)
    differing: dict[str, list[SchemaCheck]] = {}
    for result in schemas:
        digest = prints.get(result.schema)
        if digest != reference.fingerprint:
            # a schema dropped since the status read has no fingerprint: it is read on its own
            differing.setdefault(digest or f"gone:{result.schema}", []).append(result)
    with conn.begin():
        conn.execute(PIN_SEARCH_PATH)  # deparsed names depend on the search_path, as for the reference
        for group in differing.values():
            savepoint = conn.begin_nested()  # rolled back: releases the lock on its alembic_version at once
            try:
                found = diff(reference.catalog, snapshot(conn, group[0].schema))
            finally:
                savepoint.rollback()
            for result in group:
                result.problems.extend(found)


def _fingerprints(engine: Engine, conn: Connection, names: list[str], jobs: int, recycle_after: int) -> dict[str, str]:
    """catalog.fingerprints in batches spread over ``jobs`` connections (on ``conn`` when 0), each
    replaced after ``recycle_after`` schemas."""
    batch = max(1, min(FINGERPRINT_BATCH, -(-len(names) // max(1, jobs))))
    if jobs:

        def read(reading: Connection, chunk: list[str]) -> dict[str, str]:
            recycling.count(reading, len(chunk))  # its backend caches what the catalog functions looked up
            return fingerprints(reading, chunk)

        return read_parallel(engine, names, jobs, batch, read, recycle_after)
    found: dict[str, str] = {}
    recycling.count(conn, len(names))
    with conn.begin():  # the engine's pool has no connection to spare
        for start in range(0, len(names), batch):
            found.update(fingerprints(conn, names[start : start + batch]))
    return found
