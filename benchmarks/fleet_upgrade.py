"""Benchmark: `upgrade --all` through the library against the raw floor, and the no-op run.

Provisions N project schemas (default 2,000) from a copy of the main chain in a temporary directory,
adds one revision (a column and an index on an existing table), then, repeated and interleaved:

* floor:   the same compiled SQL sent by psycopg2 from the same number of connections, one transaction
           per schema (BEGIN; SET LOCAL search_path; the revision's SQL; COMMIT), nothing else;
* library: ``fleet.upgrade`` (registry first, batched version reads, per-schema lock, lock_timeout,
           registry row in the same transaction);
* no-op:   ``fleet.upgrade`` again, with every schema already at head.

Schemas are brought back down with ``fleet.downgrade`` between measurements (not timed). Works in a
database it creates and drops on the embedded server (or $WORKSPACE_TOOL_BENCH_DATABASE_URL's server).

    python benchmarks/fleet_upgrade.py [--schemas 2000] [--jobs 4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workspace_tool import fleet  # noqa: E402
from workspace_tool.chain import Chain  # noqa: E402
from workspace_tool.sql import search_path_sql  # noqa: E402
from workspace_tool.urls import sync_url  # noqa: E402

EXTRA_REVISION = '''"""bench: a column and an index on an existing table

Revision ID: 0005_bench
Revises: 0004_alter_existing
"""
import sqlalchemy as sa
from alembic import op

revision = "0005_bench"
down_revision = "0004_alter_existing"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("code_files", sa.Column("bench_priority", sa.Integer))
    op.create_index("ix_code_files_bench_priority", "code_files", ["bench_priority"])


def downgrade() -> None:
    op.drop_index("ix_code_files_bench_priority", table_name="code_files")
    op.drop_column("code_files", "bench_priority")
'''
BASE_REV, NEW_REV = "0004_alter_existing", "0005_bench"


def server_url() -> sa.URL:
    configured = os.environ.get("WORKSPACE_TOOL_BENCH_DATABASE_URL")
    if configured:
        return sync_url(configured)
    from workspace_tool import embedded

    return sync_url(embedded.start())


def chain_copy(directory: Path) -> Path:
    shutil.copy(ROOT / "alembic.ini", directory / "alembic.ini")
    shutil.copytree(ROOT / "migrations", directory / "migrations", ignore=shutil.ignore_patterns("__pycache__"))
    (directory / "migrations" / "versions" / "0005_bench.py").write_text(EXTRA_REVISION)
    return directory / "alembic.ini"


def run_transactions(engine: sa.Engine, transactions: list[list[str]], jobs: int) -> list[float]:
    """Send each transaction's statements (one round trip each), then COMMIT, from ``jobs`` held psycopg2
    connections, nothing else: the floor. Returns each transaction's seconds."""
    work = list(reversed(transactions))
    lock = threading.Lock()
    times: list[float] = []
    errors: list[BaseException] = []

    def worker() -> None:
        raw = engine.raw_connection()
        try:
            conn = raw.driver_connection
            assert conn is not None
            cursor = conn.cursor()
            while True:
                with lock:
                    if not work or errors:
                        return
                    statements = work.pop()
                started = time.perf_counter()
                for statement in statements:
                    cursor.execute(statement)
                conn.commit()
                with lock:
                    times.append(time.perf_counter() - started)
        except BaseException as exc:
            errors.append(exc)
        finally:
            raw.close()

    in_threads(worker, jobs, errors)
    return times


def in_threads(worker: Callable[[], None], jobs: int, errors: list[BaseException]) -> None:
    """``worker`` in ``jobs`` threads at once, until all are done; then the first error any recorded."""
    threads = [threading.Thread(target=worker) for _ in range(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def raw_floor(engine: sa.Engine, schemas: list[str], sql: str, extension_schema: str, jobs: int) -> float:
    """Seconds to send ``sql`` into every schema from ``jobs`` psycopg2 connections, one transaction each."""
    transactions = [[search_path_sql(schema, extension_schema) + ";\n" + sql] for schema in schemas]
    started = time.perf_counter()
    run_transactions(engine, transactions, jobs)
    return time.perf_counter() - started


def checkpoint(engine: sa.Engine) -> None:
    """Flush dirty pages before a timed run, so the checkpointer's I/O lands in no measurement (measured on
    this machine: without it the same run varied 2x from one repetition to the next)."""
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("CHECKPOINT"))
    except sa.exc.DBAPIError:  # not a superuser: measure without it
        pass


def timed(fn: Callable[[], fleet.FleetReport]) -> tuple[float, fleet.FleetReport]:
    started = time.perf_counter()
    report = fn()
    return time.perf_counter() - started, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemas", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=fleet.default_jobs())
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="300 schemas, one repetition")
    args = parser.parse_args(argv)
    if args.quick:
        args.schemas, args.repeat = min(args.schemas, 300), 1
    n, jobs = args.schemas, args.jobs

    server = server_url()
    name = f"wst_bench_fleet_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine = sa.create_engine(server.set(database=name), pool_size=jobs + 2, max_overflow=4)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            chain = Chain.load(chain_copy(Path(tmp)))
            ids = [f"bench-{i:05d}" for i in range(n)]
            t, report = timed(lambda: fleet.provision(engine, chain, ids, target=BASE_REV, jobs=jobs))
            assert report.ok, report.failed[:3]
            print(f"provisioned {n} schemas at {BASE_REV} in {t:.1f}s ({t / n * 1000:.2f} ms/schema, {jobs} jobs)")
            sql = chain.plan(BASE_REV, NEW_REV).sql
            assert sql is not None, "the bench revision must compile"
            with engine.connect() as conn:
                extension_schema = str(conn.execute(sa.text("SELECT 'workspace_extensions'")).scalar())
            schemas = [r.schema for r in report.results]

            floors, libs, noops, medians = [], [], [], []
            for i in range(args.repeat):
                checkpoint(engine)
                floors.append(raw_floor(engine, schemas, sql, extension_schema, jobs))
                fleet.downgrade(engine, chain, target=BASE_REV, jobs=jobs)
                checkpoint(engine)
                t, up = timed(lambda: fleet.upgrade(engine, chain, jobs=jobs))
                assert up.ok and up.counts()["ok"] == n, up.counts()
                libs.append(t)
                medians.append(statistics.median(r.ms for r in up.results))
                t, noop = timed(lambda: fleet.upgrade(engine, chain, jobs=jobs))
                assert noop.counts()["skipped"] == n, noop.counts()
                noops.append(t)
                fleet.downgrade(engine, chain, target=BASE_REV, jobs=jobs)
                checkpoint(engine)
                print(
                    f"run {i + 1}: floor {floors[-1]:.2f}s  library {libs[-1]:.2f}s ({up.executor})  "
                    f"no-op {noops[-1]:.2f}s",
                    flush=True,
                )

            floor, lib, noop_s = statistics.median(floors), statistics.median(libs), statistics.median(noops)
            print(f"\nupgrade --all {BASE_REV} -> {NEW_REV}: {n} schemas, {jobs} connections, medians of {args.repeat}")
            print(f"  raw floor (psycopg2)    {floor:7.2f}s   {floor / n * 1000:6.3f} ms/schema")
            pair_ratio = statistics.median(lb / fl for lb, fl in zip(libs, floors, strict=True))
            print(f"  library fleet.upgrade   {lib:7.2f}s   {lib / n * 1000:6.3f} ms/schema   ratio {lib / floor:.2f}x")
            print(f"    median of the per-run ratios (each run's library / its own floor): {pair_ratio:.2f}x")
            print(f"    per-schema transaction (median inside the run): {statistics.median(medians):.2f} ms")
            print(f"  no-op run               {noop_s:7.2f}s   {noop_s / n * 1000:6.3f} ms/schema")
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(
                sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"), {"d": name}
            )
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
