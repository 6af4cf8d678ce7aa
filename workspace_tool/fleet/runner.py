"""A fleet run, start to end, for any Operation: bootstrap the registry, read the fleet (one batched read),
decide per schema (``Operation.decide``), migrate what needs it in parallel, report; and ``sql``, which
renders each schema's transaction instead of running it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypedDict

from sqlalchemy import Engine
from typing_extensions import Unpack

from workspace_tool import reference, registry, transactions
from workspace_tool.chain import Chain
from workspace_tool.database import DEFAULT_EXTENSION_SCHEMA
from workspace_tool.dberrors import translating
from workspace_tool.errors import ConfigurationError
from workspace_tool.fleet import worker_engine as worker_engines
from workspace_tool.fleet.executors import Tracker, run_processes, run_threads
from workspace_tool.fleet.migrator import RunOptions
from workspace_tool.fleet.reader import read_fleet, read_versions_parallel
from workspace_tool.fleet.report import NOT_STARTED, FleetReport, ProgressCallback, SchemaResult, ms_since
from workspace_tool.fleet.worker_engine import EngineFactory
from workspace_tool.jobs import check_jobs
from workspace_tool.managers import cache
from workspace_tool.naming import schema_for
from workspace_tool.schema.migrate import Migration, Sending, fast_lane, planned
from workspace_tool.schema.operation import DOWNGRADE, PROVISION, UPGRADE, Operation, Verdict, Work
from workspace_tool.schema.transaction import Expected, SchemaTransaction
from workspace_tool.vocabulary import Path, Status

DEFAULT_LOCK_TIMEOUT_MS = 5000
DEFAULT_RETRIES = 3
EXECUTORS = ("auto", "threads", "processes")


class FleetOptions(TypedDict, total=False):
    """The options of ``run`` (and ``upgrade``, ``downgrade``, ``provision``), with run's defaults."""

    jobs: int | None  # parallel connections (default: 2 per core, within the engine's pool)
    fail_fast: bool  # start no schema after the first failure
    lock_timeout_ms: int  # the longest wait for any lock in a schema's transaction, then retry
    retries: int  # retries with backoff of a lock timeout or a lost connection
    progress: ProgressCallback | None  # called in the calling thread at the start and after each schema
    executor: str  # 'auto' (threads), 'threads' or 'processes'
    adopt: bool  # run the chain into named schemas that hold relations but no alembic_version
    engine_factory: EngineFactory | None  # processes: builds each worker's engine (see worker_engine)


def upgrade(
    engine: Engine, chain: Chain, project_ids: Sequence[str] | None = None, *, target: str = "head",
    **options: Unpack[FleetOptions],
) -> FleetReport:  # fmt: skip
    """Bring every registered project (``project_ids=None``) or the named ones up to ``target``."""
    return run(engine, chain, UPGRADE, project_ids, target=target, **options)


def downgrade(
    engine: Engine, chain: Chain, project_ids: Sequence[str] | None = None, *, target: str,
    **options: Unpack[FleetOptions],
) -> FleetReport:  # fmt: skip
    """Bring every registered project (or the named ones) above ``target`` down to it."""
    return run(engine, chain, DOWNGRADE, project_ids, target=target, **options)


def provision(
    engine: Engine, chain: Chain, project_ids: Sequence[str], *, target: str = "head",
    **options: Unpack[FleetOptions],
) -> FleetReport:  # fmt: skip
    """Create (or bring up to ``target``) many named projects in parallel."""
    return run(engine, chain, PROVISION, project_ids, target=target, **options)


def run(
    engine: Engine,
    chain: Chain,
    operation: Operation,
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
    """The fleet run behind upgrade, downgrade and provision; see FleetOptions for the options."""
    started = time.perf_counter()
    ids = _validate(project_ids)
    if retries < 0 or lock_timeout_ms < 1:
        raise ConfigurationError("--lock-timeout must be positive and --retries not negative")
    jobs = check_jobs(engine, jobs)
    if executor not in EXECUTORS:
        raise ConfigurationError(f"unknown executor {executor!r}: auto, threads or processes")
    # Measured (see benchmarks/fleet_upgrade.py and the README): threads win even for online plans at the
    # sizes tried, since spawning a worker costs seconds and Alembic's share of each schema is small;
    # processes are there for long online revisions on machines with idle cores.
    kind = "threads" if executor == "auto" else executor
    worker_engine = worker_engines.for_workers(engine, engine_factory) if kind == "processes" else None
    resolved = chain.resolve(target)
    cache_key = cache.database_key(engine.url, chain.config_path)
    with translating(engine.url), transactions.connect(engine) as conn:
        database = registry.bootstrap(conn)  # the registry's own chain first, serially
        cache.set_bootstrapped(cache_key, database)
        with conn.begin():
            records = read_fleet(conn, ids, lambda names: read_versions_parallel(engine, names, jobs))

    decided = [(r, operation.decide(chain, r, resolved, named=ids is not None)) for r in records]
    finished = [
        _left_alone(r.project_id, r.schema, r.version, resolved, v) for r, v in decided if isinstance(v, Verdict)
    ]
    work = [v for _, v in decided if isinstance(v, Work)]
    # a schema touched by a run is re-read by the next ensure, whatever happened to it
    cache.invalidate(cache_key, [w.project_id for w in work])

    interrupted = False
    stopped: str | None = None
    if not work:
        kind = "none"
    else:
        options = RunOptions(
            operation,
            resolved,
            lock_timeout_ms,
            retries,
            fail_fast,
            database.extension_schema,
            adopt,
            worker_engine,
            citus=database.citus,
        )
        pooled = run_processes if kind == "processes" else run_threads
        tracker = Tracker(len(work), progress, started)
        results, interrupted = pooled(engine, chain, work, min(jobs, len(work)), options, tracker)
        not_started = {w.project_id for w in work} - {r.project_id for r in results}
        if not_started:
            stopped = "interrupted" if interrupted else tracker.stopped or "--fail-fast stopped after a failure"
            results += [
                SchemaResult(
                    w.project_id, w.schema, w.from_revision, resolved, Status.SKIPPED, note=NOT_STARTED + stopped
                )
                for w in work
                if w.project_id in not_started
            ]
        finished += results
        cache.invalidate(cache_key, [w.project_id for w in work])
    if not interrupted:  # what `check` compares schemas with, if not stored yet for this chain
        reference.store_if_missing(engine, chain, lock_timeout_ms)
    order = {r.project_id: i for i, r in enumerate(records)}
    finished.sort(key=lambda r: order[r.project_id])
    return FleetReport(operation.name, resolved, finished, ms_since(started), jobs, kind, interrupted, stopped)


def _validate(project_ids: Sequence[str] | None) -> list[str] | None:
    if project_ids is None:
        return None
    for project_id in project_ids:  # every id is checked before any SQL is sent
        schema_for(project_id)
    return list(dict.fromkeys(project_ids))


def _left_alone(
    project_id: str, schema: str, version: str | None, target: str | None, verdict: Verdict
) -> SchemaResult:
    return SchemaResult(project_id, schema, version, target, verdict.status, error=verdict.error, note=verdict.note)


# -------------------------------------------------------------------------- --sql
@dataclass(frozen=True)
class SchemaSQL:
    """The SQL one schema's migration would send, or why it needs none."""

    project_id: str
    schema: str
    from_revision: str | None
    to_revision: str | None
    path: Path
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
    operation: Operation = UPGRADE,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
) -> list[SchemaSQL]:
    """Per schema, the transaction ``upgrade``/``downgrade`` would send (``SchemaTransaction.render``):
    the one round trip the fleet sends when the range compiles, which psql can run as it is. Read-only:
    nothing is created or changed, not even the registry."""
    ids = _validate(project_ids)
    resolved = chain.resolve(target)
    with translating(engine.url), transactions.connect(engine) as conn, conn.begin():
        probe = conn.execute(registry.PROBE).one()
        records = read_fleet(conn, ids)
        conn.rollback()
    extension_schema = probe.ext_schema or DEFAULT_EXTENSION_SCHEMA
    how = Sending(chain, extension_schema, lock_timeout_ms=lock_timeout_ms, citus=bool(probe.citus))
    scripts = []
    for record in records:
        decided = operation.decide(chain, record, resolved, named=ids is not None)
        if isinstance(decided, Verdict):
            note = decided.note or decided.error
            scripts.append(SchemaSQL(record.project_id, record.schema, record.version, resolved, Path.NONE, None, note))
            continue
        transaction = _transaction(how, decided, operation, resolved)
        plan = chain.plan(decided.from_revision, resolved)
        header = (
            f"{decided.schema} (project {decided.project_id}): {decided.from_revision or 'base'} -> "
            f"{resolved or 'base'} [{plan.path}]"
        )
        scripts.append(
            SchemaSQL(
                decided.project_id,
                decided.schema,
                decided.from_revision,
                resolved,
                plan.path,
                transaction.render(chain, header),
            )
        )
    return scripts


def _transaction(how: Sending, work: Work, operation: Operation, target: str | None) -> SchemaTransaction:
    """The transaction a run would send for ``work``: its fast lane when there is one, else the careful
    path's (which reads the schema under its lock first, so its registry row is unguarded)."""
    what = Migration(work.project_id, work.schema, target, operation)
    transaction = fast_lane(how, what, Expected(work.exists, work.from_revision))
    return transaction or planned(how, what, work.from_revision, exists=work.exists)
