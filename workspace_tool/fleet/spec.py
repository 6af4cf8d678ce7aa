"""``RunSpec``: everything a fleet run is told, built once (by the CLI from its options, or by the library's
``upgrade``/``downgrade``/``provision`` from their keyword options), checked when built, and handed down
whole to the runner, its stages and its report. A fleet command is an ``Operation`` (what may be done to
each schema, workspace_tool.schema.operation) plus a ``RunSpec`` (which schemas, in which stages, how fast,
within which limits)::

    from workspace_tool import fleet
    from workspace_tool.fleet.spec import RunSpec
    from workspace_tool.schema.operation import Operation

    RESET = Operation("reset", upgrades=False, downgrades=True, creates=False)  # a new command's rules
    spec = RunSpec.build(
        target="base", jobs=4, canary="10%", max_failures=3, selection=fleet.Selection(match=["demo-*"])
    )
    report = fleet.run(engine, chain, RESET, spec, progress=print)
    print(report.counts(), report.stop_reason)

Bad values and bad combinations raise ConfigurationError (one line, saying what to pass instead) when the
spec is built, before any SQL is sent.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import TypedDict

from typing_extensions import Unpack

from workspace_tool.errors import ConfigurationError
from workspace_tool.fleet.stages import Selection, Staging
from workspace_tool.naming import schema_for
from workspace_tool.sql import DEFAULT_LOCK_TIMEOUT_MS as DEFAULT_LOCK_TIMEOUT_MS
from workspace_tool.transactions import COMMITS

DEFAULT_RETRIES = 3


class SpecOptions(TypedDict, total=False):
    """The keyword options ``RunSpec.build`` takes (and ``fleet.upgrade``, ``downgrade``, ``provision``)."""

    jobs: int | None  # parallel connections (default: 2 per core, within the engine's pool)
    fail_fast: bool  # start no schema after the first failure (max_failures=1; not with max_failures)
    max_failures: int | str | None  # N, or "P%" of the main stage's schemas: start none once that many failed
    lock_timeout_ms: int  # the longest wait for any lock in a schema's transaction, then retry
    retries: int  # retries with backoff of a lock timeout or a lost connection
    adopt: bool  # run the chain into named schemas that hold relations but no alembic_version
    selection: Selection | None  # only the projects it selects (by state, glob on ids, ids); see stages.py
    canary: int | str | None  # N, or "P%" of the schemas to migrate: migrated first, the rest if none failed
    canary_ids: Collection[str] | None  # the canary by project id instead (those of them still to migrate)
    canary_only: bool  # stop after the canary: the main stage is left for the next run
    order: str | None  # 'name' or 'random' (shuffled by ``seed``): the order schemas start in; None: as read
    seed: int | None  # the random order's seed (None: one is drawn, and reported in FleetReport.seed)
    pool: bool | None  # claim missing schemas from the warm pool (default: workspace_pool_size > 0)
    recycle_after: int | None  # schemas a connection touches before a new one replaces it (0: never; default:
    # workspace_recycle_after in alembic.ini, else recycling.DEFAULT_RECYCLE_AFTER)
    dry_run: bool  # render each schema's SQL (fleet.render_sql) instead of running it
    commit: str  # 'async' (default): each schema's commit doesn't wait for its WAL flush, the run waits once
    # at its end for them all; 'durable': each waits, as the server's synchronous_commit says


@dataclass(frozen=True)
class RunSpec:
    """A fleet run's options, checked (see the module's docstring). ``project_ids``: the named projects
    (deduplicated, in the order given), or None for every registered project (``--all``)."""

    target: str = "head"  # a revision, 'head' or 'base': resolved against the chain when the run starts
    project_ids: tuple[str, ...] | None = None
    selection: Selection | None = None  # narrows the projects read (states, globs, ids)
    staging: Staging = field(default_factory=Staging)  # canary, order and seed, fail-fast / max-failures
    jobs: int | None = None  # parallel connections (None: 2 per core, within the engine's pool)
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS
    retries: int = DEFAULT_RETRIES
    recycle_after: int | None = None  # None: workspace_recycle_after in alembic.ini, else the default
    adopt: bool = False
    pool: bool | None = None  # None: claim from the warm pool when workspace_pool_size > 0
    dry_run: bool = False  # render the SQL, change nothing
    commit: str = "async"  # how each schema's transaction commits: see ``async_commit``

    def __post_init__(self) -> None:
        if self.project_ids is not None:
            ids = tuple(dict.fromkeys(self.project_ids))
            for project_id in ids:  # every id is checked before any SQL is sent
                schema_for(project_id)
            object.__setattr__(self, "project_ids", ids)
        if self.retries < 0 or self.lock_timeout_ms < 1:
            raise ConfigurationError("--lock-timeout must be positive and --retries not negative")
        if self.commit not in COMMITS:
            raise ConfigurationError(f"commit={self.commit!r}: it must be async (the default) or durable")

    @property
    def async_commit(self) -> bool:
        """Whether each schema's transaction sent in one round trip (the fast lane: nearly every schema of a run
        on PostgreSQL) commits without waiting for its WAL flush (``commit='async'``, the default). The run
        then waits once, for all of them, before it returns its report (``transactions.flush_commits``): what a
        report says is done is as durable as if each commit had waited. What it risks meanwhile: a server crash
        during the run undoes the schemas whose commits were not flushed yet (each whole: the schema and its
        registry row are one transaction), which the run, failing on the crash too, never reported; a rerun
        migrates them. Anything the application committed into a migrated schema flushed its migration first
        (the WAL is flushed in order). The careful path, and Citus's round trips, commit as the server says."""
        return self.commit == "async"

    @property
    def named(self) -> bool:
        """True when the projects were named (not every registered one)."""
        return self.project_ids is not None

    @classmethod
    def build(
        cls, project_ids: Sequence[str] | None = None, *, target: str = "head", **options: Unpack[SpecOptions]
    ) -> RunSpec:
        """A RunSpec from keyword options as ``fleet.upgrade`` takes them (the stage options as values:
        ``canary="10%"``, ``order="random"``), checked."""
        unknown = set(options) - set(SpecOptions.__annotations__)
        if unknown:  # a keyword no fleet run takes: a typo must not be ignored
            raise ConfigurationError(f"unknown fleet option(s) {', '.join(sorted(unknown))}")
        staging = Staging.parse(
            fail_fast=options.get("fail_fast", False),
            max_failures=options.get("max_failures"),
            canary=options.get("canary"),
            canary_ids=options.get("canary_ids"),
            canary_only=options.get("canary_only", False),
            order=options.get("order"),
            seed=options.get("seed"),
        )
        return cls(
            target,
            None if project_ids is None else tuple(project_ids),
            selection=options.get("selection"),
            staging=staging,
            jobs=options.get("jobs"),
            lock_timeout_ms=options.get("lock_timeout_ms", DEFAULT_LOCK_TIMEOUT_MS),
            retries=options.get("retries", DEFAULT_RETRIES),
            recycle_after=options.get("recycle_after"),
            adopt=options.get("adopt", False),
            pool=options.get("pool"),
            dry_run=options.get("dry_run", False),
            commit=options.get("commit", "async"),
        )
