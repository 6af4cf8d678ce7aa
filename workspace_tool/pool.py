"""The warm pool: spare schemas already at head, so a new project's first ensure renames one instead of
building its tables (1 to 3 ms instead of 20 to 30 here).

A spare is built by the chain's usual plan (``run_plan``: compiled SQL, Alembic online where it must) under
a name outside the project namespace (``workspace_spare_<hex>``), and recorded in
``project_registry.spare_schemas`` with its revision and the fingerprint of the chain that built it, in
the same transaction. A project's first ensure claims one in its own schema transaction (a CLAIM step: see
schema/transaction.py and ``schema.migrate.claims``): one statement renames a spare at the current head of
this very chain, owned by the current role, and writes the registry row; with none, the schema is built as
before, in the same transaction under the same lock.

Here: the pool's size (alembic.ini ``workspace_pool_size``, default 0 = off), ``fill`` (``pool fill``: one
filler per database at a time, an advisory lock), ``status``, ``drain``, ``follow`` (``upgrade --all``:
spares behind head are replaced), the check that a chain can be renamed safely (``rename_and_scan``), and
the opt-in background ``Refiller`` a manager runs after it creates a schema.

A chain whose objects name their schema in stored text (a function's body or its ``SET search_path FROM
CURRENT``, a string in a view or a default, a row a revision inserts with ``current_schema()``) can't be
renamed: the first spare of each fill is built under another name, renamed and searched for that name;
if found, ``fill`` raises PoolRefused and makes no spare, so ensure keeps building schemas (the fast path).
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
from workspace_tool.chain import Chain
from workspace_tool.dberrors import first_line, translating
from workspace_tool.errors import ConfigurationError, PoolRefused
from workspace_tool.jobs import check_jobs
from workspace_tool.registry import spares
from workspace_tool.registry.spares import spare_name
from workspace_tool.schema.migrate import run_plan
from workspace_tool.sql import POOL_LOCK_KEY, quote_ident, session_lock_sql, session_unlock_sql, sql_literal
from workspace_tool.vocabulary import SpareState

POOL_SIZE_OPTION = "workspace_pool_size"
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

    def state(self, chain: Chain) -> SpareState:
        """READY to be claimed at this chain's head, STALE, MISSING or another role's (see SpareState)."""
        if not self.present:
            return SpareState.MISSING
        if not self.own:
            return SpareState.OTHER_ROLE
        ready = (self.revision, self.chain) == (chain.head, chain.fingerprint)
        return SpareState.READY if ready else SpareState.STALE


def read_spares(conn: Connection) -> list[Spare]:
    """Every spare, in a transaction on ``conn``. Read-only; empty before the registry (or r0003) exists,
    or for a role that may not read them (a monitoring role granted SELECT before r0003)."""
    if not conn.execute(spares.READABLE).scalar():
        return []
    return [Spare(*row) for row in conn.execute(spares.SELECT_ALL)]


@dataclass(frozen=True)
class PoolStatus:
    head: str
    target: int  # the size the pool is kept at (alembic.ini, or what the caller asked)
    spares: list[Spare]
    chain: Chain

    def count(self, state: SpareState) -> int:
        return sum(1 for s in self.spares if s.state(self.chain) == state)

    @property
    def ready(self) -> int:
        return self.count(SpareState.READY)

    def counts(self) -> dict[str, int]:
        return {str(state): self.count(state) for state in SpareState}

    def as_dict(self) -> dict[str, Any]:
        return {
            "head": self.head,
            "target": self.target,
            "counts": self.counts(),
            "spares": [{**asdict(s), "state": str(s.state(self.chain))} for s in self.spares],
        }


def status(engine: Engine, chain: Chain, target: int | None = None) -> PoolStatus:
    """The spares and their states (see ``Spare.state``). Read-only."""
    with translating(engine.url), transactions.connect(engine) as conn, conn.begin():
        found = read_spares(conn) if registry.present(conn) else []
    return PoolStatus(chain.head, configured_size(chain) if target is None else target, found, chain)


# ------------------------------------------------------------------------------------- filling
@dataclass(frozen=True)
class FillReport:
    target: int
    ready: int  # spares ready at head once done
    built: int
    dropped: int  # stale spares dropped (and their schemas)
    elapsed_ms: float
    busy: bool = False  # another filler held the pool's lock (wait=False): nothing was done

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
) -> FillReport:
    """Bring the pool to ``size`` spares at head (default: ``workspace_pool_size``): stale spares of the
    current role are dropped, then the missing ones built on ``jobs`` connections (default: 2 per core,
    within the engine's pool), plus one holding the pool's lock. Idempotent; concurrent fills are safe:
    one at a time per database, the next waits for it (``wait=False``: returns at once, ``busy``) and
    then finds the pool full. ``stop`` ends it between spares. Raises PoolRefused, with nothing made, for
    a chain that names its schema in stored text."""
    started = time.perf_counter()
    size = resolve_size(chain, size)
    jobs = check_jobs(engine, jobs)
    with translating(engine.url), transactions.connect(engine) as conn:
        database = registry.bootstrap(conn)
        check_chain(chain, citus=database.citus)
        extension_schema = database.extension_schema
        with _pool_lock(conn, wait=wait) as held:
            if not held:
                return FillReport(size, 0, 0, 0, _ms(started), busy=True)
            dropped = _take(conn, chain, everything=False)
            with conn.begin():
                ready = _ready(conn, chain)
            built = _build(engine, chain, extension_schema, max(0, size - ready), jobs, stop or threading.Event())
    return FillReport(size, ready + built, built, dropped, _ms(started))


def drain(engine: Engine) -> int:
    """Drop every spare the current role owns (and spare-named schemas of its own left without a row):
    ensure builds new schemas again until the pool is filled. Waits for a running fill. Returns how many."""
    with translating(engine.url), transactions.connect(engine) as conn:
        with conn.begin():
            if not registry.present(conn) or not conn.execute(spares.READABLE).scalar():
                return 0
        with _pool_lock(conn, wait=True):
            dropped = _take(conn, None, everything=True)
            with conn.begin():
                unlisted = list(conn.execute(spares.UNLISTED).scalars())
                for schema in unlisted:
                    conn.execute(text(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE"))
    return dropped + len(unlisted)


def follow(engine: Engine, chain: Chain, jobs: int | None = None) -> FillReport | None:
    """After `upgrade --all` to head: replace the spares behind head (stale ones are never handed out),
    keeping at least as many as there were, and at least ``workspace_pool_size``. None when there is no
    pool at all (no spare, size 0): one read."""
    size = configured_size(chain)
    if not size:
        with translating(engine.url), transactions.connect(engine) as conn, conn.begin():
            if not (registry.present(conn) and read_spares(conn)):
                return None
    current = status(engine, chain)
    return fill(engine, chain, max(size, len([s for s in current.spares if s.own])), jobs=jobs)


def _check_size(size: int) -> int:
    if size < 0:
        raise ConfigurationError(f"a pool size is a number of spare schemas, 0 or more; got {size}")
    return size


@contextlib.contextmanager
def _pool_lock(conn: Connection, *, wait: bool) -> Iterator[bool]:
    """The pool's session-level advisory lock, held on ``conn`` across its transactions: one filler (or
    drain) per database at a time. Yields whether it was taken (always, when ``wait``)."""
    key = sql_literal(POOL_LOCK_KEY)
    with conn.begin():
        taken = conn.execute(text(session_lock_sql(key, wait=wait))).scalar()
    held = wait or bool(taken)
    try:
        yield held
    finally:
        if held and not conn.invalidated:
            with contextlib.suppress(Exception), conn.begin():
                conn.execute(text(session_unlock_sql(key)))


_READY = text(
    f"SELECT count(*) FROM {spares.SPARES_TABLE} s JOIN pg_namespace n ON n.nspname = s.schema_name::name "
    "WHERE s.chain = :chain AND s.revision = :revision "
    "AND pg_get_userbyid(n.nspowner) = current_user"
)


def _ready(conn: Connection, chain: Chain) -> int:
    return int(conn.execute(_READY, {"chain": chain.fingerprint, "revision": chain.head}).scalar_one())


def _take(conn: Connection, chain: Chain | None, *, everything: bool) -> int:
    """Drop the current role's spares (all, or those not ready at ``chain``'s head), rows and schemas
    together, a batch per transaction; spares being claimed are skipped. Returns how many."""
    params = {
        "all": everything,
        "chain": chain.fingerprint if chain else None,
        "revision": chain.head if chain else None,
        "batch": DROP_BATCH,
    }
    dropped = 0
    while True:
        with conn.begin():
            taken = list(conn.execute(spares.TAKE, params).scalars())
            for schema in taken:
                conn.execute(text(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE"))
        dropped += len(taken)
        if len(taken) < DROP_BATCH:
            return dropped


def _build(engine: Engine, chain: Chain, extension_schema: str, count: int, jobs: int, stop: threading.Event) -> int:
    """Build ``count`` spares: the first alone, checked (``build_spare(check=True)``: a refused chain
    leaves no spare), then the rest on ``jobs`` connections of their own, each replaced every
    ``workspace_recycle_after`` spares (workspace_tool.recycling); the first error stops the others.
    Every spare is built by the same plan, so one check stands for all of them."""
    if count <= 0 or stop.is_set():
        return 0
    with transactions.connect(engine) as conn:
        build_spare(conn, chain, extension_schema, check=True)
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
                    build_spare(conn, chain, extension_schema)
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


def check_chain(chain: Chain, *, citus: bool = False) -> None:
    """Refuse (PoolRefused) what the warm pool can't serve: a chain with a revision that can't run in a
    transaction (a spare is built and recorded in one, so that a failed build leaves nothing behind), and
    Citus (``citus``: renaming a distributed tenant schema inside the claim is not something this pool
    was built or tested for; ensure builds schemas there, statement by statement)."""
    if citus:
        raise PoolRefused([], why="the database runs Citus, where spares are not supported")
    outside = [step.to_rev or "base" for step in chain.plan(None, chain.head).steps if not step.transactional]
    if outside:
        raise PoolRefused(
            [], why=f"revision {', '.join(outside)} can't run in a transaction, and a spare is built in one"
        )


def build_spare(conn: Connection, chain: Chain, extension_schema: str, *, check: bool = False) -> str:
    """Build one spare at head in its own transaction on ``conn`` and record it; return its name. With
    ``check``, it is built under another name and renamed, then searched for that first name
    (``rename_and_scan``): a chain that names its schema in stored text is refused (PoolRefused) and
    nothing is kept. The chain was checked by ``fill`` (``check_chain``), the one way spares are made."""
    spare = spare_name()
    started = time.perf_counter()
    with conn.begin():
        building = spare_name() if check else spare
        run_plan(conn, chain, building, extension_schema, chain.plan(None, chain.head), create_schema=True)
        if check and (found := rename_and_scan(conn, building, spare)):
            raise PoolRefused(found)
        params = {"schema": spare, "revision": chain.head, "chain": chain.fingerprint, "ms": _ms(started)}
        conn.execute(spares.INSERT, params)
    return spare


# --------------------------------------------------------------------------- is renaming safe?
# What, in a schema, still names ``old`` once the schema was renamed from it: references by OID follow a
# rename (tables, sequences behind serial defaults, types, views' and rules' parse trees, foreign keys,
# triggers' functions), text does not. Each object's stored text is read (a function's body and its SET
# options) or deparsed (defaults, constraints, indexes, views, triggers and their arguments, policies,
# rules, domains' defaults and constraints), and comments; then the rows of its tables. The schema's
# relations are read once (pg_class has no index on relnamespace alone), the rest through their indexes.
_NAMES_ITSELF = text(
    """
WITH nsp AS (SELECT oid FROM pg_namespace WHERE nspname = :schema),
rel AS MATERIALIZED (SELECT c.oid, c.relname, c.relkind FROM pg_class c, nsp WHERE c.relnamespace = nsp.oid)
SELECT 'function ' || p.proname || '()' FROM pg_proc p, nsp WHERE p.pronamespace = nsp.oid
  AND strpos(concat_ws(' ', p.prosrc, array_to_string(p.proconfig, ' '), p.probin), :old) > 0
UNION ALL
SELECT 'the default of ' || r.relname || '.' || a.attname FROM rel r JOIN pg_attrdef d ON d.adrelid = r.oid
  JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
  WHERE strpos(pg_get_expr(d.adbin, d.adrelid), :old) > 0
UNION ALL
SELECT 'constraint ' || k.conname FROM rel r JOIN pg_constraint k ON k.conrelid = r.oid
  WHERE strpos(pg_get_constraintdef(k.oid), :old) > 0
UNION ALL
SELECT CASE WHEN r.relkind IN ('v', 'm') THEN 'view ' ELSE 'index ' END || r.relname FROM rel r
  WHERE r.relkind IN ('v', 'm', 'i', 'I')
  AND strpos(CASE WHEN r.relkind IN ('v', 'm') THEN pg_get_viewdef(r.oid) ELSE pg_get_indexdef(r.oid) END, :old) > 0
UNION ALL
SELECT 'trigger ' || t.tgname FROM rel r JOIN pg_trigger t ON t.tgrelid = r.oid
  WHERE NOT t.tgisinternal AND strpos(pg_get_triggerdef(t.oid), :old) > 0
UNION ALL
SELECT 'policy ' || p.polname FROM rel r JOIN pg_policy p ON p.polrelid = r.oid
  WHERE strpos(concat_ws(' ', pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)), :old) > 0
UNION ALL
SELECT 'rule ' || w.rulename FROM rel r JOIN pg_rewrite w ON w.ev_class = r.oid
  WHERE w.rulename <> '_RETURN' AND strpos(pg_get_ruledef(w.oid), :old) > 0
UNION ALL
SELECT 'domain ' || t.typname FROM pg_type t, nsp WHERE t.typnamespace = nsp.oid AND t.typtype = 'd' AND (
  strpos(t.typdefault, :old) > 0
  OR EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = 0 AND k.contypid = t.oid
             AND strpos(pg_get_constraintdef(k.oid), :old) > 0))
UNION ALL
SELECT 'a comment' FROM pg_description ds WHERE strpos(ds.description, :old) > 0 AND ds.objoid IN (
  SELECT oid FROM nsp UNION ALL SELECT oid FROM rel
  UNION ALL SELECT p.oid FROM pg_proc p, nsp WHERE p.pronamespace = nsp.oid
  UNION ALL SELECT k.oid FROM rel r JOIN pg_constraint k ON k.conrelid = r.oid)
"""
)
_TABLES = text(
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = :schema AND c.relkind IN ('r', 'p') ORDER BY c.relname"
)


def rename_and_scan(conn: Connection, old: str, new: str) -> list[str]:
    """Rename schema ``old`` to ``new`` (in the caller's transaction) and list what in it still names
    ``old``: why a schema built under one name can't be handed out under another. Empty when it can."""
    conn.execute(text(f"ALTER SCHEMA {quote_ident(old)} RENAME TO {quote_ident(new)}"))
    params = {"schema": new, "old": old}
    found = [str(what) for what in conn.execute(_NAMES_ITSELF, params).scalars()]
    tables = list(conn.execute(_TABLES, {"schema": new}).scalars())
    if tables:
        rows = " UNION ALL ".join(
            f"(SELECT {sql_literal('rows of ' + t)} FROM {quote_ident(new)}.{quote_ident(t)} AS x "
            "WHERE strpos(x::text, :old) > 0 LIMIT 1)"
            for t in tables
        )
        found += [str(what) for what in conn.execute(text(rows), {"old": old}).scalars()]
    return found


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
