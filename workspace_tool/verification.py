"""Prove the fast path (compiled SQL replayed under a search_path) builds the same schema as Alembic online.

For fresh provisioning to every revision, and for every upgrade and downgrade range between two points of
the chain (base included), one scratch schema is migrated entirely online and one through the fast path;
their catalogs (``catalog.snapshot``: tables, columns, types, defaults, nullability, indexes with method
and options, constraints, comments, alembic_version) must be identical.

Everything happens in one transaction that is rolled back, one savepoint per range: nothing is left
behind, no registry row is written (not even the registry: the vector extension must exist, see
`workspace-tool init`), and no project schema is touched. The role needs CREATE on the database.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine

from workspace_tool import transactions
from workspace_tool.chain import Chain, Plan
from workspace_tool.database import Database, find_database, require_create
from workspace_tool.dberrors import describe, translating
from workspace_tool.schema.catalog import PIN_SEARCH_PATH, diff, snapshot
from workspace_tool.schema.migrate import run_plan

SCRATCH_PREFIX = "workspace_verify_"


@dataclass(frozen=True)
class RangeCheck:
    """One compared range. ``fresh``: the schema did not exist before (provisioning)."""

    from_rev: str | None
    to_rev: str | None
    kind: str  # 'fresh', 'upgrade' or 'downgrade'
    fast_path: str  # how the fast side ran the range: 'fast', 'mixed', 'online' or 'none'
    differences: tuple[str, ...] = field(default=())

    @property
    def identical(self) -> bool:
        return not self.differences

    @property
    def fresh(self) -> bool:
        return self.kind == "fresh"

    @property
    def label(self) -> str:
        start = "(none)" if self.fresh else (self.from_rev or "base")
        return f"{start} -> {self.to_rev or 'base'}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "range": self.label,
            "kind": self.kind,
            "from_revision": None if self.fresh else self.from_rev,
            "to_revision": self.to_rev,
            "fast_path": self.fast_path,
            "result": "identical" if self.identical else f"{len(self.differences)} difference(s)",
            "differences": list(self.differences),
        }


@dataclass(frozen=True)
class VerificationReport:
    head: str
    fingerprint: str
    checks: tuple[RangeCheck, ...]

    @property
    def identical(self) -> bool:
        return all(c.identical for c in self.checks)

    @property
    def differing(self) -> list[RangeCheck]:
        return [c for c in self.checks if not c.identical]


def ranges(chain: Chain) -> list[tuple[str | None, str | None, bool]]:
    """(from, to, fresh) for every case: fresh provisioning to each revision, then every ordered pair of
    distinct points (base included): upgrades and downgrades."""
    points: list[str | None] = [None, *chain.revisions]
    cases: list[tuple[str | None, str | None, bool]] = [(None, rev, True) for rev in chain.revisions]
    cases += [(a, b, False) for a in points for b in points if a != b]
    return cases


def verify_fast_path(
    engine: Engine,
    chain: Chain,
    *,
    cases: list[tuple[str | None, str | None, bool]] | None = None,
    on_check: Callable[[RangeCheck], None] | None = None,
) -> VerificationReport:
    """Compare the online and the fast path on scratch schemas, for every range of the chain (or
    ``cases``); the report says, per range, 'identical' or the differences."""
    with translating(engine.url), transactions.connect(engine) as conn:
        with conn.begin():
            database = find_database(conn)  # never created here: `workspace-tool init`
            require_create(conn, "verify-fast-path builds scratch schemas (in a transaction rolled back)")
        checks = []
        token = uuid.uuid4().hex[:8]
        with conn.begin() as outer:
            for from_rev, to_rev, fresh in cases if cases is not None else ranges(chain):
                check = _check(conn, chain, database, token, from_rev, to_rev, fresh)
                checks.append(check)
                if on_check is not None:
                    on_check(check)
            outer.rollback()
    return VerificationReport(chain.head, chain.fingerprint, tuple(checks))


def _check(
    conn: Connection,
    chain: Chain,
    database: Database,
    token: str,
    from_rev: str | None,
    to_rev: str | None,
    fresh: bool,
) -> RangeCheck:
    catalogs: dict[bool, dict[str, Any]] = {}
    errors: list[str] = []
    fast_plan = chain.plan(None if fresh else from_rev, to_rev)
    savepoint = conn.begin_nested()
    try:
        for online in (True, False):
            schema = f"{SCRATCH_PREFIX}{token}_{'online' if online else 'fast'}"
            side = "online path" if online else "fast path"
            inner = conn.begin_nested()
            try:
                for plan, create in _plans(chain, from_rev, to_rev, fresh, online):
                    run_plan(
                        conn, chain, schema, database.extension_schema, plan, create_schema=create, citus=database.citus
                    )
                conn.execute(PIN_SEARCH_PATH)
                catalogs[online] = snapshot(conn, schema)
                inner.commit()
            except Exception as exc:  # a failing side is a difference, not the end of the proof
                inner.rollback()
                errors.append(f"{side} failed: {describe(exc)}")
    finally:
        savepoint.rollback()
    differences = errors or diff(catalogs[True], catalogs[False])
    kind = "fresh" if fresh else ("upgrade" if chain.is_upgrade(from_rev, to_rev) else "downgrade")
    return RangeCheck(from_rev, to_rev, kind, fast_plan.path, tuple(differences))


def _plans(
    chain: Chain, from_rev: str | None, to_rev: str | None, fresh: bool, online: bool
) -> list[tuple[Plan, bool]]:
    """The plans that bring a new scratch schema to from_rev and then run the range, each side all
    through its own path. A range starting at base starts from a schema downgraded from head to base
    (it exists, with an empty alembic_version); a fresh one from no schema at all."""
    if fresh:
        return [(chain.plan(None, to_rev, online=online), True)]
    if from_rev is None:
        setup = [
            (chain.plan(None, chain.head, online=online), True),
            (chain.plan(chain.head, None, online=online), False),
        ]
    else:
        setup = [(chain.plan(None, from_rev, online=online), True)]
    return [*setup, (chain.plan(from_rev, to_rev, online=online), False)]
