"""Drift: does every project schema match what the chain builds?

The reference is built by running the chain from base to head into a scratch schema inside a
transaction that is rolled back, so nothing is left behind; each project schema's catalog
(``catalog.snapshot``: tables, columns, types, nullability, defaults, indexes with method and options,
constraints, comments, alembic_version) is compared with it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from . import registry, transactions
from .catalog import diff, snapshot
from .chain import Chain
from .failures import translate_for
from .inspection import ProjectStatus, collect_status
from .naming import schema_for
from .provisioning import run_plan

SCRATCH_PREFIX = "workspace_drift_"  # not a project schema name: never listed, and rolled back anyway


@dataclass
class SchemaCheck:
    project_id: str
    schema: str
    revision: str | None
    state: str  # as in `status`: 'at head', 'behind', 'missing', 'orphan', ...
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

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.schemas)

    @property
    def failing(self) -> list[SchemaCheck]:
        return [s for s in self.schemas if not s.ok]

    def as_dict(self) -> dict[str, Any]:
        return {
            "head": self.head,
            "ok": self.ok,
            "checked": len(self.schemas),
            "failing": len(self.failing),
            "schemas": [s.as_dict() for s in self.schemas],
        }


def reference_snapshot(conn: Connection, chain: Chain, extension_schema: str) -> dict[str, Any]:
    """The catalog the chain builds at head, from a scratch schema in a rolled-back transaction.
    ``conn`` must not be in a transaction."""
    scratch = SCRATCH_PREFIX + uuid.uuid4().hex[:12]
    transaction = conn.begin()
    try:
        run_plan(conn, chain, scratch, extension_schema, chain.plan(None, chain.head), create_schema=True)
        # type names print relative to the search_path: read under the session's, as for project schemas
        conn.execute(text("SET LOCAL search_path TO DEFAULT"))
        return snapshot(conn, scratch)
    finally:
        transaction.rollback()


def check(engine: Engine, chain: Chain, project_ids: Sequence[str] | None = None) -> CheckReport:
    """Every project schema (or the named ones): at head, registered, ready, and equal to the reference."""
    if project_ids is not None:
        for project_id in project_ids:
            schema_for(project_id)
    try:
        with transactions.connect(engine) as conn:
            extension_schema = registry.bootstrap(conn)
            reference = reference_snapshot(conn, chain, extension_schema)
            with conn.begin():
                statuses = collect_status(conn, chain, project_ids)
                schemas = [_check_one(conn, chain, s, reference) for s in statuses]
                known = {s.project_id for s in statuses}
                schemas += [
                    SchemaCheck(p, schema_for(p), None, "missing", ["no schema and no registry row"])
                    for p in project_ids or []
                    if p not in known
                ]
    except (DBAPIError, OSError) as exc:
        raise translate_for(engine.url, exc) from exc
    return CheckReport(chain.head, schemas)


def _check_one(conn: Connection, chain: Chain, status: ProjectStatus, reference: dict[str, Any]) -> SchemaCheck:
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
        problems.append(f"at revision {status.revision or 'base'}, head is {chain.head}")
        return result  # a schema behind head differs from the head model by design
    if status.registry_revision not in (None, status.revision) and status.registered:
        problems.append(f"the registry says revision {status.registry_revision}")
    savepoint = conn.begin_nested()  # rolled back: releases the lock on its alembic_version at once
    try:
        problems.extend(diff(reference, snapshot(conn, status.schema)))
    finally:
        savepoint.rollback()
    return result
