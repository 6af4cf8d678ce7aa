"""Filling and emptying the warm pool: ``fill`` (``pool fill``: one filler per database at a time, an
advisory lock held by a transaction kept open for the fill, so that it never outlives its holder, through a
transaction pooler too), ``drain`` (``pool drain``), ``follow`` (``upgrade --all``: spares behind head are
replaced) and ``build_spare``, the one way a spare is made (checked by ``check.rename_and_scan`` first)."""

from __future__ import annotations

import contextlib
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
from workspace_tool.errors import PoolRefused
from workspace_tool.flavor import Flavor
from workspace_tool.jobs import check_jobs
from workspace_tool.namespace import DEFAULT, Namespace
from workspace_tool.schema.migrate import in_one_transaction, run_plan
from workspace_tool.spares import store
from workspace_tool.spares.check import rename_and_scan
from workspace_tool.spares.contents import read_spares, status
from workspace_tool.spares.settings import configured_size, release_grace, resolve_size
from workspace_tool.spares.store import SpareState, spare_name
from workspace_tool.sql import POOL_LOCK_KEY, advisory_lock_sql, drop_schema_cascade, sql_literal

DROP_BATCH = 20  # spares dropped per transaction (each DROP SCHEMA ... CASCADE locks its ~30 objects)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FillReport:
    target: int
    ready: int  # spares ready at head once done (counted then: claims while it ran are not in it)
    built: int
    dropped: int  # spares no release can claim dropped (and their schemas): see store.TAKE
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
    dropped (``store.TAKE``: another release's are kept while it filled the pool within ``grace_s``
    seconds, default ``workspace_pool_grace``; those ahead of this chain are never dropped by it), then the
    missing ones built on ``jobs`` connections (default: 2 per core, within the engine's pool), plus one
    holding the pool's lock. Idempotent; concurrent fills are safe: one at a time per database, the next
    waits for it (``wait=False``: returns at once, ``busy``) and then finds the pool full. ``stop`` ends it
    between spares. Raises PoolRefused, with nothing made, for a chain that names its schema in stored
    text."""
    started = time.perf_counter()
    ns = chain.namespace
    size = resolve_size(chain, size)
    grace = release_grace(chain) if grace_s is None else grace_s
    jobs = check_jobs(engine, jobs)
    with translating(engine.url):
        with transactions.connect(engine) as conn:
            flavor = registry.bootstrap(conn, chain.namespace)
        check_chain(chain, flavor)
        with _pool_lock(engine, ns, wait=wait) as held:
            if not held:
                return FillReport(size, 0, 0, 0, _ms(started), busy=True)
            with transactions.connect(engine) as conn:
                if size:
                    with conn.begin():
                        conn.execute(ns.sql(store.HEARTBEAT), {"chain": chain.fingerprint, "revision": chain.head})
                dropped = _take(conn, chain, ns, everything=False, grace_s=grace)
                with conn.begin():
                    before = _ready(conn, chain)
                    conn.execute(ns.sql(store.FORGET_RELEASES), {"grace": grace})
            missing = max(0, size - before)
            built = _build(engine, chain, flavor, missing, jobs, stop or threading.Event())
            with transactions.connect(engine) as conn, conn.begin():
                after = _ready(conn, chain)
    return FillReport(size, after, built, dropped, _ms(started), claimed=max(0, before + built - after))


def drain(engine: Engine, namespace: Namespace = DEFAULT) -> int:
    """Drop every spare the current role owns in ``namespace`` (and spare-named schemas of its own left
    without a row): ensure builds new schemas again until the pool is filled. Waits for a running fill.
    Returns how many."""
    ns = namespace
    with translating(engine.url), transactions.connect(engine) as conn:
        with conn.begin():
            if not registry.present(conn, ns) or conn.execute(ns.sql(store.LAYOUT)).one().r0004 is None:
                return 0
        registry.bootstrap(conn, ns)  # TAKE reads what r0004 added
        with _pool_lock(engine, ns, wait=True):
            dropped = _take(conn, None, ns, everything=True)
            with conn.begin():
                unlisted = list(conn.execute(ns.sql(store.UNLISTED), {"spares": ns.spare_regex}).scalars())
                for schema in unlisted:
                    drop_schema_cascade(conn, schema)
    return dropped + len(unlisted)


def follow(
    engine: Engine, chain: Chain, jobs: int | None = None, *, registry_checked: bool = False
) -> FillReport | None:
    """After `upgrade --all` to head: replace the spares behind head (stale ones are never handed out),
    keeping at least as many as there were (another release's, still filling the pool, aside), and at
    least ``workspace_pool_size``. None when there is no pool at all (no spare, size 0): one read.
    ``registry_checked``: the caller made sure the registry exists at a revision this workspace-tool knows
    (a fleet run's bootstrap): it is not asked again."""
    size = configured_size(chain)
    if not size:
        with translating(engine.url), transactions.connect(engine) as conn, conn.begin():
            there = registry_checked or registry.present(conn, chain.namespace)
            if not (there and read_spares(conn, chain.namespace)):
                return None
    current = status(engine, chain)
    others = (SpareState.OTHER_RELEASE, SpareState.AHEAD)
    replaced = [s for s in current.spares if s.own and s.state(chain, current.grace_s) not in others]
    return fill(engine, chain, max(size, len(replaced)), jobs=jobs)


@contextlib.contextmanager
def _pool_lock(engine: Engine, namespace: Namespace, *, wait: bool) -> Iterator[bool]:
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
        key = POOL_LOCK_KEY if namespace.is_default else f"{POOL_LOCK_KEY}:{namespace.registry_schema}"
        taken = conn.execute(text(advisory_lock_sql(sql_literal(key), wait=wait))).scalar()
        try:
            yield wait or bool(taken)
        finally:
            if transaction.is_active:
                with contextlib.suppress(Exception):  # a lost connection took the lock with it
                    transaction.rollback()


def _ready(conn: Connection, chain: Chain) -> int:
    ns = chain.namespace
    return int(conn.execute(ns.sql(store.READY), {"chain": chain.fingerprint, "revision": chain.head}).scalar_one())


def _take(conn: Connection, chain: Chain | None, ns: Namespace, *, everything: bool, grace_s: float = 0.0) -> int:
    """Drop the current role's spares (all, or those no release can claim: see ``store.TAKE``), rows and
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
            taken = list(conn.execute(ns.sql(store.TAKE), params).scalars())
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
    plan = chain.fresh_plan(chain.head)  # as a new project schema is built
    parts = not in_one_transaction([plan])
    for _ in range(BUILD_ATTEMPTS):
        spare = spare_name(chain.namespace)
        building = spare_name(chain.namespace) if check else spare
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
    ns = chain.namespace
    with conn.begin() as transaction:
        privileges = conn.execute(ns.sql(store.PRIVILEGES)).scalar_one()
        run_plan(conn, chain, building, flavor, plan, create_schema=True)
        if check and (found := rename_and_scan(conn, building, spare)):
            raise PoolRefused(found)
        if not conn.execute(ns.sql(store.INSERT), _row(chain, spare, privileges, started)).rowcount:
            transaction.rollback()
            return False
    return True


def _build_in_parts(
    conn: Connection, chain: Chain, flavor: Flavor, plan: Plan, building: str, spare: str, check: bool, started: float
) -> bool:
    """Recorded not ready and committed; each part committed; then renamed (with ``check``), searched, and
    made ready in one transaction. A failure drops what was made; a connection lost leaves it to the next
    fill (which drops spares left not ready)."""
    ns = chain.namespace
    with conn.begin():
        privileges = conn.execute(ns.sql(store.PRIVILEGES)).scalar_one()
        conn.execute(ns.sql(store.INSERT_BUILDING), _row(chain, building, privileges, started))
    try:
        run_plan(conn, chain, building, flavor, plan, create_schema=True, commit=True)
        with conn.begin() as transaction:
            if check and (found := rename_and_scan(conn, building, spare)):
                raise PoolRefused(found)
            if conn.execute(
                ns.sql(store.MARK_READY), {"schema": building, "spare": spare, "ms": _ms(started)}
            ).rowcount:
                return True
            transaction.rollback()
    except BaseException:
        _discard(conn, building, ns)
        raise
    _discard(conn, building, ns)
    return False


def _row(chain: Chain, schema: str, privileges: str, started: float) -> dict[str, Any]:
    return {
        "schema": schema,
        "revision": chain.head,
        "chain": chain.fingerprint,
        "privileges": privileges,
        "ms": _ms(started),
    }


def _discard(conn: Connection, schema: str, ns: Namespace) -> None:
    """Drop a spare being built in parts, schema and row, in a transaction of its own; on a connection that
    is gone, nothing; if the drop fails, a warning (the connection is kept). The next fill drops it."""

    def drop() -> None:
        drop_schema_cascade(conn, schema)
        conn.execute(ns.sql(store.DELETE), {"schema": schema})

    failed = transactions.in_own_transaction(conn, drop)
    if failed is not None:
        log.warning("could not drop spare %s left half-built (the next pool fill will): %s", schema, first_line(failed))


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
