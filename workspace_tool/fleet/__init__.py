"""Many project schemas at once: upgrade, downgrade or provision a fleet, in parallel, one schema per
transaction, with a result per schema.

The order of a run (runner.py):

1. The registry's own chain is migrated first, serially (``registry.bootstrap``).
2. The fleet is read once (registry/inventory.py: registry rows, project schemas, their versions in batches spread
   over the run's connections); the run decides per schema (decide.py, by the operation's rules): schemas already
   at the target with a matching registry row are skipped without any Alembic.
3. The rest run in parallel (executors.py: threads), one Migrator per connection (migrator.py): each schema's
   transaction (``workspace_tool.schema.plan``, ``schema.send``) is sent as ONE round trip when its range compiles
   and the schema is as read (the fast lane), else the careful way (lock, read, migrate). A lock timeout
   or a lost connection is retried with backoff, then reported; a failure leaves the schema at its old
   revision and marks its registry row ``failed``. After DEAD_AFTER schemas in a row failed on a lost
   connection the database is taken to be gone: no new schema starts. A schema found already at the
   target (another run moved it since the read) is ``skipped``; one dropped since the read (the application
   drops projects while the run goes on) is ``gone``, which is not a failure.
   Staged runs (stages.py): the projects read are narrowed by a ``Selection`` (states, globs, ids); a
   canary stage (the first N, N%, or named schemas to migrate) runs first and stops the run at its first
   failure; the main stage then stops starting schemas once ``max_failures`` have failed (``fail_fast`` is
   1). Every result says its stage; the report says which stages ran, and where and why the run stopped.
4. If no reference catalog is stored for this chain, it is built and stored for `check`
   (``reference.store_if_missing``: best effort, bounded by the lock timeout).

Parallelism: a compiled plan (the normal case) is replayed without touching Alembic, so a pool of threads
with one connection each scales (psycopg2 releases the GIL while waiting on the server). A plan with online
steps runs Alembic, whose ``op``/``context`` proxies are process-global: in threads only that part is
serialised (under ``chain.ALEMBIC_LOCK``). (Worker processes were tried, and lost to threads in every
benchmark: a process costs seconds to start.)

A run's options are one ``RunSpec`` (spec.py), built once; what became of each schema, and why, are enums
(outcome.py), and the words shown are rendered from them. A new fleet command is an Operation
(workspace_tool.schema.operation) and a RunSpec run through ``run``, plus its click command in
workspace_tool/cli.
"""

from workspace_tool.fleet.executors import DEAD_AFTER
from workspace_tool.fleet.outcome import CONNECTION_LOST, NOT_STARTED, Outcome, SkipReason, Stop, StopReason
from workspace_tool.fleet.report import FleetReport, Progress, ProgressCallback, SchemaResult, StageReport
from workspace_tool.fleet.runner import (
    FleetOptions,
    SchemaSQL,
    downgrade,
    provision,
    render_sql,
    run,
    sql,
    upgrade,
)
from workspace_tool.fleet.spec import DEFAULT_LOCK_TIMEOUT_MS, DEFAULT_RETRIES, RunSpec
from workspace_tool.fleet.stages import Order, Selection, Stage
from workspace_tool.jobs import check_jobs, connections_needed, default_jobs, pool_capacity, spare_jobs
from workspace_tool.schema.operation import DOWNGRADE, PROVISION, UPGRADE, Operation
from workspace_tool.schema.state import State

Status = Outcome  # the name SchemaResult.status had before Outcome: kept for applications
OK, FAILED, SKIPPED, GONE = Outcome.OK, Outcome.FAILED, Outcome.SKIPPED, Outcome.GONE
MOVED_BY_ANOTHER_RUN = SkipReason.MOVED_BY_ANOTHER_RUN.note()
DROPPED_SINCE_READ = SkipReason.DROPPED_SINCE_READ.note()  # the note of a GONE result

__all__ = [
    "CONNECTION_LOST",
    "DEAD_AFTER",
    "DEFAULT_LOCK_TIMEOUT_MS",
    "DEFAULT_RETRIES",
    "DOWNGRADE",
    "DROPPED_SINCE_READ",
    "FAILED",
    "GONE",
    "MOVED_BY_ANOTHER_RUN",
    "NOT_STARTED",
    "OK",
    "PROVISION",
    "SKIPPED",
    "UPGRADE",
    "FleetOptions",
    "FleetReport",
    "Operation",
    "Order",
    "Outcome",
    "Progress",
    "ProgressCallback",
    "RunSpec",
    "SchemaResult",
    "SchemaSQL",
    "Selection",
    "SkipReason",
    "Stage",
    "StageReport",
    "State",
    "Status",
    "Stop",
    "StopReason",
    "check_jobs",
    "connections_needed",
    "default_jobs",
    "downgrade",
    "pool_capacity",
    "provision",
    "render_sql",
    "run",
    "spare_jobs",
    "sql",
    "upgrade",
]
