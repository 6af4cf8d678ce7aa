"""Many project schemas at once: upgrade, downgrade or provision a fleet, in parallel, one schema per
transaction, with a result per schema.

The order of a run (runner.py):

1. The registry's own chain is migrated first, serially (``registry.bootstrap``).
2. The fleet is read once (registry/inventory.py: registry rows, project schemas, their versions in batches spread
   over the run's connections); the operation decides per schema (``Operation.decide``): schemas already
   at the target with a matching registry row are skipped without any Alembic.
3. The rest run in parallel (executors.py), one Migrator per connection (migrator.py): each schema's
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
serialised (under ``chain.ALEMBIC_LOCK``). ``executor="processes"`` runs schemas in spawned processes
instead, each with its own chain and connection (the caller's main module must be import-safe). An Engine
can't cross to a process, so each worker builds its own: with ``engine_factory`` when given (a picklable
callable returning an Engine), else from the engine's URL, isolation level and execution options; an engine
with settings those don't carry (``connect_args``, a ``creator``, event listeners) is refused before
anything runs (``worker_engine.for_workers``). Measured on 2 shared cores, threads were faster for online
plans too (a process costs seconds to start), so "auto" means threads.

A new fleet command is an Operation (workspace_tool.schema.operation) run through ``run``, plus its click
command in workspace_tool/cli.
"""

from workspace_tool.fleet.executors import DEAD_AFTER
from workspace_tool.fleet.report import (
    CONNECTION_LOST,
    DROPPED_SINCE_READ,
    MOVED_BY_ANOTHER_RUN,
    NOT_STARTED,
    FleetReport,
    Progress,
    ProgressCallback,
    SchemaResult,
    StageReport,
)
from workspace_tool.fleet.runner import (
    DEFAULT_LOCK_TIMEOUT_MS,
    DEFAULT_RETRIES,
    FleetOptions,
    SchemaSQL,
    downgrade,
    provision,
    run,
    sql,
    upgrade,
)
from workspace_tool.fleet.stages import Selection
from workspace_tool.jobs import check_jobs, connections_needed, default_jobs, pool_capacity, spare_jobs
from workspace_tool.schema.operation import DOWNGRADE, PROVISION, UPGRADE, Operation
from workspace_tool.vocabulary import Order, Stage, State, Status

OK, FAILED, SKIPPED, GONE = Status.OK, Status.FAILED, Status.SKIPPED, Status.GONE

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
    "Progress",
    "ProgressCallback",
    "SchemaResult",
    "SchemaSQL",
    "Selection",
    "Stage",
    "StageReport",
    "State",
    "Status",
    "check_jobs",
    "connections_needed",
    "default_jobs",
    "downgrade",
    "pool_capacity",
    "provision",
    "run",
    "spare_jobs",
    "sql",
    "upgrade",
]
