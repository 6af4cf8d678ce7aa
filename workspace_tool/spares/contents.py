"""What the warm pool holds: each spare and its state (``Spare.state``), the releases that filled it, and
``status`` (``pool status``). Read-only."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, Engine

from workspace_tool import registry, transactions
from workspace_tool.chain import Chain
from workspace_tool.dberrors import translating
from workspace_tool.namespace import DEFAULT, Namespace
from workspace_tool.spares import store
from workspace_tool.spares.settings import DEFAULT_GRACE_S, configured_size, release_grace
from workspace_tool.spares.store import SpareState


@dataclass(frozen=True)
class Spare:
    schema: str
    revision: str
    chain: str  # the fingerprint of the chain that built it
    created_at: dt.datetime
    build_ms: float | None
    present: bool  # its schema exists
    own: bool  # the current role owns it: only then may it claim (or drop) it
    complete: bool = True  # built to its end (False: being built in parts, or left half-built)
    current_privileges: bool = True  # built under the current role's default privileges as they are now
    release_age_s: float | None = None  # seconds since its release last filled the pool (None: not recorded)

    def mine(self, chain: Chain) -> bool:
        """At this chain's head, built by this chain: this release's."""
        return (self.revision, self.chain) == (chain.head, chain.fingerprint)

    def state(self, chain: Chain, grace_s: float | None = None) -> SpareState:
        """READY to be claimed at this chain's head, or why not (see SpareState). ``grace_s``: how recently
        another release must have filled the pool for its spares to be kept (default: the chain's setting)."""
        if not self.present:
            return SpareState.MISSING
        if not self.own:
            return SpareState.OTHER_ROLE
        if not self.complete:
            return SpareState.BUILDING
        if not self.current_privileges:
            return SpareState.OLD_PRIVILEGES
        if self.mine(chain):
            return SpareState.READY
        grace = release_grace(chain) if grace_s is None else grace_s
        if self.release_age_s is not None and self.release_age_s <= grace:
            return SpareState.OTHER_RELEASE
        return SpareState.STALE if chain.knows(self.revision) else SpareState.AHEAD


def read_spares(conn: Connection, namespace: Namespace = DEFAULT) -> list[Spare]:
    """Every spare, in a transaction on ``conn``. Read-only; empty before the registry (or r0003) exists,
    or for a role that may not read them (a monitoring role granted SELECT before r0003)."""
    layout = conn.execute(namespace.sql(store.LAYOUT)).one()
    if layout.r0004 is None:
        return []
    return [
        Spare(*row)
        for row in conn.execute(namespace.sql(store.select_all(r0004=layout.r0004, releases=layout.releases)))
    ]


@dataclass(frozen=True)
class Release:
    """A release (a chain at its head) with spares, or that filled the pool (``last_filled_s``: seconds ago)."""

    chain: str
    revision: str
    this: bool  # the current process's chain at its head
    spares: int  # of every role
    last_filled_at: dt.datetime | None
    last_filled_s: float | None


def read_releases(conn: Connection, namespace: Namespace = DEFAULT) -> list[tuple[Any, ...]]:
    """(chain, revision, first_seen, last_seen, age_s) of each release that filled the pool; empty before
    r0004 or for a role that may not read them."""
    layout = conn.execute(namespace.sql(store.LAYOUT)).one()
    return [tuple(row) for row in conn.execute(namespace.sql(store.SELECT_RELEASES))] if layout.releases else []


@dataclass(frozen=True)
class PoolStatus:
    head: str
    target: int  # the size the pool is kept at (alembic.ini, or what the caller asked)
    spares: list[Spare]
    chain: Chain
    grace_s: float = DEFAULT_GRACE_S
    releases: tuple[Release, ...] = ()

    def count(self, state: SpareState) -> int:
        return sum(1 for s in self.spares if s.state(self.chain, self.grace_s) == state)

    @property
    def ready(self) -> int:
        return self.count(SpareState.READY)

    def counts(self) -> dict[str, int]:
        return {str(state): self.count(state) for state in SpareState}

    def as_dict(self) -> dict[str, Any]:
        return {
            "head": self.head,
            "chain": self.chain.fingerprint,
            "target": self.target,
            "grace_s": self.grace_s,
            "counts": self.counts(),
            "releases": [asdict(r) for r in self.releases],
            "spares": [
                {**asdict(s), "state": str(s.state(self.chain, self.grace_s)), "this": s.mine(self.chain)}
                for s in self.spares
            ],
        }


def status(engine: Engine, chain: Chain, target: int | None = None) -> PoolStatus:
    """The spares and their states (see ``Spare.state``), and the releases they belong to. Read-only."""
    with translating(engine.url), transactions.connect(engine) as conn, conn.begin():
        present = registry.present(conn, chain.namespace)
        found = read_spares(conn, chain.namespace) if present else []
        filled = read_releases(conn, chain.namespace) if present else []
    grace = release_grace(chain)
    return PoolStatus(
        chain.head,
        configured_size(chain) if target is None else target,
        found,
        chain,
        grace,
        _releases(chain, found, filled),
    )


def _releases(chain: Chain, found: list[Spare], filled: list[tuple[Any, ...]]) -> tuple[Release, ...]:
    """This release first, then every other one with spares or that filled the pool, latest first."""
    seen = {(c, r): (last, age) for c, r, _, last, age in filled}
    counted: dict[tuple[str, str], int] = {}
    for spare in found:
        counted[(spare.chain, spare.revision)] = counted.get((spare.chain, spare.revision), 0) + 1
    this = (chain.fingerprint, chain.head)
    keys = [this] + [k for k in dict.fromkeys([*seen, *counted]) if k != this]
    releases = [Release(c, r, (c, r) == this, counted.get((c, r), 0), *seen.get((c, r), (None, None))) for c, r in keys]
    return tuple(
        releases[:1]
        + sorted(releases[1:], key=lambda r: r.last_filled_s if r.last_filled_s is not None else float("inf"))
    )
