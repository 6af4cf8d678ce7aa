"""The ensure core both managers share: what ensure decides before touching the database (cached? verify?
migrate?), the work to run on a connection, and what it remembers afterwards.

The sync manager runs the work directly; the async one through ``AsyncConnection.run_sync``. Only the
I/O differs between them (how a version is read, how a connection is had), never a decision.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict

from sqlalchemy import Connection

from workspace_tool import recycling
from workspace_tool.chain import Chain
from workspace_tool.chain.plan import Path
from workspace_tool.flavor import Flavor
from workspace_tool.registry import known as cache
from workspace_tool.registry.inventory import VersionsReader
from workspace_tool.schema.migrate import EnsureResult, Migration, NoSpare, Sending, claim_first, claims, migrate
from workspace_tool.schema.operation import ENSURE, ENSURE_EXISTING, Action
from workspace_tool.schema.roles import validate_role_name
from workspace_tool.spares.refill import Refiller
from workspace_tool.status import ProjectStatus, collect_status

log = logging.getLogger(__name__)  # never on the cached path: that is a dict lookup


class EnsureOptions(TypedDict, total=False):
    """The options of ``ensure`` / ``ensure_detailed``, on both managers."""

    upgrade: bool  # default True; False raises WorkspaceOutdated instead of upgrading a schema behind head
    verify: bool  # default False; True skips the cache and reads the schema's alembic_version (one round trip)
    owner_role: str | None  # grant this role (created NOLOGIN if missing) the schema's tables, in the same transaction
    adopt: bool  # default False; True runs the chain into a hand-made schema (relations, no alembic_version)


@dataclass(frozen=True)
class Ensure:
    """One ensure call, validated: either already answered (``result``), or to verify and/or migrate."""

    migration: Migration
    started: float
    verify: bool  # read the schema's version first: at head, nothing else is needed
    result: EnsureResult | None = None

    @property
    def schema(self) -> str:
        return self.migration.schema


class EnsureCore:
    """Per manager: the chain, the process-wide "known at head" map of its database, the grants made, and
    the warm pool: its size (0: off, no spare is ever looked for) and the background refiller, if any."""

    def __init__(self, chain: Chain, cache_key: str, warm_pool: int = 0, refiller: Refiller | None = None) -> None:
        self.chain = chain
        self.ready = cache.ready_map(cache_key)
        self.granted: set[tuple[str, str]] = set()  # (project, owner role) granted by this manager
        self.warm_pool = warm_pool
        self.refiller = refiller
        if warm_pool:
            _ = chain.fingerprint  # read now, not in a request: a claim names the chain that built the spare

    def cached(self, project_id: str, owner_role: str | None) -> str | None:
        """The hot path: the schema of a project known to be at head (a dict lookup, no I/O), else None."""
        if owner_role is not None and (project_id, owner_role) not in self.granted:
            return None
        try:
            return self.ready.get(project_id)
        except TypeError:  # unhashable: schema_for names the rule it breaks
            return None

    def start(self, project_id: str, options: EnsureOptions) -> Ensure:
        """Validate the call (before any SQL) and answer it from the cache when it can."""
        started = time.perf_counter()
        upgrade, verify = options.get("upgrade", True), options.get("verify", False)
        owner_role, adopt = options.get("owner_role"), options.get("adopt", False)
        schema = self.chain.namespace.schema_for(project_id)
        if owner_role is not None:
            validate_role_name(owner_role)
        head = self.chain.head
        operation = ENSURE if upgrade else ENSURE_EXISTING
        migration = Migration(project_id, schema, head, operation, owner_role=owner_role, adopt=adopt)
        granted = owner_role is None or (project_id, owner_role) in self.granted
        if not verify and granted and project_id in self.ready:
            return Ensure(migration, started, False, self._answer(migration, Action.CACHED, started))
        if not verify or not granted:
            self.ready.pop(project_id, None)
        return Ensure(migration, started, verify and granted)

    def verified(self, call: Ensure, version: str | None) -> EnsureResult | None:
        """After reading the schema's version: the answer if it is at head, else None (migrate it)."""
        if version == self.chain.head:
            self.ready[call.migration.project_id] = call.schema
            answer = self._answer(call.migration, Action.VERIFIED, call.started)
            log.debug("%s: verified at head (%.1f ms)", call.schema, answer.duration_ms)
            return answer
        self.ready.pop(call.migration.project_id, None)
        return None

    def work(
        self, call: Ensure, flavor: Flavor, *, pool: bool = True, first_round_trip: bool = True
    ) -> Callable[[Connection], EnsureResult]:
        """What to run on a connection: the careful path (schema/migrate.py), which claims a spare from the
        warm pool for a missing schema when the pool is on (and ``pool``: False once ``claim`` found none);
        unless verifying (the version was read) or ``first_round_trip`` is False (a claim sent first failed on
        the database's account: it is not sent alone again), a schema not known here is first tried as a new
        one, in one round trip (``migrate.first_round_trip``). With a direct connection configured
        (``flavor.direct``: the manager has a direct engine), a range that needs a session raises
        pooler.UseDirect, nothing changed, for the manager to run it there."""
        how = self._sending(call, flavor, pool, first_round_trip)
        return lambda conn: migrate(conn, how, call.migration, started=call.started)

    def claim(self, call: Ensure, flavor: Flavor) -> Callable[[Connection], EnsureResult | NoSpare | None] | None:
        """The warm pool's claim alone (``migrate.claim_first``: one round trip, no Alembic), for a manager
        that sends it apart from the rest of ``work``; None when no claim would be tried first."""
        if not self.warm_pool:  # asked by every uncached ensure, with the pool on or not
            return None
        how = self._sending(call, flavor, True)
        if not how.first_round_trip or not claims(how, call.migration) or call.migration.owner_role:
            return None
        return lambda conn: claim_first(conn, how, call.migration, call.started)

    def _sending(self, call: Ensure, flavor: Flavor, pool: bool, first_round_trip: bool = True) -> Sending:
        return Sending(
            self.chain, flavor, pool=pool and self.warm_pool > 0, first_round_trip=first_round_trip and not call.verify
        )

    def finished(self, call: Ensure, result: EnsureResult) -> EnsureResult:
        """Remember a project brought to head (and the role granted on it); a schema created (from a spare
        or built because the pool was empty) kicks the background refill, when there is one."""
        self.ready[call.migration.project_id] = call.schema
        if call.migration.owner_role is not None:
            self.granted.add((call.migration.project_id, call.migration.owner_role))
        if self.refiller is not None and result.action is Action.CREATED:
            self.refiller.kick()
        return result

    def _answer(self, migration: Migration, action: Action, started: float) -> EnsureResult:
        head = self.chain.head
        duration = (time.perf_counter() - started) * 1000.0
        return EnsureResult(migration.project_id, migration.schema, action, head, head, duration, Path.NONE)


def after_claim(claimed: NoSpare | None) -> tuple[bool, bool]:
    """``work``'s ``pool`` and ``first_round_trip`` after a claim sent first (``EnsureCore.claim``) claimed
    nothing: NO_SPARE, the schema is built as a new one (in one round trip, no claim); None, the claim failed
    on the database's account (an old registry, a statement timeout): the careful path claims in its own
    transaction, without the claim sent alone again."""
    return claimed is None, claimed is not None


# ------------------------------------------------------------ reads both managers run on a connection
def status_reader(
    chain: Chain, project_ids: list[str] | None, versions_of: VersionsReader | None = None
) -> Callable[[Connection], list[ProjectStatus]]:
    """Validate the ids (before any SQL) and return the status read (see workspace_tool.status). A
    connection that read the versions itself goes back to the pool only while its backend has touched
    fewer schemas than ``workspace_recycle_after`` (workspace_tool.recycling); else closing it ends it."""
    for project_id in project_ids or ():
        chain.namespace.schema_for(project_id)
    recycle_after = recycling.configured(chain)

    def read(conn: Connection) -> list[ProjectStatus]:
        with conn.begin():
            found = collect_status(conn, chain, project_ids, versions_of)
        recycling.due(conn, recycle_after)
        return found

    return read
