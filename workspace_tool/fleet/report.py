"""What a fleet run reports: a result per schema, the run's report, and progress events."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from workspace_tool.chain.plan import Path
from workspace_tool.fleet.outcome import Outcome, SkipReason, StopReason
from workspace_tool.fleet.stages import Order, Stage


@dataclass
class SchemaResult:
    """What happened to one schema."""

    project_id: str
    schema: str
    from_revision: str | None
    to_revision: str | None
    status: Outcome  # OK (this run migrated it), FAILED, SKIPPED (this run did not change it), GONE (dropped)
    ms: float = 0.0
    error: str | None = None  # the database's error (or ours) for 'failed'
    note: str | None = None  # why it was skipped, in words: rendered from ``reason`` when not given
    path: Path = Path.NONE  # which path its migration took (NONE: no SQL ran)
    attempts: int = 0
    connection_lost: bool = False  # failed because its database connection was lost (after retries)
    stage: Stage | None = None  # the stage it ran in, or was left in (None: the run had nothing to do to it)
    reason: SkipReason | None = None  # why it was skipped (or is gone): what ``note`` says, as a code

    def __post_init__(self) -> None:
        if self.note is None and self.reason is not None:
            self.note = self.reason.note()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StageReport:
    """One stage of a run: how many schemas it had to migrate, whether it started, what stopped it."""

    stage: Stage
    schemas: int
    ran: bool  # False: not started (after a failed canary, with canary_only, a stop in an earlier stage), or empty
    max_failures: int | None = None  # that many failures stop it starting schemas (None: no number does)
    already_at_target: int = 0  # the canary named by id: its schemas found at the target already (not in it)


@dataclass
class FleetReport:
    operation: str  # the Operation's name: 'upgrade', 'downgrade', 'provision'
    target: str | None
    results: list[SchemaResult]
    elapsed_ms: float
    jobs: int
    executor: str  # 'threads', or 'none' when nothing ran
    interrupted: bool = False
    stopped: str | None = None  # why schemas were left not started, in words (rendered from a Stop)
    stages: list[StageReport] = field(default_factory=list)  # in the order they run (or would have)
    stopped_stage: Stage | None = None  # the stage the run stopped in, with ``stopped``
    selection: dict[str, Any] | None = None  # Selection.as_dict() of the run's selection, if it had one
    not_selected: int = 0  # projects read but left out by the selection (they are not in ``results``)
    order: Order | None = None  # the order schemas started in (None: as read)
    seed: int | None = None  # the random order's seed (given, or drawn and reported here)
    pool: dict[str, Any] | None = None  # upgrade --all to head: the warm pool's spares replaced (spares.follow)
    stop_reason: StopReason | None = None  # what ``stopped`` says, as a code
    migrates: bool = True  # False: the operation ran a task instead (drop, exec): ``target`` is not moved to
    # why the one flush of the run's commits failed (RunSpec.commit 'async': CommitsUnconfirmed is raised with
    # this report): the schemas it reports ok may have been undone by a server crash; None: confirmed, or none
    unconfirmed: str | None = None

    def with_reason(self, reason: SkipReason) -> list[SchemaResult]:
        return [r for r in self.results if r.reason == reason]

    def not_started(self) -> list[SchemaResult]:
        return self.with_reason(SkipReason.NOT_STARTED)

    def moved_by_another_run(self) -> list[SchemaResult]:
        return self.with_reason(SkipReason.MOVED_BY_ANOTHER_RUN)

    def with_status(self, status: Outcome) -> list[SchemaResult]:
        return [r for r in self.results if r.status == status]

    @property
    def failed(self) -> list[SchemaResult]:
        return self.with_status(Outcome.FAILED)

    @property
    def gone(self) -> list[SchemaResult]:
        """Projects dropped (by the application) between the run's read and their turn: not failures."""
        return self.with_status(Outcome.GONE)

    @property
    def ok(self) -> bool:
        """True if nothing failed, nothing was left unstarted (a project gone is neither) and the run's commits
        were confirmed on disk."""
        return not self.failed and not self.interrupted and self.unconfirmed is None

    def counts(self, stage: Stage | None = None) -> dict[str, int]:
        """Schemas by status: all of them, or those of one stage."""
        counted = Counter(r.status for r in self.results if stage is None or r.stage == stage)
        return {str(s): counted.get(s, 0) for s in Outcome}

    def staged(self) -> bool:
        """True if the run had a canary stage."""
        return any(s.stage == Stage.CANARY for s in self.stages)

    def as_dict(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "target": self.target,
            "ok": self.ok,
            "interrupted": self.interrupted,
            "stopped": self.stopped,
            "stop_reason": self.stop_reason,
            "counts": self.counts(),
            "elapsed_ms": round(self.elapsed_ms, 3),
            "jobs": self.jobs,
            "executor": self.executor,
            "stages": [{**asdict(s), "counts": self.counts(s.stage)} for s in self.stages],
            "stopped_stage": self.stopped_stage,
            "selection": self.selection,
            "not_selected": self.not_selected,
            "order": self.order,
            "seed": self.seed,
            "pool": self.pool,
            "unconfirmed": self.unconfirmed,
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
    stopped: str | None = None  # set once the run stops starting schemas (failures, a lost database)
    canary: int = 0  # how many of ``total`` are in the canary stage, migrated first
    stop_reason: StopReason | None = None  # what ``stopped`` says, as a code

    @property
    def rate(self) -> float:
        """Schemas per second so far."""
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        return (self.total - self.done) / self.rate if self.rate > 0 else None


ProgressCallback = Callable[[Progress], None]


def ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
