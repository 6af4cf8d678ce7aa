"""Prove the fast path (compiled SQL replayed under a search_path) builds the same schema as Alembic online.

For fresh provisioning to every revision, and for every upgrade and downgrade range between two points of
the chain (base included), one scratch schema is migrated entirely online and one through the fast path;
their catalogs (``catalog.snapshot``: tables, columns, types, defaults, nullability, indexes with method
and options, constraints, comments, alembic_version) must be identical.

With the warm pool on (``workspace_pool_size`` > 0, or ``pool=True``), one more case: a spare built at head
through the fast path under a spare's name, then renamed as a claim renames it, against a fresh schema
built online; besides the catalogs, nothing in the renamed schema may still name the schema it was built
in (``spares.rename_and_scan``).

Everything happens in one transaction that is rolled back, one savepoint per range: nothing is left
behind, no registry row is written (not even the registry: the vector extension must exist, see
`workspace-tool init`), and no project schema is touched. The role needs CREATE on the database.

A range whose plans hold a revision that can't run in a transaction can't be rolled back: its two scratch
schemas are migrated for real, part by part as a project schema would be (the online side runs that
revision through Alembic in autocommit, the fast side its compiled statements one by one), compared, and
dropped. What the proof covers is the same: the catalog the fast path builds equals Alembic's.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine

from workspace_tool import flavor as flavors
from workspace_tool import spares, transactions
from workspace_tool.chain import Chain, Plan
from workspace_tool.database import require_create
from workspace_tool.dberrors import describe, translating
from workspace_tool.errors import PoolRefused
from workspace_tool.flavor import Flavor
from workspace_tool.schema.catalog import PIN_SEARCH_PATH, diff, snapshot
from workspace_tool.schema.migrate import in_one_transaction, run_plan, scratch_schema
from workspace_tool.spares.store import spare_name

SCRATCH_PREFIX = "workspace_verify_"


@dataclass(frozen=True)
class RangeCheck:
    """One compared range. ``fresh``: the schema did not exist before (provisioning); ``pool``: a spare
    built at head and renamed, as the warm pool hands one out."""

    from_rev: str | None
    to_rev: str | None
    kind: str  # 'fresh', 'upgrade', 'downgrade' or 'pool'
    fast_path: str  # how the fast side ran the range: 'fast', 'mixed', 'online', 'none' or 'pool'
    differences: tuple[str, ...] = field(default=())

    @property
    def identical(self) -> bool:
        return not self.differences

    @property
    def fresh(self) -> bool:
        return self.kind in ("fresh", "pool")

    @property
    def label(self) -> str:
        start = "(spare)" if self.kind == "pool" else "(none)" if self.fresh else (self.from_rev or "base")
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
    pool: bool | None = None,
) -> VerificationReport:
    """Compare the online and the fast path on scratch schemas, for every range of the chain (or
    ``cases``), and a spare of the warm pool renamed (``pool``; default: when ``workspace_pool_size`` > 0)
    with a fresh schema; the report says, per range, 'identical' or the differences."""
    with_pool = spares.configured_size(chain) > 0 if pool is None else pool
    with translating(engine.url), transactions.connect(engine) as conn:
        with conn.begin():
            flavor = flavors.find(conn)  # never created here: `workspace-tool init`
            require_create(conn, "verify-fast-path builds scratch schemas (in a transaction rolled back)")
        checks: list[RangeCheck] = []
        token = uuid.uuid4().hex[:8]
        outer = None  # the transaction rolled back at the end; closed while a range runs committed
        try:
            for from_rev, to_rev, fresh in cases if cases is not None else ranges(chain):
                committed = _committed(chain, from_rev, to_rev, fresh)
                if committed and outer is not None:
                    outer.rollback()  # nothing of ours may stay open: a concurrent build waits for it
                    outer = None
                elif not committed and outer is None:
                    outer = conn.begin()
                checks.append(_check(conn, chain, flavor, token, (from_rev, to_rev, fresh), committed=committed))
                if on_check is not None:
                    on_check(checks[-1])
            if with_pool:
                committed = _committed(chain, None, chain.head, True)
                if committed and outer is not None:
                    outer.rollback()
                    outer = None
                elif not committed and outer is None:
                    outer = conn.begin()
                checks.append(_check_pool(conn, chain, flavor, token, committed=committed))
                if on_check is not None:
                    on_check(checks[-1])
        finally:
            if outer is not None:
                outer.rollback()
    return VerificationReport(chain.head, chain.fingerprint, tuple(checks))


def _committed(chain: Chain, from_rev: str | None, to_rev: str | None, fresh: bool) -> bool:
    """Whether a side of the range runs a revision that can't run in a transaction (so can't roll back)."""
    plans = [plan for online in (True, False) for plan, _ in _plans(chain, from_rev, to_rev, fresh, online)]
    return not in_one_transaction(plans)


def _check(
    conn: Connection,
    chain: Chain,
    flavor: Flavor,
    token: str,
    case: tuple[str | None, str | None, bool],
    *,
    committed: bool,
) -> RangeCheck:
    """One range (from, to, fresh), each side in its scratch schema: in savepoints of conn's transaction,
    rolled back; or, ``committed``, with conn in no transaction, each part committed, then dropped."""
    from_rev, to_rev, fresh = case

    def side(schema: str, online: bool) -> AbstractContextManager[None]:
        plans = _plans(chain, from_rev, to_rev, fresh, online)
        return _side(conn, chain, schema, flavor, plans, committed=committed)

    differences = _compare_sides(conn, token, side, "fast path", committed=committed)
    kind = "fresh" if fresh else ("upgrade" if chain.is_upgrade(from_rev, to_rev) else "downgrade")
    return RangeCheck(from_rev, to_rev, kind, chain.plan(None if fresh else from_rev, to_rev).path, tuple(differences))


def _check_pool(conn: Connection, chain: Chain, flavor: Flavor, token: str, *, committed: bool) -> RangeCheck:
    """A spare built at head through the fast path under a spare's name and renamed, as a claim does, vs a
    schema built fresh online; anything left naming the spare's first name is a difference too. With a
    revision that can't run in a transaction (``committed``), both are built in parts, as spares are, and
    dropped after (the rename is rolled back first)."""

    @contextmanager
    def side(schema: str, online: bool) -> Iterator[None]:
        if online:
            plans = [(chain.plan(None, chain.head, online=True), True)]
            with _side(conn, chain, schema, flavor, plans, committed=committed):
                yield
            return
        spares.check_chain(chain, flavor)
        spare = spare_name(chain.namespace)
        with _side(conn, chain, spare, flavor, [(chain.fresh_plan(chain.head), True)], committed=committed):
            found = spares.rename_and_scan(conn, spare, schema)
            if found:
                raise PoolRefused(found)
            yield

    differences = _compare_sides(conn, token, side, "pool (a spare renamed)", committed=committed)
    return RangeCheck(None, chain.head, "pool", "pool", tuple(differences))


def _compare_sides(
    conn: Connection,
    token: str,
    side: Callable[[str, bool], AbstractContextManager[None]],
    other: str,
    *,
    committed: bool,
) -> list[str]:
    """Build the online side and the other one (``side(schema, online)``, which holds the schema while its
    catalog is read); their catalogs' differences, or why a side failed. Unless ``committed``, all in a
    savepoint rolled back."""
    catalogs: dict[bool, dict[str, Any]] = {}
    errors: list[str] = []
    savepoint = None if committed else conn.begin_nested()
    try:
        for online in (True, False):
            schema = f"{SCRATCH_PREFIX}{token}_{'online' if online else 'fast'}"
            try:
                with side(schema, online):
                    conn.execute(PIN_SEARCH_PATH)
                    catalogs[online] = snapshot(conn, schema)
            except Exception as exc:  # a failing side is a difference, not the end of the proof
                errors.append(f"{'online path' if online else other} failed: {describe(exc)}")
    finally:
        if savepoint is not None:
            savepoint.rollback()
    return errors or diff(catalogs[True], catalogs[False])


@contextmanager
def _side(
    conn: Connection,
    chain: Chain,
    schema: str,
    flavor: Flavor,
    plans: list[tuple[Plan, bool]],
    *,
    committed: bool,
) -> Iterator[None]:
    """One side's scratch schema through its plans: in a savepoint (kept until the range's is rolled
    back), or committed and dropped after (``scratch_schema``)."""
    if committed:
        with scratch_schema(conn, chain, schema, flavor, plans):
            yield
        return
    with conn.begin_nested():
        for plan, create in plans:
            run_plan(conn, chain, schema, flavor, plan, create_schema=create)
        yield


def _plans(
    chain: Chain, from_rev: str | None, to_rev: str | None, fresh: bool, online: bool
) -> list[tuple[Plan, bool]]:
    """The plans that bring a new scratch schema to from_rev and then run the range, each side all
    through its own path. A range starting at base starts from a schema downgraded from head to base
    (it exists, with an empty alembic_version); a fresh one from no schema at all."""
    if fresh:  # the fast side as a new schema is built: chain.fresh_plan
        return [(chain.plan(None, to_rev, online=True) if online else chain.fresh_plan(to_rev), True)]
    if from_rev is None:
        setup = [
            (chain.plan(None, chain.head, online=online), True),
            (chain.plan(chain.head, None, online=online), False),
        ]
    else:
        setup = [(chain.plan(None, from_rev, online=online), True)]
    return [*setup, (chain.plan(from_rev, to_rev, online=online), False)]
