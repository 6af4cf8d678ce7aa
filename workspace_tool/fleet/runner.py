"""A fleet run, start to end, for any Operation: bootstrap the registry, read the fleet (one batched read),
decide per schema (``Operation.decide``), migrate what needs it in parallel, report; and ``sql``, which
renders each schema's transaction instead of running it."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypedDict

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from typing_extensions import Unpack

from workspace_tool import pool as warm_pool
from workspace_tool import recycling, reference, registry, transactions
from workspace_tool.chain import Chain
from workspace_tool.dberrors import first_line, translating
from workspace_tool.errors import ConfigurationError, WorkspaceError
from workspace_tool.flavor import pooler
from workspace_tool.fleet import worker_engine as worker_engines
from workspace_tool.fleet.executors import StopRule, Tracker, run_processes, run_threads
from workspace_tool.fleet.migrator import RunOptions
from workspace_tool.fleet.reader import read_fleet, read_versions_parallel, versions_reader
from workspace_tool.fleet.report import (
    NOT_STARTED,
    FleetReport,
    ProgressCallback,
    SchemaResult,
    StageReport,
    ms_since,
)
from workspace_tool.fleet.stages import CANARY_ONLY, Selection, StagePlan, Staging
from workspace_tool.fleet.worker_engine import EngineFactory
from workspace_tool.jobs import check_jobs, spare_jobs
from workspace_tool.managers import cache
from workspace_tool.naming import schema_for
from workspace_tool.schema.migrate import Migration, Sending, fast_lane, planned
from workspace_tool.schema.operation import DOWNGRADE, PROVISION, UPGRADE, Operation, Verdict, Work
from workspace_tool.schema.plan import Expected, SchemaPlan
from workspace_tool.vocabulary import Path, Stage, Status

DEFAULT_LOCK_TIMEOUT_MS = 5000
DEFAULT_RETRIES = 3
EXECUTORS = ("auto", "threads", "processes")
log = logging.getLogger(__name__)


class FleetOptions(TypedDict, total=False):
    """The options of ``run`` (and ``upgrade``, ``downgrade``, ``provision``), with run's defaults."""

    jobs: int | None  # parallel connections (default: 2 per core, within the engine's pool)
    fail_fast: bool  # start no schema after the first failure (max_failures=1; not with max_failures)
    max_failures: int | str | None  # N, or "P%" of the main stage's schemas: start none once that many failed
    lock_timeout_ms: int  # the longest wait for any lock in a schema's transaction, then retry
    retries: int  # retries with backoff of a lock timeout or a lost connection
    progress: ProgressCallback | None  # called in the calling thread at the start and after each schema
    executor: str  # 'auto' (threads), 'threads' or 'processes'
    adopt: bool  # run the chain into named schemas that hold relations but no alembic_version
    engine_factory: EngineFactory | None  # processes: builds each worker's engine (see worker_engine)
    selection: Selection | None  # only the projects it selects (by state, glob on ids, ids); see stages.py
    canary: int | str | None  # N, or "P%" of the schemas to migrate: migrated first, the rest if none failed
    canary_ids: Collection[str] | None  # the canary by project id instead (those of them still to migrate)
    canary_only: bool  # stop after the canary: the main stage is left for the next run
    order: str | None  # 'name' or 'random' (shuffled by ``seed``): the order schemas start in; None: as read
    seed: int | None  # the random order's seed (None: one is drawn, and reported in FleetReport.seed)
    pool: bool | None  # claim missing schemas from the warm pool (default: workspace_pool_size > 0)
    direct_engine: Engine | None  # what needs a session (a revision outside a transaction) goes there
    recycle_after: int | None  # schemas a connection touches before a new one replaces it (0: never; default:
    # workspace_recycle_after in alembic.ini, else recycling.DEFAULT_RECYCLE_AFTER)


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
    max_failures: int | str | None = None,
    selection: Selection | None = None,
    canary: int | str | None = None,
    canary_ids: Collection[str] | None = None,
    canary_only: bool = False,
    order: str | None = None,
    seed: int | None = None,
    pool: bool | None = None,
    direct_engine: Engine | None = None,
    recycle_after: int | None = None,
) -> FleetReport:
    """The fleet run behind upgrade, downgrade and provision; see FleetOptions for the options.
    ``upgrade --all`` to head also replaces the warm pool's spares left behind (``pool.follow``).

    ``direct_engine``: an engine that bypasses the connection pooler ``engine`` may go through (see
    workspace_tool.flavor.pooler). The schemas whose range holds a revision that runs outside a transaction are
    migrated on its connections (and the reference for `check` is built there); without it, such a run
    through a pooler is refused (SessionRequired) before any schema is migrated."""
    started = time.perf_counter()
    ids = _validate(project_ids)
    staging = Staging.parse(
        fail_fast=fail_fast,
        max_failures=max_failures,
        canary=canary,
        canary_ids=canary_ids,
        canary_only=canary_only,
        order=order,
        seed=seed,
    )
    if retries < 0 or lock_timeout_ms < 1:
        raise ConfigurationError("--lock-timeout must be positive and --retries not negative")
    jobs = check_jobs(engine, jobs)
    if executor not in EXECUTORS:
        raise ConfigurationError(f"unknown executor {executor!r}: auto, threads or processes")
    # Measured (see benchmarks/fleet_upgrade.py and the README): threads win even for online plans at the
    # sizes tried, since spawning a worker costs seconds and Alembic's share of each schema is small;
    # processes are there for long online revisions on machines with idle cores.
    kind = "threads" if executor == "auto" else executor
    use_pool = warm_pool.configured_size(chain) > 0 if pool is None else pool
    recycle = recycling.resolve(chain, recycle_after)
    worker_engine = worker_engines.for_workers(engine, engine_factory) if kind == "processes" else None
    if direct_engine is not None:
        pooler.trust(direct_engine)
    direct_worker = (
        worker_engines.for_workers(direct_engine, None) if kind == "processes" and direct_engine is not None else None
    )
    resolved = chain.resolve(target)
    cache_key = cache.database_key(engine.url, chain.config_path)
    with translating(engine.url), transactions.connect(engine) as conn:
        flavor = registry.bootstrap(conn)  # the registry's own chain first, serially
        cache.set_bootstrapped(cache_key, flavor)
        with conn.begin():
            read = read_fleet(conn, ids, lambda names: read_versions_parallel(engine, names, jobs, recycle))
    staging.check_known(read)
    records = read if selection is None else selection.apply(read, chain)
    # a selection that selects nothing: nothing is done, not even to the warm pool or the head model
    idle = selection is not None and not records

    decided = [(r, operation.decide(chain, r, resolved, named=ids is not None)) for r in records]
    finished = [
        _left_alone(r.project_id, r.schema, r.version, resolved, v) for r, v in decided if isinstance(v, Verdict)
    ]
    work = [v for _, v in decided if isinstance(v, Work)]
    migrates = operation.task is None  # a task (drop, exec) runs no revision and builds no reference
    if migrates and direct_engine is None and (outside := _needing_a_session(chain, work, resolved)):
        pooler.require_session_engine(engine, outside)  # refused here, through a pooler: nothing migrated
    log.info(
        "%s to %s: %d schema(s) to migrate, on %d connection(s) (%s); %d left alone",
        operation.name,
        resolved or "base",
        len(work),
        min(jobs, len(work)),
        kind,
        len(finished),
    )
    # a schema touched by a run is re-read by the next ensure, whatever happened to it
    cache.invalidate(cache_key, [w.project_id for w in work])

    plan = staging.plan(work)
    staged = _Staged(plan, staging)
    if not work:
        kind = "none"
    else:
        options = RunOptions(
            operation,
            resolved,
            lock_timeout_ms,
            retries,
            flavor,
            adopt,
            worker_engine,
            use_pool,
            direct_worker_engine=direct_worker,
            recycle_after=recycle,
        )
        pooled = run_processes if kind == "processes" else run_threads
        tracker = Tracker(len(work), progress, started, canary=len(plan.canary or ()))
        for stage, items in plan.stages():
            limit, reason = staging.limit(stage, len(items))
            tracker.stage, tracker.rule = stage, StopRule(limit, reason)
            if items:
                staged.ran.add(stage)
                workers = min(jobs, len(items))
                _, staged.interrupted = pooled(engine, chain, items, workers, options, tracker, direct_engine)
            if staged.stop(stage, tracker.rule.reason):
                break
        finished += tracker.results + staged.not_started(tracker.results, resolved)
        cache.invalidate(cache_key, [w.project_id for w in work])
    interrupted = staged.interrupted
    if migrates and not interrupted and not idle:  # what `check` compares schemas with, if not stored yet
        reference.store_if_missing(direct_engine or engine, chain, lock_timeout_ms)
    follow = operation is UPGRADE and ids is None and not interrupted and not idle
    spares = _follow_pool(engine, chain, jobs) if follow else None
    position = {r.project_id: i for i, r in enumerate(records)}
    finished.sort(key=lambda r: position[r.project_id])
    return FleetReport(
        operation.name,
        resolved,
        finished,
        ms_since(started),
        jobs,
        kind,
        interrupted,
        staged.stopped,
        stages=staged.reports(),
        stopped_stage=staged.stopped_stage,
        selection=None if selection is None else selection.as_dict(),
        not_selected=len(read) - len(records),
        order=staging.order,
        seed=plan.seed,
        pool=spares,
    )


class _Staged:
    """A run's stages as they go: which ran, and where and why the run stopped."""

    def __init__(self, plan: StagePlan, staging: Staging) -> None:
        self.plan = plan
        self.staging = staging
        self.ran: set[Stage] = set()
        self.interrupted = False
        self.stopped: str | None = None
        self.stopped_stage: Stage | None = None

    def stop(self, stage: Stage, reason: str | None) -> bool:
        """After ``stage``: whether the run stops here (Ctrl-C, its stop rule, --canary-only), and why."""
        if self.interrupted:
            reason = "interrupted"
        elif reason is None and stage == Stage.CANARY and self.staging.canary_only:
            reason = CANARY_ONLY
        if reason is not None:
            self.stopped, self.stopped_stage = reason, stage
        return reason is not None

    def not_started(self, results: list[SchemaResult], target: str | None) -> list[SchemaResult]:
        """A result for each schema of the plan that was not started: skipped, with why. The run's
        ``stopped`` is cleared when every schema was started (a stop on the last one left nothing out)."""
        started = {r.project_id for r in results}
        left = [
            SchemaResult(
                w.project_id,
                w.schema,
                w.from_revision,
                target,
                Status.SKIPPED,
                note=NOT_STARTED + (self.stopped or ""),
                stage=stage,
            )
            for stage, items in self.plan.stages()
            for w in items
            if w.project_id not in started
        ]
        if not left:
            self.stopped = self.stopped_stage = None
        return left

    def reports(self) -> list[StageReport]:
        return [
            StageReport(
                stage,
                len(items),
                stage in self.ran,
                self.staging.limit(stage, len(items))[0],
                self.plan.canary_at_target if stage == Stage.CANARY else 0,
            )
            for stage, items in self.plan.stages()
        ]


def _follow_pool(engine: Engine, chain: Chain, jobs: int) -> dict[str, Any] | None:
    """After `upgrade --all` (to head or not: spares are only ever at head): replace the spares behind
    head. Best effort: a failure (a chain the pool refuses, a role without CREATE) is logged and reported,
    never the run's failure."""
    try:
        followed = warm_pool.follow(engine, chain, jobs)
    except (WorkspaceError, DBAPIError, OSError) as exc:
        log.warning("could not replace the warm pool's spares: %s", first_line(exc))
        return {"error": first_line(exc)}
    return None if followed is None else followed.as_dict()


def _needing_a_session(chain: Chain, work: list[Work], target: str | None) -> str | None:
    """What in the run needs a session, for a refusal: the revisions that run outside a transaction, and
    how many schemas' ranges hold one; None when none does."""
    revisions: list[str] = []
    schemas = 0
    for item in work:
        found = chain.outside_transaction(chain.plan(item.from_revision, target).steps)
        schemas += bool(found)
        revisions += found
    if not schemas:
        return None
    names = ", ".join(dict.fromkeys(revisions))
    return f"revision {names} ({schemas} schema{'s' if schemas > 1 else ''} to migrate)"


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
    selection: Selection | None = None,
) -> list[SchemaSQL]:
    """Per schema, the transaction ``upgrade``/``downgrade`` would send (``SchemaPlan.render``):
    the one round trip the fleet sends when the range compiles, which psql can run as it is. Read-only:
    nothing is created or changed, not even the registry. Only the schemas ``selection`` selects (stages
    don't change what a schema's transaction is: every schema a run could start is rendered)."""
    ids = _validate(project_ids)
    resolved = chain.resolve(target)
    # the versions on another connection of the pool when it has one to spare, replaced as a run's are
    versions_of = versions_reader(engine, spare_jobs(engine, 1), recycling.configured(chain))
    with translating(engine.url), transactions.connect(engine) as conn, conn.begin():
        probe = conn.execute(registry.PROBE).one()
        records = read_fleet(conn, ids, versions_of)
        conn.rollback()
    if selection is not None:
        records = selection.apply(records, chain)
    how = Sending(chain, registry.probed(probe), lock_timeout_ms=lock_timeout_ms)
    scripts = []
    for record in records:
        decided = operation.decide(chain, record, resolved, named=ids is not None)
        if isinstance(decided, Verdict):
            note = decided.note or decided.error
            scripts.append(SchemaSQL(record.project_id, record.schema, record.version, resolved, Path.NONE, None, note))
            continue
        schema_plan = _plan(how, decided, operation, resolved)
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
                schema_plan.render(chain, header),
            )
        )
    return scripts


def _plan(how: Sending, work: Work, operation: Operation, target: str | None) -> SchemaPlan:
    """The plan a run would send for ``work``: its fast lane when there is one, else the careful path's
    (which reads the schema under its lock first, so its registry row is unguarded)."""
    what = Migration(work.project_id, work.schema, target, operation)
    lane = fast_lane(how, what, Expected(work.exists, work.from_revision))
    return lane or planned(how, what, work.from_revision, exists=work.exists)
