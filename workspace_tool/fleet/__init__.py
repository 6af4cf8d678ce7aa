"""Many project schemas at once: upgrade, downgrade or provision a fleet, in parallel, one schema per
transaction, with a result per schema.

The order of work:

1. The registry's own chain is migrated first, serially (``registry.bootstrap``).
2. Every schema's version is read in batches (``inspection.read_versions``); schemas already at the target
   with a matching registry row are skipped without any Alembic (a no-op run over 10,000 schemas is a
   few queries).
3. The rest run through ``provisioning.migrate_on``: one transaction per schema, its advisory lock,
   ``lock_timeout`` on every lock wait, the registry row written in the same transaction.  A lock
   timeout or a lost connection is retried with backoff, then reported; any failure leaves the schema at
   its old revision and marks its registry row ``failed`` in a separate transaction.  After DEAD_AFTER
   schemas in a row failed on a lost connection the database is taken to be gone: no new schema starts.
   A schema found already at the target (another run moved it since the batch read) is ``skipped``.
4. If no reference catalog is stored for this chain, the chain is built into a scratch schema (rolled
   back) and its catalog stored, for `check` (``reference.store_if_missing``: best effort, bounded by the
   lock timeout; a failure is logged, not reported as the run's).

Parallelism: a compiled plan (the normal case) is replayed without touching Alembic, so a pool of threads
with one connection each scales (psycopg2 releases the GIL while waiting on the server).  A plan with
online steps runs Alembic, whose ``op``/``context`` proxies are process-global: in threads only that part
is serialised (under ``chain.ALEMBIC_LOCK``); the lock, state read, registry write and commit overlap.
``executor="processes"`` runs schemas in spawned processes instead, each with its own chain and
connection (the caller's main module must be import-safe: ``if __name__ == "__main__":``).  An Engine
can't cross to a process, so each worker builds its own: with ``engine_factory`` when given (a picklable
callable returning an Engine, e.g. ``functools.partial(sqlalchemy.create_engine, url, connect_args=...)``),
else from the engine's URL, isolation level and execution options; an engine with settings those don't
carry (``connect_args``, a ``creator``, event listeners) is refused before anything runs
(``worker_engine.for_workers``).  Measured on 2 shared cores, threads were faster for online plans too (a
process costs seconds to start), so "auto" means threads.  Workers are closed on every path; on Ctrl-C no
new schema is started, running transactions finish (or roll back), and the report says what was not started.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.util
import os
import queue
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, pool, text
from sqlalchemy.exc import DBAPIError

from workspace_tool import reference, registry, transactions
from workspace_tool.chain import Chain
from workspace_tool.database import DEFAULT_EXTENSION_SCHEMA
from workspace_tool.dberrors import first_line, is_connection_error, sqlstate, translate, translate_for
from workspace_tool.errors import ConfigurationError, LockTimeout, UnknownRevision, WorkspaceError, WorkspaceNotFound
from workspace_tool.fleet import worker_engine as worker_engines
from workspace_tool.fleet.reader import project_schemas, read_versions, read_versions_parallel
from workspace_tool.fleet.worker_engine import EngineFactory
from workspace_tool.managers import cache
from workspace_tool.naming import project_for, quote_ident, schema_for
from workspace_tool.schema.migrate import EnsureResult, action_for, migrate_expected, migrate_on
from workspace_tool.sql import lock_key, search_path_sql
from workspace_tool.urls import redact_text, url_secrets

OK, FAILED, SKIPPED = "ok", "failed", "skipped"
UPGRADE, DOWNGRADE, PROVISION = "upgrade", "downgrade", "provision"
DEFAULT_LOCK_TIMEOUT_MS = 5000
DEFAULT_RETRIES = 3
MAX_BACKOFF_S = 5.0
# After this many schemas in a row failed on a lost connection (each after its retries), the database is
# taken to be down: no new schema is started.
DEAD_AFTER = 3
MOVED_BY_ANOTHER_RUN = "already at target: moved by another run"
NOT_STARTED = "not started: "
CONNECTION_LOST = "the database connection was lost"


def default_jobs() -> int:
    """Two connections per core: while one waits on the server, the other has work."""
    return max(2, min(16, 2 * (os.cpu_count() or 1)))


def connections_needed(jobs: int) -> int:
    """The most connections a run holds at once from the engine's pool: the planning connection, held
    while ``jobs`` connections read the fleet's versions, then one per job (threads; worker processes
    open their own, outside the pool)."""
    return jobs + 1


def pool_capacity(engine: Engine) -> int | None:
    """How many connections the engine's pool can hand out at once; None when it has no limit."""
    engine_pool = engine.pool
    if isinstance(engine_pool, pool.QueuePool):  # also AsyncAdaptedQueuePool
        overflow = int(getattr(engine_pool, "_max_overflow", -1))
        return None if overflow < 0 else engine_pool.size() + overflow
    if isinstance(engine_pool, (pool.StaticPool, pool.AssertionPool)):
        return 1  # one connection, shared or checked out at a time
    return None  # NullPool, SingletonThreadPool: a new connection per checkout or per thread


def spare_jobs(engine: Engine, wanted: int) -> int:
    """``wanted``, or as many as the engine's pool serves besides one connection in use: 0 for a pool of
    one (read-only commands then do everything on that one)."""
    capacity = pool_capacity(engine)
    return wanted if capacity is None else max(0, min(wanted, capacity - 1))


def check_jobs(engine: Engine, jobs: int | None) -> int:
    """The number of jobs to run (``jobs``, else the default within what the pool allows); a
    ConfigurationError, before anything is touched, when the engine's pool can't serve them."""
    capacity = pool_capacity(engine)
    if jobs is None:
        jobs = default_jobs() if capacity is None else max(1, min(default_jobs(), capacity - 1))
    if jobs < 1:
        raise ConfigurationError("--jobs must be at least 1")
    needed = connections_needed(jobs)
    if capacity is not None and capacity < needed:
        raise ConfigurationError(
            f"{jobs} jobs need {needed} connections at once (one per job and one to plan the run) but the "
            f"engine's pool ({type(engine.pool).__name__}) gives at most {capacity}: use fewer jobs (--jobs), or "
            f"create the engine with pool_size + max_overflow >= {needed}; nothing was changed"
        )
    return jobs


# ------------------------------------------------------------------------ results
@dataclass
class SchemaResult:
    """What happened to one schema."""

    project_id: str
    schema: str
    from_revision: str | None
    to_revision: str | None
    status: str  # 'ok' (this run migrated it), 'failed', 'skipped' (this run did not change it)
    ms: float = 0.0
    error: str | None = None  # the database's error (or ours) for 'failed'
    note: str | None = None  # why it was skipped (MOVED_BY_ANOTHER_RUN, "not started: ...", ...)
    path: str = "none"  # 'fast', 'online', 'mixed', or 'none' when no SQL ran
    attempts: int = 0
    connection_lost: bool = False  # failed because its database connection was lost (after retries)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FleetReport:
    operation: str  # 'upgrade', 'downgrade', 'provision'
    target: str | None
    results: list[SchemaResult]
    elapsed_ms: float
    jobs: int
    executor: str  # 'threads', 'processes', or 'none' when nothing ran
    interrupted: bool = False
    stopped: str | None = None  # why schemas were left not started: Ctrl-C, --fail-fast, a lost database

    def not_started(self) -> list[SchemaResult]:
        return [r for r in self.results if r.status == SKIPPED and (r.note or "").startswith(NOT_STARTED)]

    def moved_by_another_run(self) -> list[SchemaResult]:
        return [r for r in self.results if r.status == SKIPPED and r.note == MOVED_BY_ANOTHER_RUN]

    def with_status(self, status: str) -> list[SchemaResult]:
        return [r for r in self.results if r.status == status]

    @property
    def failed(self) -> list[SchemaResult]:
        return self.with_status(FAILED)

    @property
    def ok(self) -> bool:
        """True if nothing failed and nothing was left unstarted."""
        return not self.failed and not self.interrupted

    def counts(self) -> dict[str, int]:
        counted = Counter(r.status for r in self.results)
        return {s: counted.get(s, 0) for s in (OK, FAILED, SKIPPED)}

    def as_dict(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "target": self.target,
            "ok": self.ok,
            "interrupted": self.interrupted,
            "stopped": self.stopped,
            "counts": self.counts(),
            "elapsed_ms": round(self.elapsed_ms, 3),
            "jobs": self.jobs,
            "executor": self.executor,
            "results": [r.as_dict() for r in self.results],
        }


@dataclass(frozen=True)
class Progress:
    """Sent to the progress callback (in the calling thread) at the start and after each schema."""

    done: int
    total: int  # schemas that need work (skipped ones are not counted)
    failed: int
    elapsed_s: float
    result: SchemaResult | None  # None for the start event
    stopped: str | None = None  # set once the run stops starting schemas because the database is gone

    @property
    def rate(self) -> float:
        """Schemas per second so far."""
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        return (self.total - self.done) / self.rate if self.rate > 0 else None


ProgressCallback = Callable[[Progress], None]


# ---------------------------------------------------------------------- selection
@dataclass(frozen=True)
class Candidate:
    """One schema as read before any work: its version and its registry row."""

    project_id: str
    schema: str
    exists: bool
    version: str | None
    registered: bool
    registry_revision: str | None = None
    registry_status: str | None = None


@dataclass(frozen=True)
class Work:
    """A schema to migrate (picklable: it crosses to worker processes)."""

    project_id: str
    schema: str
    from_revision: str | None
    exists: bool = True  # as read in the batch read: the fast lane's guard checks it is still so


def read_fleet(
    conn: Connection,
    project_ids: Sequence[str] | None,
    versions_of: Callable[[list[str]], dict[str, str | None]] | None = None,
) -> list[Candidate]:
    """Every registered project and every project-like schema (or just ``project_ids``), with versions
    read in batches (on ``conn``, or by ``versions_of``, e.g. spread over several connections).
    Read-only; works before the registry exists."""
    has_registry = conn.execute(text(f"SELECT to_regclass('{registry.REGISTRY_TABLE}') IS NOT NULL")).scalar()
    rows: dict[str, Any] = {}
    if has_registry:
        query = registry.SELECT_STATES if project_ids is None else registry.SELECT_SOME_STATES
        for row in conn.execute(query, {} if project_ids is None else {"ids": list(project_ids)}):
            rows[row.project_id] = row
    schemas = project_schemas(conn)
    if project_ids is None:
        wanted = dict.fromkeys(sorted(set(rows) | {project_for(s) for s in schemas}))
    else:
        wanted = dict.fromkeys(project_ids)
    names = {p: (rows[p].schema_name if p in rows else schema_for(p)) for p in wanted}
    with_versions = [s for s in names.values() if schemas.get(s)]
    versions = versions_of(with_versions) if versions_of else read_versions(conn, with_versions)
    return [
        Candidate(
            project_id=p,
            schema=names[p],
            exists=names[p] in schemas,
            version=versions.get(names[p]),
            registered=p in rows,
            registry_revision=rows[p].revision if p in rows else None,
            registry_status=rows[p].status if p in rows else None,
        )
        for p in wanted
    ]


def decide(
    chain: Chain, candidate: Candidate, target: str | None, operation: str, explicit: bool
) -> Work | SchemaResult:
    """Work for a schema that needs it, else its (skipped or failed) result, without touching it."""
    c = candidate

    def result(status: str, *, error: str | None = None, note: str | None = None) -> SchemaResult:
        return SchemaResult(c.project_id, c.schema, c.version, target, status, error=error, note=note)

    if not c.exists and operation != PROVISION:
        if explicit:
            return result(FAILED, error=str(WorkspaceNotFound(c.project_id, c.schema)))
        return result(SKIPPED, note="registered but its schema is missing: `workspace-tool ensure` recreates it")
    if c.exists and not c.registered and not explicit:
        return result(
            SKIPPED, note="not in the registry (orphan): name it to adopt it, or drop it with `workspace-tool drop`"
        )
    if c.version is not None and not chain.knows(c.version):
        return result(FAILED, error=str(UnknownRevision(c.schema, c.version)))
    if c.exists and c.version == target:
        if c.registered and c.registry_revision == target and c.registry_status == "ready":
            return result(SKIPPED, note="already at target")
        return Work(c.project_id, c.schema, c.version)  # brings its registry row in line
    below = chain.position(c.version) < chain.position(target)
    if operation == DOWNGRADE and below:
        return result(SKIPPED, note="already below the target: use upgrade")
    if operation != DOWNGRADE and c.exists and not below:
        return result(SKIPPED, note="ahead of the target: use downgrade")
    return Work(c.project_id, c.schema, c.version, c.exists)


# ------------------------------------------------------------------- one schema
class Migrator:
    """Migrates one schema at a time on one held connection, with lock-timeout retries."""

    def __init__(
        self,
        engine: Engine,
        chain: Chain,
        extension_schema: str,
        *,
        target: str | None,
        operation: str,
        lock_timeout_ms: int,
        retries: int,
        cancel: threading.Event | None = None,
        adopt: bool = False,
    ) -> None:
        self.engine = engine
        self.chain = chain
        self.extension_schema = extension_schema
        self.target = target
        self.operation = operation
        self.lock_timeout_ms = lock_timeout_ms
        self.retries = retries
        self.cancel = cancel or threading.Event()
        self.adopt = adopt
        self._conn: Connection | None = None

    @classmethod
    def for_run(
        cls, engine: Engine, chain: Chain, options: _Options, cancel: threading.Event | None = None
    ) -> Migrator:
        return cls(
            engine,
            chain,
            options.extension_schema,
            target=options.target,
            operation=options.operation,
            lock_timeout_ms=options.lock_timeout_ms,
            retries=options.retries,
            cancel=cancel,
            adopt=options.adopt,
        )

    def connection(self) -> Connection:
        """The held connection, with lock_timeout set for its session (once, not per transaction: one
        round trip less per schema); reset before it goes back to the engine's pool."""
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self.close()
            conn = transactions.connect(self.engine)
            conn.exec_driver_sql(f"SET lock_timeout = {int(self.lock_timeout_ms)}")
            conn.commit()
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                if not self._conn.invalidated:
                    self._conn.rollback()
                    self._conn.exec_driver_sql("RESET lock_timeout")
                    self._conn.commit()
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def run(self, work: Work) -> SchemaResult:
        """Migrate one schema. A lock timeout, or a connection lost (killed backend, server restart: its
        transaction rolled back), is retried with backoff up to ``retries`` times before it fails."""
        started = time.perf_counter()
        attempts = 0
        lost = False  # an earlier attempt lost its connection: its commit may have gone through
        while True:
            attempts += 1
            try:
                done = self._fast_lane(work) if attempts == 1 else None
                done = done or migrate_on(
                    self.connection(),
                    self.chain,
                    work.project_id,
                    work.schema,
                    self.extension_schema,
                    target=self.target,
                    allow_upgrade=self.operation != DOWNGRADE,
                    allow_downgrade=self.operation == DOWNGRADE,
                    create=self.operation == PROVISION,
                    adopt=self.adopt,
                )
            except Exception as exc:
                connection = isinstance(exc, (DBAPIError, OSError)) and is_connection_error(exc)
                if connection:
                    self.close()  # a fresh connection for the retry or the next schema
                    lost = True
                lock_timeout = isinstance(exc, LockTimeout) or sqlstate(exc) == "55P03"
                if (lock_timeout or connection) and attempts <= self.retries and not self.cancel.is_set():
                    delay = min(MAX_BACKOFF_S, 0.1 * 2 ** (attempts - 1)) * random.uniform(0.5, 1.0)
                    if not self.cancel.wait(delay):
                        continue
                message = describe(exc, work.schema, url_secrets(self.engine.url))
                if lock_timeout:
                    message = f"lock timeout ({self.lock_timeout_ms} ms, {attempts} attempts): {message}"
                elif connection:
                    message = f"database connection lost ({attempts} attempts): {message}"
                self._mark_failed(work, message)
                return SchemaResult(
                    work.project_id,
                    work.schema,
                    work.from_revision,
                    self.target,
                    FAILED,
                    ms=_ms(started),
                    error=message,
                    attempts=attempts,
                    connection_lost=connection,
                )
            # Found at the target, though the batch read saw it elsewhere: another run moved it (unless an
            # attempt of ours lost its connection at commit, which may have gone through).
            moved = done.action == "current" and work.from_revision != self.target and not lost
            return SchemaResult(
                work.project_id,
                work.schema,
                done.from_revision,
                done.to_revision,
                SKIPPED if moved else OK,
                ms=_ms(started),
                note=MOVED_BY_ANOTHER_RUN if moved else None,
                path=done.path,
                attempts=attempts,
            )

    def _fast_lane(self, work: Work) -> EnsureResult | None:
        """One batch and a commit, when the plan compiles and the schema is as read; else None."""
        if self.operation == PROVISION and work.exists:
            return None
        return migrate_expected(
            self.connection(),
            self.chain,
            work.project_id,
            work.schema,
            self.extension_schema,
            expected_exists=work.exists,
            expected_version=work.from_revision,
            target=self.target,
        )

    def _mark_failed(self, work: Work, message: str) -> None:
        """Record the failure on an existing registry row, after the rollback, in its own transaction;
        last_action names what was tried, in the words a success would have recorded."""
        tried = action_for(self.chain, work.from_revision, self.target, exists=work.exists)
        params = {"project_id": work.project_id, "action": registry.recorded_action(tried), "error": message}
        with contextlib.suppress(Exception):
            conn = self.connection()
            with conn.begin():
                conn.execute(registry.MARK_FAILED, params)


def describe(exc: BaseException, schema: str | None = None, secrets: Sequence[str] = ()) -> str:
    """The database's error in one line (message plus DETAIL/HINT), or ours; no password (nor ``secrets``)."""
    if isinstance(exc, WorkspaceError) and not isinstance(exc, LockTimeout):
        return str(exc)
    orig = getattr(exc, "orig", None)
    if orig is not None or isinstance(exc, DBAPIError):
        lines = [line.strip() for line in str(orig or exc).splitlines() if line.strip()]
        kept = lines[:1] + [line for line in lines[1:] if line.startswith(("DETAIL:", "HINT:"))]
        return redact_text(" ".join(" ".join(line.split()) for line in kept), *secrets)
    if isinstance(exc, OSError):
        return str(translate(exc, schema, secrets))
    return redact_text(f"{type(exc).__name__}: {first_line(exc)}", *secrets)


# ------------------------------------------------------------------------ running
def upgrade(
    engine: Engine,
    chain: Chain,
    project_ids: Sequence[str] | None = None,
    *,
    target: str = "head",
    jobs: int | None = None,
    fail_fast: bool = False,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
    retries: int = DEFAULT_RETRIES,
    progress: ProgressCallback | None = None,
    executor: str = "auto",
    adopt: bool = False,
    engine_factory: EngineFactory | None = None,
) -> FleetReport:
    """Bring every registered project (``project_ids=None``) or the named ones to ``target``.
    ``adopt=True`` also runs the chain into schemas that hold relations but no alembic_version
    (otherwise refused: UnmanagedSchema)."""
    return run(
        engine,
        chain,
        UPGRADE,
        project_ids,
        target=target,
        jobs=jobs,
        fail_fast=fail_fast,
        lock_timeout_ms=lock_timeout_ms,
        retries=retries,
        progress=progress,
        executor=executor,
        adopt=adopt,
        engine_factory=engine_factory,
    )


def downgrade(
    engine: Engine,
    chain: Chain,
    project_ids: Sequence[str] | None = None,
    *,
    target: str,
    jobs: int | None = None,
    fail_fast: bool = False,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
    retries: int = DEFAULT_RETRIES,
    progress: ProgressCallback | None = None,
    executor: str = "auto",
    engine_factory: EngineFactory | None = None,
) -> FleetReport:
    """Bring every registered project (or the named ones) above ``target`` down to it."""
    return run(
        engine,
        chain,
        DOWNGRADE,
        project_ids,
        target=target,
        jobs=jobs,
        fail_fast=fail_fast,
        lock_timeout_ms=lock_timeout_ms,
        retries=retries,
        progress=progress,
        executor=executor,
        engine_factory=engine_factory,
    )


def provision(
    engine: Engine,
    chain: Chain,
    project_ids: Sequence[str],
    *,
    target: str = "head",
    jobs: int | None = None,
    progress: ProgressCallback | None = None,
    adopt: bool = False,
) -> FleetReport:
    """Create (or bring up to ``target``) many named projects in parallel (``adopt``: see upgrade)."""
    return run(engine, chain, PROVISION, project_ids, target=target, jobs=jobs, progress=progress, adopt=adopt)


def run(
    engine: Engine,
    chain: Chain,
    operation: str,
    project_ids: Sequence[str] | None,
    *,
    target: str,
    jobs: int | None = None,
    fail_fast: bool = False,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
    retries: int = DEFAULT_RETRIES,
    progress: ProgressCallback | None = None,
    executor: str = "auto",
    adopt: bool = False,
    engine_factory: EngineFactory | None = None,
) -> FleetReport:
    """The fleet operation behind upgrade, downgrade and provision. ``executor="processes"`` builds each
    worker's engine with ``engine_factory`` or from the engine's URL (see worker_engine)."""
    started = time.perf_counter()
    ids = _validate(project_ids)
    if retries < 0 or lock_timeout_ms < 1:
        raise ConfigurationError("--lock-timeout must be positive and --retries not negative")
    jobs = check_jobs(engine, jobs)
    if executor not in ("auto", "threads", "processes"):
        raise ConfigurationError(f"unknown executor {executor!r}: auto, threads or processes")
    # Measured (see benchmarks/fleet_upgrade.py and the README): threads win even for online plans at the
    # sizes tried, since spawning a worker costs seconds and Alembic's share of each schema is small;
    # processes are there for long online revisions on machines with idle cores.
    pooled_kind = "threads" if executor == "auto" else executor
    worker_engine = worker_engines.for_workers(engine, engine_factory) if pooled_kind == "processes" else None
    resolved = chain.resolve(target)
    try:
        with transactions.connect(engine) as conn:
            extension_schema = registry.bootstrap(conn)  # the registry's own chain first, serially
            cache.set_bootstrapped(cache.database_key(engine.url, chain.config_path), extension_schema)
            with conn.begin():
                candidates = read_fleet(conn, ids, lambda names: read_versions_parallel(engine, names, jobs))
    except (DBAPIError, OSError) as exc:
        raise translate_for(engine.url, exc) from exc

    decided = [decide(chain, c, resolved, operation, ids is not None) for c in candidates]
    finished = [d for d in decided if isinstance(d, SchemaResult)]
    work = [d for d in decided if isinstance(d, Work)]
    # a schema touched by a run is re-read by the next ensure, whatever happened to it
    cache.invalidate(cache.database_key(engine.url, chain.config_path), [w.project_id for w in work])

    kind = "none"
    interrupted = False
    stopped: str | None = None
    if work:
        workers = min(jobs, len(work))
        kind = pooled_kind
        options = _Options(
            operation, resolved, lock_timeout_ms, retries, fail_fast, extension_schema, adopt, worker_engine
        )
        pooled = _run_processes if kind == "processes" else _run_threads
        tracker = _Tracker(len(work), progress, started)
        results, interrupted = pooled(engine, chain, work, workers, options, tracker)
        not_started = {w.project_id for w in work} - {r.project_id for r in results}
        if not_started:
            stopped = "interrupted" if interrupted else tracker.stopped or "--fail-fast stopped after a failure"
            results += [
                SchemaResult(w.project_id, w.schema, w.from_revision, resolved, SKIPPED, note=NOT_STARTED + stopped)
                for w in work
                if w.project_id in not_started
            ]
        finished += results
        cache.invalidate(cache.database_key(engine.url, chain.config_path), [w.project_id for w in work])
    if not interrupted:  # what `check` compares schemas with, if not stored yet for this chain
        reference.store_if_missing(engine, chain, lock_timeout_ms)
    order = {c.project_id: i for i, c in enumerate(candidates)}
    finished.sort(key=lambda r: order[r.project_id])
    return FleetReport(operation, resolved, finished, _ms(started), jobs, kind, interrupted, stopped)


def _validate(project_ids: Sequence[str] | None) -> list[str] | None:
    if project_ids is None:
        return None
    for project_id in project_ids:  # every id is checked before any SQL is sent
        schema_for(project_id)
    return list(dict.fromkeys(project_ids))


@dataclass(frozen=True)
class _Options:
    operation: str
    target: str | None
    lock_timeout_ms: int
    retries: int
    fail_fast: bool
    extension_schema: str
    adopt: bool = False
    worker_engine: EngineFactory | None = None  # processes: builds each worker's engine


class _ConnectionWatch:
    """Counts schemas that failed in a row on a lost connection, across workers; DEAD_AFTER of them in a
    row mean the database is gone. Any other result (the server answered) resets the count."""

    def __init__(self, limit: int = DEAD_AFTER) -> None:
        self.limit = limit
        self.dead = False
        self._in_a_row = 0
        self._lock = threading.Lock()

    def record(self, result: SchemaResult) -> bool:
        """Count one finished schema; True once the database is taken to be gone."""
        with self._lock:
            self._in_a_row = self._in_a_row + 1 if result.connection_lost else 0
            self.dead = self.dead or self._in_a_row >= self.limit
            return self.dead


@dataclass
class _Tracker:
    """Counts results and feeds the progress callback, in the calling thread."""

    total: int
    callback: ProgressCallback | None
    started: float
    done: int = 0
    failed: int = 0
    results: list[SchemaResult] = field(default_factory=list)
    watch: _ConnectionWatch = field(default_factory=_ConnectionWatch)
    stopped: str | None = None  # why no new schema is started (the database is gone), once known

    def __post_init__(self) -> None:
        self._emit(None)

    def add(self, result: SchemaResult) -> None:
        """Count a result the watch has already seen (workers record theirs before handing them over)."""
        self.results.append(result)
        self.done += 1
        self.failed += result.status == FAILED
        if self.watch.dead and self.stopped is None:
            self.stopped = f"{CONNECTION_LOST}, {self.watch.limit} schemas in a row failed on it"
        self._emit(result)

    def _emit(self, result: SchemaResult | None) -> None:
        if self.callback is not None:
            elapsed = time.perf_counter() - self.started
            self.callback(Progress(self.done, self.total, self.failed, elapsed, result, self.stopped))


def _run_threads(
    engine: Engine, chain: Chain, work: list[Work], workers: int, options: _Options, tracker: _Tracker
) -> tuple[list[SchemaResult], bool]:
    """A thread per connection; the calling thread collects results and reports progress."""
    tasks: queue.SimpleQueue[Work] = queue.SimpleQueue()
    for item in work:
        tasks.put(item)
    results: queue.SimpleQueue[SchemaResult | BaseException | None] = queue.SimpleQueue()
    stop = threading.Event()  # no new schema is started once set
    cancel = threading.Event()  # interrupted: pending retries give up too

    def worker() -> None:
        migrator = Migrator.for_run(engine, chain, options, cancel)
        try:
            while not stop.is_set():
                try:
                    item = tasks.get_nowait()
                except queue.Empty:
                    break
                result = migrator.run(item)
                if options.fail_fast and result.status == FAILED:
                    stop.set()  # before this worker (or another) takes the next schema
                if tracker.watch.record(result):
                    stop.set()  # the database is gone: start nothing more,
                    cancel.set()  # and let pending retries give up
                results.put(result)
        except BaseException as exc:  # a bug, not a schema's failure: stop everything and re-raise it
            results.put(exc)
        finally:
            migrator.close()
            results.put(None)

    threads = [threading.Thread(target=worker, name=f"workspace-fleet-{i}") for i in range(workers)]
    for thread in threads:
        thread.start()
    running, interrupted = len(threads), False
    crash: BaseException | None = None
    try:
        while running:
            try:
                message = results.get(timeout=0.2)
            except queue.Empty:
                continue
            if message is None:
                running -= 1
            elif isinstance(message, BaseException):
                crash = crash or message
                stop.set()
            else:
                tracker.add(message)
                if options.fail_fast and message.status == FAILED:
                    stop.set()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stop.set()
        if interrupted:
            cancel.set()
        for thread in threads:
            thread.join()  # running transactions finish (or roll back) first
        while True:  # results that arrived while stopping
            try:
                message = results.get_nowait()
            except queue.Empty:
                break
            if isinstance(message, SchemaResult):
                tracker.results.append(message)
    if crash is not None:
        raise crash
    return tracker.results, interrupted


# ---------------------------------------------------------------- process pool
_PROCESS_MIGRATOR: Migrator | None = None


def _process_init(config_path: str, options: _Options) -> None:
    """Runs in each spawned worker: its own engine, chain (compiled there once) and connection."""
    global _PROCESS_MIGRATOR
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; running transactions finish
    assert options.worker_engine is not None
    engine = options.worker_engine()
    migrator = Migrator.for_run(engine, Chain.load(config_path), options)
    _PROCESS_MIGRATOR = migrator

    def close() -> None:
        migrator.close()
        engine.dispose()

    multiprocessing.util.Finalize(None, close, exitpriority=10)


def _process_run(item: Work) -> SchemaResult:
    assert _PROCESS_MIGRATOR is not None
    return _PROCESS_MIGRATOR.run(item)


def _run_processes(
    engine: Engine, chain: Chain, work: list[Work], workers: int, options: _Options, tracker: _Tracker
) -> tuple[list[SchemaResult], bool]:
    """Spawned processes, each with one connection; at most two schemas queued per worker, so stopping
    (fail-fast, Ctrl-C) leaves little to cancel."""
    pending: Iterator[Work] = iter(work)
    in_flight: set[Future[SchemaResult]] = set()
    interrupted = stopping = False
    context = multiprocessing.get_context("spawn")
    executor = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_process_init,
        initargs=(str(chain.config_path), options),
    )
    try:
        while True:
            while not stopping and len(in_flight) < 2 * workers:
                item = next(pending, None)
                if item is None:
                    break
                in_flight.add(executor.submit(_process_run, item))
            if not in_flight:
                break
            try:
                done, in_flight = wait(in_flight, timeout=0.2, return_when=FIRST_COMPLETED)
                for future in done:
                    result = future.result()
                    dead = tracker.watch.record(result)
                    tracker.add(result)
                    if dead and not stopping:  # the database is gone: what is queued is not started
                        in_flight = _cancel_queued(in_flight)
                    stopping = stopping or dead or (options.fail_fast and result.status == FAILED)
            except KeyboardInterrupt:
                interrupted = stopping = True
                in_flight = _cancel_queued(in_flight)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        for future in in_flight:
            finished = future.done() and not future.cancelled() and future.exception() is None
            if finished and future.result() not in tracker.results:
                tracker.results.append(future.result())
    return tracker.results, interrupted


def _cancel_queued(in_flight: set[Future[SchemaResult]]) -> set[Future[SchemaResult]]:
    """Cancel the futures no worker has started; the running ones are kept."""
    for future in in_flight:
        future.cancel()
    return {f for f in in_flight if not f.cancelled()}


# -------------------------------------------------------------------------- --sql
@dataclass(frozen=True)
class SchemaSQL:
    """The SQL one schema's migration would send, or why it needs none."""

    project_id: str
    schema: str
    from_revision: str | None
    to_revision: str | None
    path: str
    sql: str | None
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sql(
    engine: Engine,
    chain: Chain,
    project_ids: Sequence[str] | None = None,
    *,
    target: str = "head",
    operation: str = UPGRADE,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
) -> list[SchemaSQL]:
    """Per schema, the SQL ``upgrade``/``downgrade`` would run, with its search_path and lock. Read-only:
    nothing is created or changed, not even the registry."""
    ids = _validate(project_ids)
    resolved = chain.resolve(target)
    try:
        with transactions.connect(engine) as conn, conn.begin():
            extension_schema = conn.execute(registry.PROBE).one().ext_schema or DEFAULT_EXTENSION_SCHEMA
            candidates = read_fleet(conn, ids)
            conn.rollback()
    except (DBAPIError, OSError) as exc:
        raise translate_for(engine.url, exc) from exc
    scripts = []
    for candidate in candidates:
        decided = decide(chain, candidate, resolved, operation, ids is not None)
        if isinstance(decided, SchemaResult):
            scripts.append(
                SchemaSQL(
                    decided.project_id,
                    decided.schema,
                    decided.from_revision,
                    resolved,
                    "none",
                    None,
                    decided.note or decided.error,
                )
            )
            continue
        plan = chain.plan(decided.from_revision, resolved)
        scripts.append(
            SchemaSQL(
                decided.project_id,
                decided.schema,
                decided.from_revision,
                resolved,
                plan.path,
                render(chain, decided, resolved, extension_schema, lock_timeout_ms, create=not candidate.exists),
            )
        )
    return scripts


def render(
    chain: Chain, work: Work, target: str | None, extension_schema: str, lock_timeout_ms: int, *, create: bool
) -> str:
    """One schema's transaction as a script a DBA can read (or run with psql)."""
    plan = chain.plan(work.from_revision, target)
    lines = [
        f"-- {work.schema} (project {work.project_id}): {work.from_revision or 'base'} -> {target or 'base'} "
        f"[{plan.path}]",
        "BEGIN;",
        f"SET LOCAL lock_timeout = '{int(lock_timeout_ms)}ms';",
        f"SELECT pg_advisory_xact_lock(hashtextextended('{lock_key(work.schema)}', 0));",
    ]
    if create:
        lines.append(f"CREATE SCHEMA {quote_ident(work.schema)};")
    lines.append(search_path_sql(work.schema, extension_schema) + ";")
    for step in plan.steps:
        if step.sql is not None:
            lines.append(step.sql.strip())
            continue
        span = f"{step.from_rev or 'base'} -> {step.to_rev or 'base'}"
        try:
            rendered = chain.compile(step.from_rev, step.to_rev).strip()
        except Exception:
            lines.append(f"-- {span} runs online through Alembic; it cannot be rendered offline")
        else:
            lines.append(f"-- {span} runs online through Alembic; rendered offline for review:")
            lines.append(rendered)
    lines.append(
        f"-- and the registry row of {work.project_id} in {registry.REGISTRY_TABLE}: "
        f"revision {target or 'base'}, status ready"
    )
    lines.append("COMMIT;")
    return "\n".join(lines) + "\n"


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
