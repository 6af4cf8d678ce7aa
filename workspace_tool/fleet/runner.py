"""A fleet run, start to end, for any Operation and the RunSpec it is given (spec.py): bootstrap the registry,
read the fleet (one batched read), decide per schema (decide.py), migrate what needs it in parallel, report;
and ``render_sql``, which renders each schema's transaction instead of running it. ``upgrade``,
``downgrade``, ``provision`` and ``sql`` are the keyword API: each builds a RunSpec and runs it."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, cast

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import QueuePool
from typing_extensions import Unpack

from workspace_tool import recycling, reference, registry, transactions
from workspace_tool import spares as warm_pool
from workspace_tool.chain import Chain
from workspace_tool.chain.plan import Path
from workspace_tool.dberrors import first_line, translating
from workspace_tool.errors import CommitsUnconfirmed, ConfigurationError, UnmanagedSchema, WorkspaceError
from workspace_tool.flavor import pooler
from workspace_tool.fleet.decide import Verdict, decide
from workspace_tool.fleet.executors import StopRule, Tracker, run_threads
from workspace_tool.fleet.migrator import RunOptions
from workspace_tool.fleet.outcome import Outcome, SkipReason, Stop, StopReason
from workspace_tool.fleet.report import FleetReport, ProgressCallback, SchemaResult, StageReport, ms_since
from workspace_tool.fleet.spec import DEFAULT_LOCK_TIMEOUT_MS, RunSpec, SpecOptions
from workspace_tool.fleet.stages import Selection, Stage, StagePlan, Staging
from workspace_tool.jobs import check_jobs, connections_needed, pool_capacity, spare_jobs
from workspace_tool.registry import known as cache
from workspace_tool.registry.inventory import read_fleet, read_versions_parallel, versions_reader
from workspace_tool.schema.migrate import Migration, Sending, fast_lane, planned
from workspace_tool.schema.operation import DOWNGRADE, PROVISION, UPGRADE, Operation, Work
from workspace_tool.schema.plan import Expected, SchemaPlan
from workspace_tool.schema.state import check_managed, read_state

EXECUTORS = ("auto", "threads")
log = logging.getLogger(__name__)


class FleetOptions(SpecOptions, total=False):
    """The options of ``upgrade``, ``downgrade`` and ``provision``: a RunSpec's (SpecOptions), and what a run
    is given beside its spec."""

    progress: ProgressCallback | None  # in the calling thread: at the start, then per schema (every DRAIN_S)
    direct_engine: Engine | None  # what needs a session (a revision outside a transaction) goes there
    executor: str  # 'auto' or 'threads' (the same: schemas run in threads, one connection each)


def upgrade(
    engine: Engine, chain: Chain, project_ids: Sequence[str] | None = None, *, target: str = "head",
    **options: Unpack[FleetOptions],
) -> FleetReport:  # fmt: skip
    """Bring every registered project (``project_ids=None``) or the named ones up to ``target``."""
    return _run(engine, chain, UPGRADE, project_ids, target, options)


def downgrade(
    engine: Engine, chain: Chain, project_ids: Sequence[str] | None = None, *, target: str,
    **options: Unpack[FleetOptions],
) -> FleetReport:  # fmt: skip
    """Bring every registered project (or the named ones) above ``target`` down to it."""
    return _run(engine, chain, DOWNGRADE, project_ids, target, options)


def provision(
    engine: Engine, chain: Chain, project_ids: Sequence[str], *, target: str = "head",
    **options: Unpack[FleetOptions],
) -> FleetReport:  # fmt: skip
    """Create (or bring up to ``target``) many named projects in parallel."""
    return _run(engine, chain, PROVISION, project_ids, target, options)


def _run(
    engine: Engine,
    chain: Chain,
    operation: Operation,
    project_ids: Sequence[str] | None,
    target: str,
    options: FleetOptions,
) -> FleetReport:
    """The keyword API as a RunSpec, and the run."""
    executor = options.get("executor", "auto")
    if executor == "processes":
        raise ConfigurationError(
            "executor='processes' was removed (threads were faster in every benchmark): leave executor out"
        )
    if executor not in EXECUTORS:
        raise ConfigurationError(f"unknown executor {executor!r}: 'auto' or 'threads' (they are the same)")
    given = {k: v for k, v in options.items() if k not in _BESIDE_THE_SPEC}
    spec = RunSpec.build(project_ids, target=target, **cast(SpecOptions, given))
    return run(
        engine, chain, operation, spec, progress=options.get("progress"), direct_engine=options.get("direct_engine")
    )


_BESIDE_THE_SPEC = ("progress", "direct_engine", "executor")


def run(
    engine: Engine,
    chain: Chain,
    operation: Operation,
    spec: RunSpec,
    *,
    progress: ProgressCallback | None = None,
    direct_engine: Engine | None = None,
) -> FleetReport:
    """The fleet run of ``operation`` as ``spec`` says (see workspace_tool.fleet.spec).
    ``upgrade --all`` to head also replaces the warm pool's spares left behind (``spares.follow``). When the
    one flush of a run's commits fails (RunSpec.commit 'async'), CommitsUnconfirmed is raised with the report.

    ``direct_engine``: an engine that bypasses the connection pooler ``engine`` may go through (see
    workspace_tool.flavor.pooler). The schemas whose range holds a revision that runs outside a transaction are
    migrated on its connections (and the reference for `check` is built there); without it, such a run
    through a pooler is refused (SessionRequired) before any schema is migrated."""
    started = time.perf_counter()
    if spec.dry_run:
        raise ConfigurationError("a dry-run RunSpec changes nothing: render its SQL with fleet.render_sql")
    ids, staging, selection = spec.project_ids, spec.staging, spec.selection
    jobs = check_jobs(engine, spec.jobs)
    use_pool = warm_pool.configured_size(chain) > 0 if spec.pool is None else spec.pool
    recycle = recycling.resolve(chain, spec.recycle_after)
    if direct_engine is not None:
        pooler.trust(direct_engine)
    resolved = chain.resolve(spec.target)
    cache_key = cache.database_key(engine.url, chain.config_path)
    with translating(engine.url), transactions.connect(engine) as conn:
        flavor = registry.bootstrap(conn, chain.namespace)  # the registry's own chain first, serially
        cache.set_bootstrapped(cache_key, flavor)
        with _opened_ahead(engine, _ahead(engine, jobs, ids)), conn.begin():
            selects_by_version = selection is not None and selection.needs_versions
            read = read_fleet(
                conn,
                ids,
                lambda names: read_versions_parallel(engine, names, jobs, recycle),
                chain.namespace,
                with_versions=operation.reads_versions or selects_by_version,
                trusted=None if selects_by_version else _guarded_by_the_run(operation, chain, resolved),
                registry_checked=True,  # by the bootstrap, just now
            )
    staging.check_known(read)
    records = read if selection is None else selection.apply(read, chain)
    # a selection that selects nothing: nothing is done, not even to the warm pool or the head model
    idle = selection is not None and not records

    named = spec.named
    decided = [(r, decide(operation, chain, r, resolved, named=named)) for r in records]
    finished = [
        _left_alone(r.project_id, r.schema, r.version, resolved, v) for r, v in decided if isinstance(v, Verdict)
    ]
    work = [v for _, v in decided if isinstance(v, Work)]
    if operation.migrates and direct_engine is None and (outside := _needing_a_session(chain, work, resolved)):
        pooler.require_session_engine(engine, outside)  # refused here, through a pooler: nothing migrated
    log.info(
        "%s to %s: %d schema(s) to migrate, on %d connection(s) (threads); %d left alone",
        operation.name,
        resolved or "base",
        len(work),
        min(jobs, len(work)),
        len(finished),
    )
    # a schema touched by a run is re-read by the next ensure, whatever happened to it
    cache.invalidate(cache_key, [w.project_id for w in work])

    plan = staging.plan(work)
    staged = _Staged(plan, staging)
    unconfirmed: str | None = None
    if work:
        options = RunOptions(
            operation,
            resolved,
            spec.lock_timeout_ms,
            spec.retries,
            flavor,
            spec.adopt,
            use_pool,
            recycle,
            async_commit=spec.async_commit and operation.migrates,
        )
        tracker = Tracker(len(work), progress, started, canary=len(plan.canary or ()))
        finished += staged.run(engine, chain, options, jobs, tracker, direct_engine)
        cache.invalidate(cache_key, [w.project_id for w in work])
        if options.async_commit:
            unconfirmed = _flush_commits(engine, finished)
    interrupted = staged.interrupted
    # what `check` compares with, if not stored yet; not when the server could not confirm the run's commits
    if operation.migrates and not interrupted and not idle and unconfirmed is None:
        reference.store_if_missing(direct_engine or engine, chain, spec.lock_timeout_ms, registry_checked=True)
    follow = operation is UPGRADE and ids is None and not interrupted and not idle and unconfirmed is None
    spares = _follow_pool(engine, chain, jobs) if follow else None
    position = {r.project_id: i for i, r in enumerate(records)}
    finished.sort(key=lambda r: position[r.project_id])
    report = FleetReport(
        operation.name,
        resolved,
        finished,
        ms_since(started),
        jobs,
        "threads" if work else "none",
        interrupted,
        None if staged.stopped is None else str(staged.stopped),
        stages=staged.reports(),
        stopped_stage=staged.stopped_stage,
        selection=None if selection is None else selection.as_dict(),
        not_selected=len(read) - len(records),
        order=staging.order,
        seed=plan.seed,
        pool=spares,
        stop_reason=None if staged.stopped is None else staged.stopped.reason,
        migrates=operation.migrates,
        unconfirmed=unconfirmed,
    )
    if unconfirmed is not None:
        raise CommitsUnconfirmed(len(report.with_status(Outcome.OK)), unconfirmed, report)
    return report


class _Staged:
    """A run's stages as they go: which ran, and where and why the run stopped."""

    def __init__(self, plan: StagePlan, staging: Staging) -> None:
        self.plan = plan
        self.staging = staging
        self.ran: set[Stage] = set()
        self.interrupted = False
        self.stopped: Stop | None = None
        self.stopped_stage: Stage | None = None

    def run(
        self, engine: Engine, chain: Chain, options: RunOptions, jobs: int, tracker: Tracker, direct: Engine | None
    ) -> list[SchemaResult]:
        """Run the stages in turn, each on up to ``jobs`` threads, until one stops the run: the results,
        with one for each schema left not started."""
        for stage, items in self.plan.stages():
            limit, stop = self.staging.limit(stage, len(items))
            tracker.stage, tracker.rule = stage, StopRule(limit, stop)
            if items:
                self.ran.add(stage)
                workers = min(jobs, len(items))
                _, self.interrupted = run_threads(engine, chain, items, workers, options, tracker, direct)
            if self.stop(stage, tracker.rule.stop):
                break
        return tracker.results + self.not_started(tracker.results, options.target)

    def stop(self, stage: Stage, stop: Stop | None) -> bool:
        """After ``stage``: whether the run stops here (Ctrl-C, its stop rule, --canary-only), and why."""
        if self.interrupted:
            stop = Stop(StopReason.INTERRUPTED)
        elif stop is None and stage == Stage.CANARY and self.staging.canary_only:
            stop = Stop(StopReason.CANARY_ONLY)
        if stop is not None:
            self.stopped, self.stopped_stage = stop, stage
        return stop is not None

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
                Outcome.SKIPPED,
                note=SkipReason.NOT_STARTED.note(None if self.stopped is None else str(self.stopped)),
                stage=stage,
                reason=SkipReason.NOT_STARTED,
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


def _flush_commits(engine: Engine, results: list[SchemaResult]) -> str | None:
    """After a run whose schemas committed without waiting for their flush (RunSpec.commit 'async'), wait
    once for them all, before anything reports them done (Ctrl-C'd runs included). Returns why the server
    could not confirm it (the run then raises CommitsUnconfirmed with its report), or None."""
    if not any(r.status is Outcome.OK for r in results):
        return None
    try:
        with translating(engine.url):
            transactions.flush_commits(engine)
    except WorkspaceError as exc:
        return str(exc)
    return None


def _follow_pool(engine: Engine, chain: Chain, jobs: int) -> dict[str, Any] | None:
    """After `upgrade --all` (to head or not: spares are only ever at head): replace the spares behind
    head. Best effort: a failure (a chain the pool refuses, a role without CREATE) is logged and reported,
    never the run's failure."""
    try:
        followed = warm_pool.follow(engine, chain, jobs, registry_checked=True)  # the run's bootstrap did
    except (WorkspaceError, DBAPIError, OSError) as exc:
        log.warning("could not replace the warm pool's spares: %s", first_line(exc))
        return {"error": first_line(exc)}
    return None if followed is None else followed.as_dict()


def _ahead(engine: Engine, jobs: int, ids: Sequence[str] | None) -> int:
    """How many of the workers' connections to open while the fleet is read (``_opened_ahead``): one per
    worker but the first (it takes the reading connection), as many as the engine's queue pool keeps and
    can hand out on top of what the read itself may hold (the reading connection and ``jobs`` reading
    versions), so that nothing ever waits for the pool; none for a pool that keeps no connection."""
    pool = engine.pool
    capacity = pool_capacity(engine)
    if not isinstance(pool, QueuePool) or capacity is None:
        return 0
    workers = jobs if ids is None else min(jobs, len(ids))
    return max(0, min(workers - 1, capacity - connections_needed(jobs), pool.size() - 1))


@contextlib.contextmanager
def _opened_ahead(engine: Engine, count: int) -> Iterator[None]:
    """While the body runs (the fleet read), ``count`` new connections of the engine's pool are opened, one
    thread each, and put back in the pool once the body is done: the workers then start on open
    connections instead of each waiting for a new backend (a few ms each, measured on the critical path
    before their first schemas). Best effort: a connection that fails to open is left to the worker that
    needs one, which says what is wrong."""
    if count < 1:
        yield
        return

    def open_one() -> Connection | None:
        try:
            return engine.connect()
        except Exception:
            return None

    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="workspace-fleet-open") as opener:
        opening = [opener.submit(open_one) for _ in range(count)]
        try:
            yield
        finally:
            for conn in [f.result() for f in opening]:
                if conn is not None:
                    conn.close()  # back to the pool, open


def _guarded_by_the_run(operation: Operation, chain: Chain, target: str | None) -> Callable[[str], bool] | None:
    """The registry revisions a run may take at their word instead of reading the schema's version
    (``read_fleet``'s ``trusted``): those it would migrate from, with its fast lane, whose guard checks the
    version in the schema's own transaction and falls back to the careful path (which reads it under the
    schema's lock) when it differs. Never a revision the run would leave alone (at or beyond the target, or
    unknown): a stale row must not make a run skip a schema, so those are read."""
    if not operation.migrates or not operation.fast_lane(Work("", "", None, True)):
        return None

    @functools.cache  # a fleet's rows hold a few revisions, each asked once
    def trusted(revision: str) -> bool:
        return (
            revision != target
            and chain.knows(revision)
            and operation.refusal(chain, revision, target, exists=True) is None
        )

    return trusted


def _needing_a_session(chain: Chain, work: list[Work], target: str | None) -> str | None:
    """What in the run needs a session, for a refusal: the revisions that run outside a transaction, and
    how many schemas' ranges hold one; None when none does."""
    revisions: list[str] = []
    schemas = 0
    by_start: dict[str | None, list[str]] = {}  # a fleet's schemas start from a few revisions: each asked once
    for item in work:
        found = by_start.get(item.from_revision)
        if found is None:
            found = by_start[item.from_revision] = chain.outside_transaction(
                chain.plan(item.from_revision, target).steps
            )
        schemas += bool(found)
        revisions += found
    if not schemas:
        return None
    names = ", ".join(dict.fromkeys(revisions))
    return f"revision {names} ({schemas} schema{'s' if schemas > 1 else ''} to migrate)"


def _left_alone(
    project_id: str, schema: str, version: str | None, target: str | None, verdict: Verdict
) -> SchemaResult:
    return SchemaResult(project_id, schema, version, target, verdict.status, error=verdict.error, reason=verdict.reason)


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
    note: str | None = None  # why it needs none, in words (the reason's, or the error)
    reason: SkipReason | None = None

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
    """``render_sql`` of the RunSpec these options make."""
    ids = None if project_ids is None else tuple(project_ids)
    spec = RunSpec(target, ids, selection=selection, lock_timeout_ms=lock_timeout_ms, dry_run=True)
    return render_sql(engine, chain, operation, spec)


def render_sql(engine: Engine, chain: Chain, operation: Operation, spec: RunSpec) -> list[SchemaSQL]:
    """Per schema, the transaction ``run`` would send (``SchemaPlan.render``): the one round trip the fleet
    sends when the range compiles, which psql can run as it is. Read-only: nothing is created or changed, not
    even the registry. Only the schemas the spec's selection selects (stages don't change what a schema's
    transaction is: every schema a run could start is rendered)."""
    resolved = chain.resolve(spec.target)
    # the versions on another connection of the pool when it has one to spare, replaced as a run's are
    versions_of = versions_reader(engine, spare_jobs(engine, 1), recycling.configured(chain))
    with translating(engine.url), transactions.connect(engine) as conn, conn.begin():
        probe = conn.execute(chain.namespace.sql(registry.PROBE)).one()
        records = read_fleet(conn, spec.project_ids, versions_of, chain.namespace)
        conn.rollback()
    if spec.selection is not None:
        records = spec.selection.apply(records, chain)
    how = Sending(chain, registry.probed(probe), lock_timeout_ms=spec.lock_timeout_ms, async_commit=spec.async_commit)
    decisions = [decide(operation, chain, record, resolved, named=spec.named) for record in records]
    unmanaged = {} if spec.adopt else _unmanaged(engine, chain, [d for d in decisions if isinstance(d, Work)])
    scripts = []
    for record, decided in zip(records, decisions, strict=True):
        if record.schema in unmanaged:  # a run refuses it (without adopt): no SQL, the run's error
            scripts.append(
                SchemaSQL(record.project_id, record.schema, None, resolved, Path.NONE, None, unmanaged[record.schema])
            )
            continue
        if isinstance(decided, Verdict):
            note = decided.note or decided.error
            scripts.append(
                SchemaSQL(
                    record.project_id, record.schema, record.version, resolved, Path.NONE, None, note, decided.reason
                )
            )
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


def _unmanaged(engine: Engine, chain: Chain, work: list[Work]) -> dict[str, str]:
    """Of the schemas to migrate, those a run would refuse as not made by workspace-tool (relations, no
    alembic_version: ``check_managed``), each with its error. Asked only of existing schemas at base."""
    candidates = [w for w in work if w.exists and w.from_revision is None]
    if not candidates:
        return {}
    refused = {}
    with translating(engine.url), transactions.connect(engine) as conn, conn.begin():
        for w in candidates:
            state = read_state(conn, w.project_id, w.schema, chain.namespace)
            try:
                check_managed(conn, w.project_id, w.schema, state, adopt=False)
            except UnmanagedSchema as exc:
                refused[w.schema] = str(exc)
        conn.rollback()
    return refused


def _plan(how: Sending, work: Work, operation: Operation, target: str | None) -> SchemaPlan:
    """The plan a run would send for ``work``: its fast lane when there is one, else the careful path's
    (which reads the schema under its lock first, so its registry row is unguarded)."""
    what = Migration(work.project_id, work.schema, target, operation)
    lane = fast_lane(how, what, Expected(work.exists, work.from_revision))
    return lane or planned(how, what, work.from_revision, exists=work.exists)
