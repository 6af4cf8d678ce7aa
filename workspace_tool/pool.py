"""The warm pool: spare schemas already at head, so a new project's first ensure renames one instead of
building its tables (1 to 3 ms instead of 20 to 30 here).

A spare is built by the chain's usual plan (``run_plan``: compiled SQL, Alembic online where it must) under
a name outside the project namespace (``workspace_spare_<hex>``), and recorded in
``project_registry.spare_schemas`` with its revision, the fingerprint of the chain that built it and the
digest of the role's default privileges it was built under, in the same transaction (a chain with a
revision that can't run in a transaction: in parts, recorded first as not ready, made ready by its last
part). A project's first ensure claims one in its own schema transaction (a CLAIM step: see
schema/plan.py and ``schema.migrate.claims``): one statement renames a ready spare at the current
head of this very chain, owned by the current role and built under its default privileges as they are
now, and writes the registry row; with none, the schema is built as before, in the same transaction under
the same lock.

Releases: a chain at its head (a release of the application) that fills the pool records it in
``project_registry.pool_releases``; spares of another release that filled the pool within
``workspace_pool_grace`` seconds are kept for it, and spares at a revision this chain doesn't know (a newer
release's) are never dropped by it: during a rolling deploy both releases are served from the pool.

Here: the pool's size (alembic.ini ``workspace_pool_size``, default 0 = off) and grace, ``fill`` (``pool
fill``: one filler per database at a time, an advisory lock held by a transaction kept open for the fill,
so that it never outlives its holder, through a transaction pooler too), ``status``, ``drain``, ``follow``
(``upgrade --all``: spares behind head are replaced), the check that a chain can be renamed safely
(``rename_and_scan``), and the opt-in background ``Refiller`` a manager runs after it creates a schema.

A chain whose objects name their schema in stored text (a function's body or its ``SET search_path FROM
CURRENT``, a string in a view or a default, a row a revision inserts with ``current_schema()``, in any
case or with only part of it) can't be renamed: the first spare of each fill is built under another name,
renamed and searched for that name; if found, ``fill`` raises PoolRefused and makes no spare, so ensure
keeps building schemas (the fast path).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, Engine, text

from workspace_tool import recycling, registry, transactions
from workspace_tool.chain import Chain, Plan
from workspace_tool.dberrors import first_line, translating
from workspace_tool.errors import ConfigurationError, PoolRefused
from workspace_tool.flavor import Flavor
from workspace_tool.jobs import check_jobs
from workspace_tool.registry import spares
from workspace_tool.registry.spares import SpareState, spare_name
from workspace_tool.schema.migrate import in_one_transaction, run_plan
from workspace_tool.sql import POOL_LOCK_KEY, advisory_lock_sql, drop_schema_cascade, quote_ident, sql_literal

POOL_SIZE_OPTION = "workspace_pool_size"
GRACE_OPTION = "workspace_pool_grace"
DEFAULT_GRACE_S = 3600.0  # another release's spares are kept while it filled the pool within this many seconds
DROP_BATCH = 20  # spares dropped per transaction (each DROP SCHEMA ... CASCADE locks its ~30 objects)
log = logging.getLogger(__name__)


def configured_size(chain: Chain) -> int:
    """``workspace_pool_size`` in the chain's alembic.ini: how many spares to keep (0, the default: none)."""
    value = chain.option(POOL_SIZE_OPTION, "0")
    try:
        size = int(value.strip())
    except ValueError:
        size = -1
    if size < 0:
        raise ConfigurationError(
            f"{POOL_SIZE_OPTION} = {value!r} in {chain.config_path}: it must be a whole number of spare "
            "schemas, 0 (the default) for no warm pool"
        )
    return size


def resolve_size(chain: Chain, size: int | None) -> int:
    """``size`` (checked), or the configured size when None."""
    return configured_size(chain) if size is None else _check_size(size)


def release_grace(chain: Chain) -> float:
    """``workspace_pool_grace`` in the chain's alembic.ini: seconds since another release last filled the pool
    during which its spares are kept (default 3600)."""
    value = chain.option(GRACE_OPTION, str(DEFAULT_GRACE_S))
    try:
        grace = float(value.strip())
    except ValueError:
        grace = -1.0
    if not grace >= 0:
        raise ConfigurationError(
            f"{GRACE_OPTION} = {value!r} in {chain.config_path}: it must be a number of seconds, 0 or more "
            f"(default {DEFAULT_GRACE_S:.0f}): how long another release's spares are kept after it last filled the pool"
        )
    return grace


# ------------------------------------------------------------------------------------- what is there
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


def read_spares(conn: Connection) -> list[Spare]:
    """Every spare, in a transaction on ``conn``. Read-only; empty before the registry (or r0003) exists,
    or for a role that may not read them (a monitoring role granted SELECT before r0003)."""
    layout = conn.execute(spares.LAYOUT).one()
    if layout.r0004 is None:
        return []
    return [Spare(*row) for row in conn.execute(spares.select_all(r0004=layout.r0004, releases=layout.releases))]


@dataclass(frozen=True)
class Release:
    """A release (a chain at its head) with spares, or that filled the pool (``last_filled_s``: seconds ago)."""

    chain: str
    revision: str
    this: bool  # the current process's chain at its head
    spares: int  # of every role
    last_filled_at: dt.datetime | None
    last_filled_s: float | None


def read_releases(conn: Connection) -> list[tuple[Any, ...]]:
    """(chain, revision, first_seen, last_seen, age_s) of each release that filled the pool; empty before
    r0004 or for a role that may not read them."""
    layout = conn.execute(spares.LAYOUT).one()
    return [tuple(row) for row in conn.execute(spares.SELECT_RELEASES)] if layout.releases else []


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
        present = registry.present(conn)
        found = read_spares(conn) if present else []
        filled = read_releases(conn) if present else []
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


# ------------------------------------------------------------------------------------- filling
@dataclass(frozen=True)
class FillReport:
    target: int
    ready: int  # spares ready at head once done (counted then: claims while it ran are not in it)
    built: int
    dropped: int  # spares no release can claim dropped (and their schemas): see spares.TAKE
    elapsed_ms: float
    busy: bool = False  # another filler held the pool's lock (wait=False): nothing was done
    claimed: int = 0  # spares at head claimed by the application while it ran

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fill(
    engine: Engine,
    chain: Chain,
    size: int | None = None,
    *,
    jobs: int | None = None,
    wait: bool = True,
    stop: threading.Event | None = None,
    grace_s: float | None = None,
) -> FillReport:
    """Bring the pool to ``size`` spares at head (default: ``workspace_pool_size``): this release (the chain
    at its head) records that it fills the pool, the current role's spares that no release can claim are
    dropped (``spares.TAKE``: another release's are kept while it filled the pool within ``grace_s``
    seconds, default ``workspace_pool_grace``; those ahead of this chain are never dropped by it), then the
    missing ones built on ``jobs`` connections (default: 2 per core, within the engine's pool), plus one
    holding the pool's lock. Idempotent; concurrent fills are safe: one at a time per database, the next
    waits for it (``wait=False``: returns at once, ``busy``) and then finds the pool full. ``stop`` ends it
    between spares. Raises PoolRefused, with nothing made, for a chain that names its schema in stored
    text."""
    started = time.perf_counter()
    size = resolve_size(chain, size)
    grace = release_grace(chain) if grace_s is None else grace_s
    jobs = check_jobs(engine, jobs)
    with translating(engine.url):
        with transactions.connect(engine) as conn:
            flavor = registry.bootstrap(conn)
        check_chain(chain, flavor)
        with _pool_lock(engine, wait=wait) as held:
            if not held:
                return FillReport(size, 0, 0, 0, _ms(started), busy=True)
            with transactions.connect(engine) as conn:
                if size:
                    with conn.begin():
                        conn.execute(spares.HEARTBEAT, {"chain": chain.fingerprint, "revision": chain.head})
                dropped = _take(conn, chain, everything=False, grace_s=grace)
                with conn.begin():
                    before = _ready(conn, chain)
                    conn.execute(spares.FORGET_RELEASES, {"grace": grace})
            missing = max(0, size - before)
            built = _build(engine, chain, flavor, missing, jobs, stop or threading.Event())
            with transactions.connect(engine) as conn, conn.begin():
                after = _ready(conn, chain)
    return FillReport(size, after, built, dropped, _ms(started), claimed=max(0, before + built - after))


def drain(engine: Engine) -> int:
    """Drop every spare the current role owns (and spare-named schemas of its own left without a row):
    ensure builds new schemas again until the pool is filled. Waits for a running fill. Returns how many."""
    with translating(engine.url), transactions.connect(engine) as conn:
        with conn.begin():
            if not registry.present(conn) or conn.execute(spares.LAYOUT).one().r0004 is None:
                return 0
        registry.bootstrap(conn)  # TAKE reads what r0004 added
        with _pool_lock(engine, wait=True):
            dropped = _take(conn, None, everything=True)
            with conn.begin():
                unlisted = list(conn.execute(spares.UNLISTED).scalars())
                for schema in unlisted:
                    drop_schema_cascade(conn, schema)
    return dropped + len(unlisted)


def follow(engine: Engine, chain: Chain, jobs: int | None = None) -> FillReport | None:
    """After `upgrade --all` to head: replace the spares behind head (stale ones are never handed out),
    keeping at least as many as there were (another release's, still filling the pool, aside), and at
    least ``workspace_pool_size``. None when there is no pool at all (no spare, size 0): one read."""
    size = configured_size(chain)
    if not size:
        with translating(engine.url), transactions.connect(engine) as conn, conn.begin():
            if not (registry.present(conn) and read_spares(conn)):
                return None
    current = status(engine, chain)
    others = (SpareState.OTHER_RELEASE, SpareState.AHEAD)
    replaced = [s for s in current.spares if s.own and s.state(chain, current.grace_s) not in others]
    return fill(engine, chain, max(size, len(replaced)), jobs=jobs)


def _check_size(size: int) -> int:
    if size < 0:
        raise ConfigurationError(f"a pool size is a number of spare schemas, 0 or more; got {size}")
    return size


@contextlib.contextmanager
def _pool_lock(engine: Engine, *, wait: bool) -> Iterator[bool]:
    """The pool's advisory lock: one filler (or drain) per database at a time. Yields whether it was taken
    (always, when ``wait``); the fill's own work runs on other connections meanwhile.

    It is a transaction's lock (``pg_advisory_xact_lock``), in a transaction held open on a connection of
    its own for the whole fill and rolled back after: transaction-scoped, it is released whatever ends the
    holder (its end, an error, a lost connection), and through a transaction pooler, which lends that
    client a server connection until the transaction ends, it can't outlive the fill on a server
    connection, as a session-level lock taken in one transaction and released in another would (that
    release may reach another server connection). The open transaction holds no snapshot between its
    statements (READ COMMITTED) and no transaction id: vacuum and concurrent index builds don't wait for
    it. A server's ``idle_in_transaction_session_timeout`` shorter than a fill would end it early (the
    lock with it)."""
    with transactions.connect(engine) as conn, conn.begin() as transaction:
        taken = conn.execute(text(advisory_lock_sql(sql_literal(POOL_LOCK_KEY), wait=wait))).scalar()
        try:
            yield wait or bool(taken)
        finally:
            if transaction.is_active:
                with contextlib.suppress(Exception):  # a lost connection took the lock with it
                    transaction.rollback()


def _ready(conn: Connection, chain: Chain) -> int:
    return int(conn.execute(spares.READY, {"chain": chain.fingerprint, "revision": chain.head}).scalar_one())


def _take(conn: Connection, chain: Chain | None, *, everything: bool, grace_s: float = 0.0) -> int:
    """Drop the current role's spares (all, or those no release can claim: see ``spares.TAKE``), rows and
    schemas together, a batch per transaction; spares being claimed are skipped. Under the pool's lock.
    Returns how many."""
    params = {
        "all": everything,
        "chain": chain.fingerprint if chain else None,
        "revision": chain.head if chain else None,
        "known": chain.revisions if chain else [],
        "grace": grace_s,
        "batch": DROP_BATCH,
    }
    dropped = 0
    while True:
        with conn.begin():
            taken = list(conn.execute(spares.TAKE, params).scalars())
            for schema in taken:
                drop_schema_cascade(conn, schema)
        dropped += len(taken)
        if len(taken) < DROP_BATCH:
            return dropped


def _build(engine: Engine, chain: Chain, flavor: Flavor, count: int, jobs: int, stop: threading.Event) -> int:
    """Build ``count`` spares: the first alone, checked (``build_spare(check=True)``: a refused chain
    leaves no spare), then the rest on ``jobs`` connections of their own, each replaced every
    ``workspace_recycle_after`` spares (workspace_tool.recycling); the first error stops the others.
    Every spare is built by the same plan, so one check stands for all of them."""
    if count <= 0 or stop.is_set():
        return 0
    with transactions.connect(engine) as conn:
        build_spare(conn, chain, flavor, check=True)
    left = [count - 1]
    built = [1]
    lock = threading.Lock()
    failed = threading.Event()
    recycle_after = recycling.configured(chain)

    def work() -> None:
        conn = transactions.connect(engine)
        try:
            while not stop.is_set() and not failed.is_set():
                with lock:
                    if not left[0]:
                        return
                    left[0] -= 1
                if recycling.due(conn, recycle_after):  # a new backend for the next spares
                    conn.close()
                    conn = transactions.connect(engine)
                try:
                    build_spare(conn, chain, flavor)
                except BaseException:
                    failed.set()
                    raise
                recycling.count(conn, 1)
                with lock:
                    built[0] += 1
        finally:
            conn.close()

    workers = min(jobs, left[0])
    if workers <= 1:  # in the calling thread (the background refill's own, say)
        if workers:
            work()
        return built[0]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wst-pool") as executor:
        futures = [executor.submit(work) for _ in range(workers)]
    for future in futures:
        error = future.exception()
        if error is not None:
            raise error
    return built[0]


def check_chain(chain: Chain, flavor: Flavor) -> None:
    """Refuse (PoolRefused) what the warm pool can't serve: a database whose flavor refuses spares
    (``Flavor.spares_refused`` says why; ensure builds schemas there). A chain with a revision that can't
    run in a transaction is served: its spares are built in parts (``build_spare``)."""
    if flavor.spares_refused is not None:
        raise PoolRefused([], why=flavor.spares_refused)


BUILD_ATTEMPTS = 2  # a spare whose build saw the default privileges change is built again, once


def build_spare(conn: Connection, chain: Chain, flavor: Flavor, *, check: bool = False) -> str:
    """Build one spare at head on ``conn`` (not in a transaction) and record it; return its name. In one
    transaction; or, for a chain with a revision that can't run in one, in parts (``run_plan(commit=True)``:
    ``send.run_in_parts``), recorded first as not ready (never claimed) and made ready in a
    last transaction. With ``check``, it is built under another name and renamed, then searched for that
    first name (``rename_and_scan``): a chain that names its schema in stored text is refused (PoolRefused)
    and nothing is kept. The default privileges it is recorded under are read at its start and must be the
    same at its end (else it is discarded and built again). The chain was checked by ``fill``
    (``check_chain``), the one way spares are made."""
    plan = chain.plan(None, chain.head)
    parts = not in_one_transaction([plan])
    for _ in range(BUILD_ATTEMPTS):
        spare = spare_name()
        building = spare_name() if check else spare
        started = time.perf_counter()
        built = (
            _build_in_parts(conn, chain, flavor, plan, building, spare, check, started)
            if parts
            else _build_in_one(conn, chain, flavor, plan, building, spare, check, started)
        )
        if built:
            return spare
        log.info("the default privileges changed while spare %s was built: discarded", spare)
    raise PoolRefused(
        [],
        why=f"the default privileges of the role changed while each of {BUILD_ATTEMPTS} spares was built in a row "
        "(a revision that runs ALTER DEFAULT PRIVILEGES without IN SCHEMA?), so no spare can be built under "
        "the privileges it would be claimed under",
    )


def _build_in_one(
    conn: Connection, chain: Chain, flavor: Flavor, plan: Plan, building: str, spare: str, check: bool, started: float
) -> bool:
    with conn.begin() as transaction:
        privileges = conn.execute(spares.PRIVILEGES).scalar_one()
        run_plan(conn, chain, building, flavor, plan, create_schema=True)
        if check and (found := rename_and_scan(conn, building, spare)):
            raise PoolRefused(found)
        if not conn.execute(spares.INSERT, _row(chain, spare, privileges, started)).rowcount:
            transaction.rollback()
            return False
    return True


def _build_in_parts(
    conn: Connection, chain: Chain, flavor: Flavor, plan: Plan, building: str, spare: str, check: bool, started: float
) -> bool:
    """Recorded not ready and committed; each part committed; then renamed (with ``check``), searched, and
    made ready in one transaction. A failure drops what was made; a connection lost leaves it to the next
    fill (which drops spares left not ready)."""
    with conn.begin():
        privileges = conn.execute(spares.PRIVILEGES).scalar_one()
        conn.execute(spares.INSERT_BUILDING, _row(chain, building, privileges, started))
    try:
        run_plan(conn, chain, building, flavor, plan, create_schema=True, commit=True)
        with conn.begin() as transaction:
            if check and (found := rename_and_scan(conn, building, spare)):
                raise PoolRefused(found)
            if conn.execute(spares.MARK_READY, {"schema": building, "spare": spare, "ms": _ms(started)}).rowcount:
                return True
            transaction.rollback()
    except BaseException:
        _discard(conn, building)
        raise
    _discard(conn, building)
    return False


def _row(chain: Chain, schema: str, privileges: str, started: float) -> dict[str, Any]:
    return {
        "schema": schema,
        "revision": chain.head,
        "chain": chain.fingerprint,
        "privileges": privileges,
        "ms": _ms(started),
    }


def _discard(conn: Connection, schema: str) -> None:
    """Drop a spare being built in parts, schema and row, in a transaction of its own; on a connection that
    is gone, nothing (the next fill drops it)."""
    if conn.invalidated or conn.closed:
        return
    try:
        if conn.in_transaction():
            conn.rollback()
        with conn.begin():
            drop_schema_cascade(conn, schema)
            conn.execute(spares.DELETE, {"schema": schema})
    except Exception as exc:
        log.warning("could not drop spare %s left half-built (the next pool fill will): %s", schema, first_line(exc))


# --------------------------------------------------------------------------- is renaming safe?
# What, in a schema, still names ``old`` once the schema was renamed from it (``:needle``, searched in
# lower-cased text: see ``_needle``): references by OID follow a rename (tables, sequences behind serial
# defaults, types, views' and rules' parse trees, foreign keys, triggers' functions), text does not. Each
# object's stored text is read (a function's body and its SET options) or deparsed (defaults, constraints,
# indexes, views, triggers and their arguments, policies, rules, domains' defaults and constraints), and
# comments; then the rows of its tables. The schema's relations are read once (pg_class has no index on
# relnamespace alone), the rest through their indexes. Each catalog's rows of this schema are read into a
# MATERIALIZED CTE before anything is deparsed: a filter that deparses, on a plain join, is pushed down by
# the planner to the scan of the whole catalog (every default, constraint, trigger and rule of the
# database), where it opens other schemas' relations: it waits for a project being dropped and can fail
# with "could not open relation with OID" once that drop commits.
_NAMES_ITSELF = text(
    """
WITH nsp AS (SELECT oid FROM pg_namespace WHERE nspname = :schema),
rel AS MATERIALIZED (SELECT c.oid, c.relname, c.relkind FROM pg_class c, nsp WHERE c.relnamespace = nsp.oid),
def AS MATERIALIZED (
  SELECT r.relname, a.attname, d.adbin, d.adrelid FROM rel r JOIN pg_attrdef d ON d.adrelid = r.oid
  JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum),
con AS MATERIALIZED (SELECT k.oid, k.conname FROM rel r JOIN pg_constraint k ON k.conrelid = r.oid),
trg AS MATERIALIZED (SELECT t.oid, t.tgname FROM rel r JOIN pg_trigger t ON t.tgrelid = r.oid WHERE NOT t.tgisinternal),
pol AS MATERIALIZED (
  SELECT p.polname, p.polqual, p.polwithcheck, p.polrelid FROM rel r JOIN pg_policy p ON p.polrelid = r.oid),
rul AS MATERIALIZED (
  SELECT w.oid, w.rulename FROM rel r JOIN pg_rewrite w ON w.ev_class = r.oid WHERE w.rulename <> '_RETURN'),
dom AS MATERIALIZED (
  SELECT t.oid, t.typname, t.typdefault FROM pg_type t, nsp WHERE t.typnamespace = nsp.oid AND t.typtype = 'd'),
domcon AS MATERIALIZED (SELECT d.oid AS domain, k.oid FROM dom d JOIN pg_constraint k ON k.contypid = d.oid
  WHERE k.conrelid = 0)
SELECT 'function ' || p.proname || '()' FROM pg_proc p, nsp WHERE p.pronamespace = nsp.oid
  AND strpos(lower(concat_ws(' ', p.prosrc, array_to_string(p.proconfig, ' '), p.probin)), :needle) > 0
UNION ALL
SELECT 'the default of ' || relname || '.' || attname FROM def
  WHERE strpos(lower(pg_get_expr(adbin, adrelid)), :needle) > 0
UNION ALL
SELECT 'constraint ' || conname FROM con WHERE strpos(lower(pg_get_constraintdef(oid)), :needle) > 0
UNION ALL
SELECT CASE WHEN r.relkind IN ('v', 'm') THEN 'view ' ELSE 'index ' END || r.relname FROM rel r
  WHERE r.relkind IN ('v', 'm', 'i', 'I')
  AND strpos(lower(CASE WHEN r.relkind IN ('v', 'm') THEN pg_get_viewdef(r.oid) ELSE pg_get_indexdef(r.oid) END),
             :needle) > 0
UNION ALL
SELECT 'trigger ' || tgname FROM trg WHERE strpos(lower(pg_get_triggerdef(oid)), :needle) > 0
UNION ALL
SELECT 'policy ' || polname FROM pol
  WHERE strpos(lower(concat_ws(' ', pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid))),
               :needle) > 0
UNION ALL
SELECT 'rule ' || rulename FROM rul WHERE strpos(lower(pg_get_ruledef(oid)), :needle) > 0
UNION ALL
SELECT 'domain ' || d.typname FROM dom d WHERE strpos(lower(d.typdefault), :needle) > 0
  OR EXISTS (SELECT 1 FROM domcon k WHERE k.domain = d.oid AND strpos(lower(pg_get_constraintdef(k.oid)), :needle) > 0)
UNION ALL
SELECT 'a comment' FROM pg_description ds WHERE strpos(lower(ds.description), :needle) > 0 AND ds.objoid IN (
  SELECT oid FROM nsp UNION ALL SELECT oid FROM rel
  UNION ALL SELECT p.oid FROM pg_proc p, nsp WHERE p.pronamespace = nsp.oid
  UNION ALL SELECT oid FROM con)
"""
)
_TABLES = text(
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = :schema AND c.relkind IN ('r', 'p') ORDER BY c.relname"
)


def rename_and_scan(conn: Connection, old: str, new: str) -> list[str]:
    """Rename schema ``old`` to ``new`` (in the caller's transaction) and list what in it still names
    ``old``, in any case and whole or by its random part (``_needle``): why a schema built under one name
    can't be handed out under another. Empty when it can."""
    conn.execute(text(f"ALTER SCHEMA {quote_ident(old)} RENAME TO {quote_ident(new)}"))
    params = {"schema": new, "needle": _needle(old)}
    found = [str(what) for what in conn.execute(_NAMES_ITSELF, params).scalars()]
    tables = list(conn.execute(_TABLES, {"schema": new}).scalars())
    if tables:
        rows = " UNION ALL ".join(
            f"(SELECT {sql_literal('rows of ' + t)} FROM {quote_ident(new)}.{quote_ident(t)} AS x "
            "WHERE strpos(lower(x::text), :needle) > 0 LIMIT 1)"
            for t in tables
        )
        found += [str(what) for what in conn.execute(text(rows), params).scalars()]
    return found


_RANDOM_PART = 12  # hex digits: a spare's name ends in 16 (spare_name), which appear nowhere by chance


def _needle(old: str) -> str:
    """What text naming schema ``old`` contains, however a revision transformed it (upper case, another
    separator for its ``_``, quoted, concatenated, only its last part): its random last part when it has one
    (a spare's name), else the whole name; in lower case, searched in lower-cased text."""
    tail = old.rsplit("_", 1)[-1]
    random = len(tail) >= _RANDOM_PART and all(c in "0123456789abcdef" for c in tail.lower())
    return (tail if random else old).lower()


# ------------------------------------------------------------------------------ background refill
class Refiller:
    """Refills the warm pool in a thread of its own, on connections of its own (never the request's): a
    manager created with ``refill=True`` kicks it after it creates a schema. One thread per manager, and
    one filler per database (the pool's lock is tried, not waited for: another filler is doing it). A
    failure is logged, never raised to a request; a chain the pool refuses turns it off."""

    def __init__(self, engine: Engine, chain: Chain, size: int, *, dispose_engine: bool = False) -> None:
        self.engine = engine
        self.chain = chain
        self.size = size
        self.dispose_engine = dispose_engine
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._again = False
        self._stop = threading.Event()
        self.refused: PoolRefused | None = None

    def kick(self) -> None:
        """Refill now in the background (or once more after the refill under way)."""
        with self._lock:
            if self._stop.is_set() or self.refused is not None:
                return
            if self._thread is not None and self._thread.is_alive():
                self._again = True
                return
            self._again = False
            self._thread = threading.Thread(target=self._run, name="workspace-pool-refill", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                fill(self.engine, self.chain, self.size, jobs=1, wait=False, stop=self._stop)
            except PoolRefused as exc:
                self.refused = exc
                log.warning("%s", exc)
                return
            except Exception as exc:
                log.warning("could not refill the warm pool: %s", first_line(exc))
            with self._lock:
                if not self._again:
                    self._thread = None
                    return
                self._again = False

    def wait(self, timeout: float | None = None) -> None:
        """Until the refill under way (if any) is done: for tests, and for a clean shutdown."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Stop after the spare being built (its transaction commits or rolls back), then release."""
        self._stop.set()
        self.wait(timeout)
        if self.dispose_engine:
            self.engine.dispose()


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
