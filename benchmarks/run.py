"""Benchmarks of provisioning against its floor, all measured in one run (interleaved), medians and ratios.

    python benchmarks/run.py            # full sizes (10,000 existing schemas: takes a few minutes)
    python benchmarks/run.py --quick    # small sizes, about a minute
    tox -e bench -- --quick

What is measured (targets from issue 4):

* fresh ``ensure`` through the library vs the floor: the DDL of a provisioned schema (``pg_dump
  --schema-only``) replayed in one transaction with its version row and a registry row, sent as one batch
  (BEGIN ... COMMIT) on a held connection; the chain run online through Alembic is shown for reference.
  Target: library <= 1.15x floor.
* cached ``ensure`` (mean, target <= 5 us, no statement sent) and ``ensure(verify=True)`` (median, target
  <= 0.3 ms), next to a bare ``SELECT version_num`` on a held connection.
* ``asyncio.gather`` of 3 and of 16 distinct projects through ProjectWorkspaceManager vs one provisioning.
  Target: 3 in <= 2x one.
* fresh ``ensure`` on a database already holding N (10,000) project schemas vs on one holding none.
  Target <= 1.25x.
* ``upgrade --all`` over large fleets: ``benchmarks/fleet_upgrade.py`` (its ``main()``), if present.
* ``check`` (drift detection) over a fleet of 10,000 schemas at head, interleaved with a no-op ``upgrade
  --all`` and ``status`` over the same fleet (issue 14). Targets: check <= 10 s and <= 3x the no-op upgrade;
  status <= 1 s.
* start-up (issue 13): ``workspace-tool --help`` vs ``alembic --help`` as processes, interleaved (target:
  <= 1x); then, over a fleet of 2,000 schemas at head, interleaved: ``workspace-tool upgrade --all`` as a
  whole process vs the library call ``fleet.upgrade(engine, chain)`` in this process (target: <= 1.5x),
  with a fresh engine each time (it connects, as the process does) and on a warm one, and for reference
  the floor of any such process (``python -c "import sqlalchemy, psycopg2"``) and the library called from
  a script process.
* server memory (issue 19, ``--only memory``): ``benchmarks/fleet_memory.py``: the largest backend's
  private memory and the wall time of ``upgrade --all --jobs 2`` over 1,000, 3,000 and 8,000 schemas, with
  connections recycled every ``recycle_after`` schemas and without, interleaved. Targets: every backend
  <= 40 MB at 8,000 schemas; recycling's cost within the noise (the A/A ratio of two runs without).
* the warm pool (issue 12, ``--only pool``): a new project's first ``ensure`` claiming a spare vs the fast
  path vs the floor, interleaved, p50 and p99; ``asyncio.gather`` of 3 new projects from the pool vs one;
  both again on a database holding 10,000 project schemas. Targets: pool p50 <= 1/20 of the fast path's,
  gather of 3 <= 2x one. The claim's own floor, in the same rounds (``ClaimFloor``): what a hand-written
  claim with a rename costs (psycopg2, one round trip, async commit), and library claim / that floor.

* the tenant lifecycle (issue 20, ``--only lifecycle``): ``benchmarks/lifecycle.py``: export / import vs
  ``pg_dump -Fc -n`` / ``pg_restore``, clone vs raw ``INSERT ... SELECT``, bulk drop vs raw ``DROP SCHEMA``
  one per transaction, ``exec`` vs a raw parallel loop.

* the live-application soak (issue 18, ``--only soak``, ``--minutes N``, default 3, quick 1): two releases'
  applications create, write, read and drop projects and claim spares at a steady rate through a rolling
  deploy, a rollback and a redeploy, while `upgrade --all`, `status`, `check`, `pool fill` and `pool status`
  of both run beside them (``tests/soak.py``, which the suite runs for 30 s): the rates and counts, every
  command's outcomes, and its invariants (any broken one fails the run).

``--citus URL`` runs the Citus benchmark instead (``benchmarks/citus_bench.py``: fresh ``ensure`` and
``upgrade --all`` over 1,000 tenant schemas against the raw floor, on the cluster of that coordinator).

The server is ``WORKSPACE_TOOL_BENCH_DATABASE_URL`` if set, else the embedded PostgreSQL
(``workspace_tool.embedded.start()``); the benchmark creates its own databases on it and drops them at
the end. The machine may be shared: only ratios measured in the same run mean much.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import importlib.util
import inspect
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleet_upgrade import checkpoint  # noqa: E402  (this folder is on sys.path when run as a script)

from workspace_tool import ProjectWorkspaceManager, WorkspaceManager, drift, embedded, fleet  # noqa: E402
from workspace_tool import spares as warm_pool  # noqa: E402
from workspace_tool.chain.plan import Path as PlanPath  # noqa: E402
from workspace_tool.flavor import Flavor  # noqa: E402
from workspace_tool.naming import schema_for  # noqa: E402
from workspace_tool.registry.table import RegistryAction  # noqa: E402
from workspace_tool.schema.catalog import diff, snapshot  # noqa: E402
from workspace_tool.schema.migrate import Migration, Sending, migrate  # noqa: E402
from workspace_tool.schema.plan import BEGIN, COMMIT, RegistryRecord, SchemaPlan  # noqa: E402
from workspace_tool.sql import quote_ident, search_path_sql  # noqa: E402
from workspace_tool.testing import fresh_database  # noqa: E402
from workspace_tool.urls import async_url, sync_url  # noqa: E402

ALEMBIC_INI = ROOT / "alembic.ini"
SERVER_ENV = "WORKSPACE_TOOL_BENCH_DATABASE_URL"
REGISTRY_INSERT = (
    "INSERT INTO project_registry.workspace_config (project_id, schema_name, revision, status, last_action, "
    "last_duration_ms, last_path) VALUES ({pid}, {schema}, {rev}, 'ready', 'created', 0, 'floor');\n"
)

RESULTS: dict[str, Any] = {}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# ------------------------------------------------------------------ statistics
def median_ms(samples: Sequence[float]) -> float:
    return statistics.median(samples) * 1000.0


def p99_ms(samples: Sequence[float]) -> float:
    """The 99th percentile (interpolated; with n=30 it sits between the two largest samples)."""
    ordered = sorted(samples)
    return (statistics.quantiles(ordered, n=100, method="inclusive")[98] if len(ordered) > 1 else ordered[0]) * 1000


def spread(samples: Sequence[float]) -> str:
    """median [p25-p75] in ms"""
    ordered = sorted(samples)
    q = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else [ordered[0]] * 3
    return f"{median_ms(ordered):8.2f} ms  [p25 {q[0] * 1000:.2f}, p75 {q[2] * 1000:.2f}]  n={len(ordered)}"


def verdict(value: float, target: float) -> str:
    return "met" if value <= target else f"MISSED by {value / target:.2f}x"


def record(key: str, **values: Any) -> None:
    RESULTS[key] = values


# ------------------------------------------------------------------- databases
def server_url() -> URL:
    configured = os.environ.get(SERVER_ENV)
    return sync_url(configured if configured else embedded.start())


def scratch_database(server: URL, label: str) -> AbstractContextManager[URL]:
    return fresh_database(server, label, prefix="wst_bench")


def engine_for(url: URL, pool_size: int = 8) -> sa.Engine:
    return sa.create_engine(url, pool_size=pool_size, max_overflow=pool_size)


def raw_autocommit(engine: sa.Engine) -> Any:
    """A DBAPI (psycopg2) connection in autocommit mode: statements go as they are, one round trip each."""
    conn = engine.raw_connection()
    conn.driver_connection.autocommit = True  # type: ignore[union-attr]
    return conn


# ------------------------------------------------------------------------ floor
def pg_dump_schema(url: URL, schema: str) -> str:
    """The schema's DDL from pg_dump --schema-only (the client matching the embedded server: 18)."""
    pg_dump = embedded.client_bin_dir() / "pg_dump"
    libpq = url.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    out = subprocess.run(
        [str(pg_dump), "--schema-only", "--no-owner", "--no-privileges", "-n", schema, libpq],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    # psql meta-commands (\restrict ...) and comments are not SQL
    lines = [line for line in out.splitlines() if not line.startswith("\\") and not line.startswith("--")]
    return "\n".join(lines)


class Floor:
    """Replays a provisioned schema's DDL, its version row and a registry row as one batch."""

    def __init__(self, engine: sa.Engine, reference_schema: str, head: str) -> None:
        self.ddl = pg_dump_schema(engine.url, reference_schema)
        self.pattern = re.compile(rf"\b{re.escape(reference_schema)}\b")
        self.head = head
        self.conn = raw_autocommit(engine)

    def sql(self, project_id: str) -> str:
        schema = schema_for(project_id)
        return (
            "BEGIN;\n"
            + self.pattern.sub(schema, self.ddl)
            + f"\nINSERT INTO {schema}.alembic_version (version_num) VALUES ({literal(self.head)});\n"
            + REGISTRY_INSERT.format(pid=literal(project_id), schema=literal(schema), rev=literal(self.head))
            + "COMMIT;"
        )

    def provision(self, project_id: str) -> None:
        sql = self.sql(project_id)
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql)
        finally:
            cursor.close()

    def close(self) -> None:
        self.conn.close()


class ClaimFloor:
    """The warm-pool claim's floor: a spare claimed as an expert would, with no library, renaming it. One round
    trip on a held psycopg2 connection, one implicit transaction committed without waiting for its WAL flush
    (as the library's default, ``workspace_pool_claim_commit = async``): a function installed once (in
    ``bench_floor``, as the library installs its own) that takes the schema's advisory lock, deletes the
    oldest ready spare of the chain at head (``FOR UPDATE SKIP LOCKED``) returning its name, renames it and
    inserts the registry row. What it leaves out of the library's claim: the checks that the spare is the
    current role's and was built under its default privileges as they are now, that the project's schema
    does not exist yet, and the registry upsert (it INSERTs)."""

    FUNCTION = """
CREATE FUNCTION bench_floor.claim(p_lock bigint, p_target text, p_project text, p_revision text, p_chain text)
RETURNS boolean LANGUAGE plpgsql AS $f$
DECLARE
    spare text;
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock);
    DELETE FROM project_registry.spare_schemas WHERE schema_name = (
        SELECT schema_name FROM project_registry.spare_schemas
        WHERE chain = p_chain AND revision = p_revision AND ready
        ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING schema_name INTO spare;
    IF spare IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('ALTER SCHEMA %I RENAME TO %I', spare, p_target);
    INSERT INTO project_registry.workspace_config
        (project_id, schema_name, revision, status, last_action, last_duration_ms, last_path)
    VALUES (p_project, p_target, p_revision, 'ready', 'created', 0, 'floor');
    RETURN true;
END
$f$"""

    def __init__(self, engine: sa.Engine, chain_fingerprint: str, head: str) -> None:
        self.conn = raw_autocommit(engine)
        self.chain, self.head = chain_fingerprint, head
        cursor = self.conn.cursor()
        try:
            cursor.execute("CREATE SCHEMA IF NOT EXISTS bench_floor")
            cursor.execute("DROP FUNCTION IF EXISTS bench_floor.claim(bigint, text, text, text, text)")
            cursor.execute(self.FUNCTION)
        finally:
            cursor.close()

    def claim(self, project_id: str) -> None:
        schema = schema_for(project_id)
        key = literal(f"workspace_tool:{schema}")  # the schema's advisory lock, as the library takes it
        arguments = ", ".join(literal(v) for v in (schema, project_id, self.head, self.chain))
        cursor = self.conn.cursor()
        try:
            cursor.execute(
                "SET LOCAL synchronous_commit = off;\n"
                f"SELECT bench_floor.claim(hashtextextended({key}, 0), {arguments});"
            )
            claimed = cursor.fetchone()
        finally:
            cursor.close()
        assert claimed == (True,), f"the floor claimed no spare for {project_id}"

    def close(self) -> None:
        self.conn.close()


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def online_ensure(engine: sa.Engine, mgr: WorkspaceManager, project_id: str) -> None:
    with engine.connect() as conn:
        how = Sending(mgr.chain, Flavor(mgr.bootstrap()), online=True)
        migrate(conn, how, Migration(project_id, schema_for(project_id), mgr.head))


def careful_ensure(engine: sa.Engine, mgr: WorkspaceManager, project_id: str) -> None:
    """A first ensure as it was sent before the one-round-trip lane: BEGIN, lock and state read, the batch,
    COMMIT (the careful path, which an ensure still takes when the schema turns out to exist)."""
    with engine.connect() as conn:
        how = Sending(mgr.chain, Flavor(mgr.bootstrap()))
        migrate(conn, how, Migration(project_id, schema_for(project_id), mgr.head))


# ------------------------------------------------------------------ benchmarks
def bench_fresh(engine: sa.Engine, mgr: WorkspaceManager, n: int) -> None:
    log(f"fresh ensure vs floor: {n} provisionings each, interleaved")
    mgr.ensure("floorref")  # the reference schema pg_dump reads
    floor = Floor(engine, schema_for("floorref"), mgr.head)
    for i in range(3):  # warm up every contender
        mgr.ensure(f"warm-lib-{i}")
        floor.provision(f"warm-floor-{i}")
        careful_ensure(engine, mgr, f"warm-careful-{i}")
        online_ensure(engine, mgr, f"warm-online-{i}")
    samples: dict[str, list[float]] = {"library": [], "floor": [], "careful": [], "online": []}
    paths = set()
    checkpoint(engine)
    for i in range(n):
        contenders: list[tuple[str, Callable[[], object]]] = [
            ("library", lambda i=i: paths.add(mgr.ensure_detailed(f"lib-{i}").path)),  # type: ignore[misc]
            ("floor", lambda i=i: floor.provision(f"floor-{i}")),  # type: ignore[misc]
            ("careful", lambda i=i: careful_ensure(engine, mgr, f"careful-{i}")),  # type: ignore[misc]
            ("online", lambda i=i: online_ensure(engine, mgr, f"online-{i}")),  # type: ignore[misc]
        ]
        shift = i % len(contenders)
        for name, fn in contenders[shift:] + contenders[:shift]:
            samples[name].append(timed(fn))
    floor.close()
    ratio = statistics.median(samples["library"]) / statistics.median(samples["floor"])
    careful_ratio = statistics.median(samples["careful"]) / statistics.median(samples["floor"])
    online_ratio = statistics.median(samples["online"]) / statistics.median(samples["floor"])
    # the same ratios per round (each contender once, back to back): steadier on a loaded machine
    paired = statistics.median(a / b for a, b in zip(samples["library"], samples["floor"], strict=True))
    paired_careful = statistics.median(a / b for a, b in zip(samples["careful"], samples["floor"], strict=True))
    print("\n== fresh ensure (main chain, 6 tables + HNSW) ==")
    print(f"library ensure (path {'/'.join(sorted(paths))}): {spread(samples['library'])}")
    print(f"floor (pg_dump DDL, 1 batch):       {spread(samples['floor'])}")
    print(f"careful path (lock + read, batch):  {spread(samples['careful'])}")
    print(f"online through Alembic (reference): {spread(samples['online'])}")
    print(
        f"library / floor = {ratio:.3f}x (target <= 1.05x: {verdict(ratio, 1.05)}; <= 1.15x: "
        f"{verdict(ratio, 1.15)}); per round {paired:.3f}x; careful path / floor = {careful_ratio:.3f}x "
        f"(per round {paired_careful:.3f}x); online / floor = {online_ratio:.2f}x"
    )
    record(
        "fresh_ensure",
        n=n,
        library_median_ms=median_ms(samples["library"]),
        floor_median_ms=median_ms(samples["floor"]),
        online_median_ms=median_ms(samples["online"]),
        careful_median_ms=median_ms(samples["careful"]),
        ratio=ratio,
        paired_ratio=paired,
        careful_ratio=careful_ratio,
        paired_careful_ratio=paired_careful,
        online_ratio=online_ratio,
        path=sorted(paths),
    )


def bench_cache(engine: sa.Engine, mgr: WorkspaceManager, calls: int, verify_calls: int) -> None:
    log(f"cached ensure: {calls} calls x 5; verify: {verify_calls} calls")
    project = "cached"
    mgr.ensure(project)
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    sa.event.listen(engine, "before_cursor_execute", count)
    means = []
    ensure = mgr.ensure
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(calls):
            ensure(project)
        means.append((time.perf_counter() - started) / calls)
    sa.event.remove(engine, "before_cursor_execute", count)
    cached_mean_us = statistics.median(means) * 1e6

    verify = []
    bare = []
    held = raw_autocommit(engine)
    probe_sql = f"SELECT version_num FROM {schema_for(project)}.alembic_version"
    for _ in range(verify_calls):
        started = time.perf_counter()
        mgr.ensure(project, verify=True)
        verify.append(time.perf_counter() - started)
        started = time.perf_counter()
        cursor = held.cursor()
        cursor.execute(probe_sql)
        cursor.fetchall()
        cursor.close()
        bare.append(time.perf_counter() - started)
    held.close()
    verify_ms = median_ms(verify)
    print("\n== cache ==")
    print(
        f"cached ensure: mean {cached_mean_us:.3f} us (median of 5 runs of {calls}); statements sent: "
        f"{len(statements)} (target <= 5 us, no I/O: {verdict(cached_mean_us, 5.0)})"
    )
    print(f"ensure(verify=True): {spread(verify)} (target <= 0.3 ms: {verdict(verify_ms, 0.3)})")
    print(f"bare SELECT version_num on a held connection: {spread(bare)}")
    record(
        "cache",
        cached_mean_us=cached_mean_us,
        cached_statements=len(statements),
        verify_median_ms=verify_ms,
        bare_select_median_ms=median_ms(bare),
    )


def raw_parallel(engine: sa.Engine, sql: str, extension_schema: str, size: int, tag: str) -> float:
    """Seconds for ``size`` threads, one held psycopg2 connection each, to provision one schema each with
    the compiled chain sent as one batch (no library): what the server does with that much parallel DDL."""
    conns = [engine.raw_connection() for _ in range(size)]

    def provision(i: int) -> None:
        dbapi = conns[i].driver_connection
        assert dbapi is not None
        schema = quote_ident(f"project_raw_{tag}_{i}")
        cursor = dbapi.cursor()
        cursor.execute(
            f"CREATE SCHEMA {schema};\n" + search_path_sql(schema.strip('"'), extension_schema) + ";\n" + sql
        )
        dbapi.commit()

    elapsed = timed_threads(provision, size)
    for conn in conns:
        conn.close()
    return elapsed


def bench_gather(url: URL, reps: int) -> None:
    log(f"asyncio.gather: {reps} rounds of 1, 3 and 16 distinct projects (and raw threads of 1 and 3)")

    async def run() -> dict[str, list[float]]:
        engine = create_async_engine(async_url(url), pool_size=20, max_overflow=10)
        amgr = ProjectWorkspaceManager(engine, ALEMBIC_INI)
        sync_engine = sa.create_engine(sync_url(url), pool_size=4)
        sql = amgr.chain.plan(None, amgr.head).sql
        assert sql is not None
        samples: dict[str, list[float]] = {"1": [], "3": [], "16": [], "raw 1": [], "raw 3": []}
        try:
            await asyncio.gather(*(amgr.ensure(f"async-warm-{i}") for i in range(16)))  # fill the pool

            async def batch(tag: str, size: int, rep: int) -> None:
                ids = [f"async-{tag}-{rep}-{i}" for i in range(size)]
                started = time.perf_counter()
                await asyncio.gather(*(amgr.ensure(p) for p in ids))
                samples[str(size)].append(time.perf_counter() - started)
                if size in (1, 3):
                    extension_schema = await amgr.bootstrap()
                    samples[f"raw {size}"].append(
                        raw_parallel(sync_engine, sql, extension_schema, size, f"{tag}_{rep}")
                    )

            for rep in range(reps):
                order = [1, 3, 16]
                shift = rep % 3
                for size in order[shift:] + order[:shift]:
                    await batch(f"g{size}", size, rep)
        finally:
            await engine.dispose()
            sync_engine.dispose()
        return samples

    samples = asyncio.run(run())
    one = statistics.median(samples["1"])
    r3 = statistics.median(samples["3"]) / one
    r16 = statistics.median(samples["16"]) / one
    print("\n== asyncio.gather through ProjectWorkspaceManager (asyncpg) ==")
    print(f"1 project:    {spread(samples['1'])}")
    print(f"3 projects:   {spread(samples['3'])}  -> {r3:.2f}x one (target <= 2x: {verdict(r3, 2.0)})")
    print(f"16 projects:  {spread(samples['16'])}  -> {r16:.2f}x one")
    raw_ratio = statistics.median(samples["raw 3"]) / statistics.median(samples["raw 1"])
    print(f"raw floor, 1 thread:   {spread(samples['raw 1'])}")
    print(
        f"raw floor, 3 threads:  {spread(samples['raw 3'])}  -> {raw_ratio:.2f}x one "
        "(the same DDL from 3 connections with no library: how far the server itself overlaps)"
    )
    record(
        "gather",
        reps=reps,
        one_median_ms=one * 1000,
        three_median_ms=median_ms(samples["3"]),
        sixteen_median_ms=median_ms(samples["16"]),
        ratio_3=r3,
        ratio_16=r16,
        raw_ratio_3=raw_ratio,
    )


def timed_threads(target: Callable[[int], None], size: int) -> float:
    """Seconds for ``size`` threads running ``target(i)`` at once, from the first start to the last join."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(size)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def populate(engine: sa.Engine, mgr: WorkspaceManager, count: int, *, per_batch: int = 20, workers: int = 3) -> float:
    """Create ``count`` project schemas at head quickly: the compiled chain, ``per_batch`` schemas per
    transaction (one batch each, with their registry rows), on ``workers`` connections."""
    extension_schema = mgr.bootstrap()
    chain_sql = mgr.chain.plan(None, mgr.head).sql
    assert chain_sql is not None, "the main chain compiles completely"
    started = time.perf_counter()
    done = 0
    lock = threading.Lock()

    def batch(start: int) -> None:
        nonlocal done
        parts = ["BEGIN;\n"]
        for i in range(start, min(start + per_batch, count)):
            project_id = f"existing-{i}"
            schema = schema_for(project_id)
            parts.append(f"CREATE SCHEMA {schema};\n{search_path_sql(schema, extension_schema)};\n{chain_sql}\n")
            parts.append(REGISTRY_INSERT.format(pid=literal(project_id), schema=literal(schema), rev=literal(mgr.head)))
        parts.append("COMMIT;")
        conn = raw_autocommit(engine)
        try:
            cursor = conn.cursor()
            cursor.execute("".join(parts))
            cursor.close()
        finally:
            conn.driver_connection.autocommit = False  # back to the pool as it came, for the library's use
            conn.close()
        with lock:
            done += min(per_batch, count - start)
            if done % 1000 < per_batch:
                log(f"  {done}/{count} schemas ({time.perf_counter() - started:.0f} s)")

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(batch, range(0, count, per_batch)))
    with engine.connect() as conn:
        # as autovacuum would; a database-wide ANALYZE locks every table at once (max_locks_per_transaction)
        conn.execute(
            sa.text(
                "ANALYZE pg_catalog.pg_class, pg_catalog.pg_attribute, pg_catalog.pg_namespace, "
                "pg_catalog.pg_type, pg_catalog.pg_depend, pg_catalog.pg_constraint, pg_catalog.pg_index, "
                "project_registry.workspace_config"
            )
        )
        conn.commit()
    return time.perf_counter() - started


def bench_existing(server: URL, existing: int, n: int) -> None:
    with scratch_database(server, "none") as url0, scratch_database(server, "many") as url1:
        engine0, engine1 = engine_for(url0), engine_for(url1)
        mgr0, mgr1 = WorkspaceManager(engine0, ALEMBIC_INI), WorkspaceManager(engine1, ALEMBIC_INI)
        try:
            log(f"creating {existing} project schemas at head (compiled chain, batched) ...")
            seconds = populate(engine1, mgr1, existing)
            mgr0.bootstrap()
            checkpoint(engine1)  # the bulk creation's dirty pages must not land in the measurements
            log(f"  done in {seconds:.1f} s; now {n} fresh provisionings each, interleaved")
            for i in range(3):
                mgr0.ensure(f"warm-{i}")
                mgr1.ensure(f"warm-{i}")
            mgr0.ensure("floorref")
            mgr1.ensure("floorref")
            floors = {
                "none": Floor(engine0, schema_for("floorref"), mgr0.head),
                "many": Floor(engine1, schema_for("floorref"), mgr1.head),
            }
            # where the time goes: each statement the library sends, timed around the driver call
            steps: dict[str, dict[str, list[float]]] = {"none": {}, "many": {}}
            for side, eng in (("none", engine0), ("many", engine1)):
                _time_statements(eng, steps[side])
            samples: dict[str, list[float]] = {"none": [], "many": [], "floor none": [], "floor many": []}
            for i in range(n):
                pair = [("none", mgr0), ("many", mgr1)]
                for name, mgr in pair if i % 2 == 0 else pair[::-1]:
                    samples[name].append(timed(lambda mgr=mgr, i=i: mgr.ensure(f"new-{i}")))  # type: ignore[misc]
                    floor = floors[name]
                    samples[f"floor {name}"].append(timed(lambda f=floor, i=i: f.provision(f"floor-{i}")))  # type: ignore[misc]
            for floor in floors.values():
                floor.close()
            ratio = statistics.median(samples["many"]) / statistics.median(samples["none"])
            floor_ratio = statistics.median(samples["floor many"]) / statistics.median(samples["floor none"])
            print(f"\n== fresh ensure with {existing} schemas present vs none ==")
            print(f"(created {existing} schemas in {seconds:.1f} s: {existing / seconds:.0f}/s)")
            print(f"library, none present:   {spread(samples['none'])}")
            print(f"library, {existing:>6} present: {spread(samples['many'])}")
            print(f"floor,   none present:   {spread(samples['floor none'])}")
            print(f"floor,   {existing:>6} present: {spread(samples['floor many'])}")
            print(
                f"library ratio = {ratio:.3f}x (target <= 1.25x: {verdict(ratio, 1.25)}); "
                f"floor ratio = {floor_ratio:.3f}x"
            )
            print("library statements, median ms (none -> many):")
            for label in steps["none"]:
                a, b = steps["none"][label], steps["many"].get(label, [0.0])
                print(f"  {label:<40} {median_ms(a):7.2f} -> {median_ms(b):7.2f}")
            record(
                "existing",
                existing=existing,
                populate_seconds=seconds,
                none_median_ms=median_ms(samples["none"]),
                many_median_ms=median_ms(samples["many"]),
                floor_none_median_ms=median_ms(samples["floor none"]),
                floor_many_median_ms=median_ms(samples["floor many"]),
                ratio=ratio,
                floor_ratio=floor_ratio,
                statements={
                    side: {label: median_ms(v) for label, v in by_label.items()} for side, by_label in steps.items()
                },
            )
        finally:
            mgr0.close()
            mgr1.close()
            engine0.dispose()
            engine1.dispose()


def _time_statements(engine: sa.Engine, into: dict[str, list[float]]) -> None:
    """Record the duration of each statement the library sends (its first words as the label)."""
    started: dict[int, float] = {}

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        started[id(cursor)] = time.perf_counter()

    def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        label = re.sub(r'"?project_(?!registry)[a-z0-9_]+"?', "<schema>", " ".join(statement.split()[:3]))[:40]
        into.setdefault(label, []).append(time.perf_counter() - started.pop(id(cursor), time.perf_counter()))

    sa.event.listen(engine, "before_cursor_execute", before)
    sa.event.listen(engine, "after_cursor_execute", after)


def bench_check(server: URL, count: int, reps: int, jobs: int) -> None:
    """`check` (drift.check), a no-op `upgrade --all` (fleet.upgrade) and `status` (WorkspaceManager.status)
    over the same fleet of ``count`` schemas at head, interleaved (the order rotates), after a CHECKPOINT."""
    with scratch_database(server, "check") as url:
        engine = engine_for(url, pool_size=jobs + 2)
        mgr = WorkspaceManager(engine, ALEMBIC_INI)
        try:
            log(f"creating {count} project schemas at head (compiled chain, batched) ...")
            seconds = populate(engine, mgr, count)
            started = time.perf_counter()
            warm = fleet.upgrade(engine, mgr.chain, jobs=jobs)  # at its end, stores the reference for check
            stored_s = time.perf_counter() - started
            assert warm.counts()["skipped"] == count, warm.counts()
            assert drift.check(engine, mgr.chain, jobs=jobs).ok
            checkpoint(engine)
            log(f"  done in {seconds:.1f} s; now {reps} rounds of check / no-op upgrade / status, interleaved")
            samples: dict[str, list[float]] = {"check": [], "no-op upgrade": [], "status": []}
            runs: dict[str, Callable[[], object]] = {
                "check": lambda: drift.check(engine, mgr.chain, jobs=jobs),
                "no-op upgrade": lambda: fleet.upgrade(engine, mgr.chain, jobs=jobs),
                "status": mgr.status,
            }
            load = [os.getloadavg()[0]]
            for i in range(reps):
                names = list(runs)
                for name in names[i % 3 :] + names[: i % 3]:
                    started = time.perf_counter()
                    result = runs[name]()
                    samples[name].append(time.perf_counter() - started)
                    _assert_whole_fleet(name, result, count)
                load.append(os.getloadavg()[0])
                log("  round {}: {}".format(i + 1, ", ".join(f"{k} {v[-1]:.2f} s" for k, v in samples.items())))
            ratios = [c / n for c, n in zip(samples["check"], samples["no-op upgrade"], strict=True)]
            check_s, noop_s, status_s = (statistics.median(samples[k]) for k in runs)
            print(f"\n== check, no-op upgrade --all and status over {count} schemas, {jobs} connections ==")
            print(f"(created {count} schemas in {seconds:.1f} s; the first no-op run, which stored the reference:")
            print(f" {stored_s:.2f} s)")
            for name, values in samples.items():
                print(f"{name:<14} {spread(values)}")
            print(f"check: {check_s:.2f} s (target <= 10 s: {verdict(check_s, 10.0)})")
            print(
                f"check / no-op upgrade = {check_s / noop_s:.2f}x; median of the per-round ratios "
                f"{statistics.median(ratios):.2f}x (target <= 3x: {verdict(statistics.median(ratios), 3.0)})"
            )
            print(f"status: {status_s:.2f} s (target <= 1 s: {verdict(status_s, 1.0)})")
            print(
                f"load average (1 min) during the rounds: {min(load):.1f} to {max(load):.1f} on {os.cpu_count()} cores"
            )
            record(
                "check",
                schemas=count,
                jobs=jobs,
                check_s=check_s,
                noop_upgrade_s=noop_s,
                status_s=status_s,
                ratio=check_s / noop_s,
                ratio_of_rounds=statistics.median(ratios),
                samples=samples,
                load=load,
            )
        finally:
            mgr.close()
            engine.dispose()


def _assert_whole_fleet(name: str, result: object, count: int) -> None:
    if isinstance(result, drift.CheckReport):
        assert result.ok and len(result.schemas) == count, result.failing[:3]
    elif isinstance(result, fleet.FleetReport):
        assert result.counts()["skipped"] == count, result.counts()
    else:
        assert isinstance(result, list) and len(result) == count, name


def process_seconds(argv: Sequence[str], env: dict[str, str] | None = None) -> float:
    """Wall time of a whole process, which must succeed (its output is discarded)."""
    started = time.perf_counter()
    done = subprocess.run(list(argv), cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} ... failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return elapsed


def interleaved(contenders: dict[str, Callable[[], float]], reps: int) -> dict[str, list[float]]:
    """Each contender ``reps`` times, the order rotating every round; each returns its own seconds."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for i in range(reps):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            samples[name].append(contenders[name]())
    return samples


LIBRARY_SCRIPT = """
import sys
import sqlalchemy as sa
from workspace_tool import fleet
from workspace_tool.chain import Chain
engine = sa.create_engine(sys.argv[1], pool_size=8, max_overflow=8)
report = fleet.upgrade(engine, Chain.load(sys.argv[2]))
assert report.counts()["skipped"] == int(sys.argv[3]), report.counts()
"""


def bench_startup(server: URL, schemas: int, reps: int, jobs: int) -> None:
    """Start-up: `--help` against Alembic's, and a no-op `upgrade --all` as a process against the library call."""
    bin_dir = Path(sys.executable).parent
    tool, alembic_cli = str(bin_dir / "workspace-tool"), str(bin_dir / "alembic")
    env = {k: v for k, v in os.environ.items() if k not in ("WORKSPACE_TOOL_DATABASE_URL", "DATABASE_URL")}
    log(f"start-up: --help vs alembic --help, {reps} each, interleaved")
    helps = interleaved(
        {
            "workspace-tool --help": lambda: process_seconds([tool, "--help"], env),
            "alembic --help": lambda: process_seconds([alembic_cli, "--help"], env),
        },
        reps,
    )
    with scratch_database(server, "startup") as url:
        engine = engine_for(url, pool_size=jobs + 2)
        mgr = WorkspaceManager(engine, ALEMBIC_INI)
        try:
            log(f"creating {schemas} project schemas at head (compiled chain, batched) ...")
            populate(engine, mgr, schemas)
            fleet.upgrade(engine, mgr.chain, jobs=jobs)  # stores the reference catalog, as a first run would
            checkpoint(engine)
            url_text = url.render_as_string(hide_password=False)
            cli = [tool, "--database-url", url_text, "-c", str(ALEMBIC_INI), "upgrade", "--all", "--jobs", str(jobs)]
            script = [sys.executable, "-c", LIBRARY_SCRIPT, url_text, str(ALEMBIC_INI), str(schemas)]
            process_seconds(cli, env)  # as a DBA's earlier run: the chain's graph is recorded (chain/index.py)

            def library_call(fresh: bool) -> float:
                eng = engine_for(url, pool_size=jobs + 2) if fresh else engine
                started = time.perf_counter()
                report = fleet.upgrade(eng, mgr.chain, jobs=jobs)
                elapsed = time.perf_counter() - started
                if fresh:
                    eng.dispose()
                _assert_whole_fleet("no-op upgrade", report, schemas)
                return elapsed

            log(f"  no-op upgrade --all over {schemas} schemas: {reps} rounds, interleaved")
            runs = interleaved(
                {
                    "process: workspace-tool upgrade --all": lambda: process_seconds(cli, env),
                    "library call, fresh engine": lambda: library_call(True),
                    "library call, warm engine": lambda: library_call(False),
                    "process: a script calling the library": lambda: process_seconds(script, env),
                    "process: python -c 'import sqlalchemy, psycopg2'": lambda: process_seconds(
                        [sys.executable, "-c", "import sqlalchemy, psycopg2"], env
                    ),
                },
                reps,
            )
        finally:
            mgr.close()
            engine.dispose()
    medians = {name: statistics.median(v) for name, v in {**helps, **runs}.items()}
    help_ratio = medians["workspace-tool --help"] / medians["alembic --help"]
    process = medians["process: workspace-tool upgrade --all"]
    fresh, warm = medians["library call, fresh engine"], medians["library call, warm engine"]
    print(f"\n== start-up: --help, and a no-op upgrade --all over {schemas} schemas ({jobs} connections) ==")
    for name, values in {**helps, **runs}.items():
        print(f"{name:<50} {spread(values)}")
    print(f"workspace-tool --help / alembic --help = {help_ratio:.2f}x (target <= 1x: {verdict(help_ratio, 1.0)})")
    print(
        f"process / library call = {process / fresh:.2f}x with a fresh engine (target <= 1.5x: "
        f"{verdict(process / fresh, 1.5)}), {process / warm:.2f}x with a warm one; process / the script "
        f"calling the library = {process / medians['process: a script calling the library']:.2f}x"
    )
    record(
        "startup",
        schemas=schemas,
        jobs=jobs,
        reps=reps,
        medians_s=medians,
        help_ratio=help_ratio,
        process_vs_fresh_call=process / fresh,
        process_vs_warm_call=process / warm,
    )


def bench_pool(server: URL, n: int, reps: int, gather_reps: int, existing: int) -> None:
    """The warm pool, on a database holding no other schema and on one holding ``existing``."""
    for count in (0, existing):
        with scratch_database(server, f"pool{count}") as url:
            engine = engine_for(url, pool_size=10)
            mgr = WorkspaceManager(engine, ALEMBIC_INI)
            try:
                seconds = populate(engine, mgr, count) if count else 0.0
                if count:
                    log(f"created {count} project schemas at head in {seconds:.0f} s")
                _pool_round(engine, url, mgr, n, reps, gather_reps, count)
            finally:
                mgr.close()
                engine.dispose()


def _pool_round(
    engine: sa.Engine, url: URL, mgr: WorkspaceManager, n: int, reps: int, gather_reps: int, existing: int
) -> None:
    # one per claim (the library's three ways, the claim's floor, the raw claims, the claims in a row, the
    # gathers), warm-ups included
    spares = 7 * n + 4 * reps + 8 * gather_reps + 33
    log(f"warm pool ({existing} schemas present): filling {spares} spares, then {n} ensures per contender")
    filled = warm_pool.fill(engine, mgr.chain, spares, jobs=2)
    # each commit mode named, whatever the default: the chain is the same (spares of one are the other's)
    inis = {mode: ALEMBIC_INI.with_name(f".bench-pool-{mode}.ini") for mode in ("durable", "async")}  # %(here)s holds
    for mode, ini in inis.items():
        ini.write_text(
            ALEMBIC_INI.read_text().replace("[alembic]\n", f"[alembic]\nworkspace_pool_claim_commit = {mode}\n", 1)
        )
    pooled = WorkspaceManager(engine, inis["durable"], warm_pool=spares)
    pooled_async = WorkspaceManager(engine, inis["async"], warm_pool=spares)
    mgr.ensure("floorref")
    floor = Floor(engine, schema_for("floorref"), mgr.head)
    claim_floor = ClaimFloor(engine, mgr.chain.fingerprint, mgr.head)
    checkpoint(engine)  # the fill's dirty pages must not land in the measurements

    def careful_claim(project_id: str) -> str:
        """A claim as the careful path sends it (BEGIN, lock and claim, COMMIT): a first ensure's before."""
        with engine.connect() as conn:
            how = Sending(pooled.chain, Flavor(mgr.bootstrap()), pool=True)  # durable, as the pool contender
            return migrate(conn, how, Migration(project_id, schema_for(project_id), mgr.head)).path

    for i in range(3):  # warm up every contender (connections, plpgsql's cached plans)
        pooled.ensure(f"warm-pool-{i}")
        pooled_async.ensure(f"warm-async-{i}")
        careful_claim(f"warm-careful-{i}")
        mgr.ensure(f"warm-fast-{i}")
        floor.provision(f"warm-floor-{i}")
        claim_floor.claim(f"warm-raw-{i}")
    samples: dict[str, list[float]] = {"pool": [], "async": [], "careful": [], "raw": [], "fast": [], "floor": []}
    paths: dict[str, set[str]] = {"pool": set(), "async": set(), "careful": set(), "fast": set()}
    for i in range(n):
        contenders: list[tuple[str, Callable[[], object]]] = [
            ("pool", lambda i=i: paths["pool"].add(pooled.ensure_detailed(f"pool-{i}").path)),  # type: ignore[misc]
            ("async", lambda i=i: paths["async"].add(pooled_async.ensure_detailed(f"async-{i}").path)),  # type: ignore[misc]
            ("careful", lambda i=i: paths["careful"].add(careful_claim(f"careful-{i}"))),  # type: ignore[misc]
            ("raw", lambda i=i: claim_floor.claim(f"raw-claim-{i}")),  # type: ignore[misc]
            ("fast", lambda i=i: paths["fast"].add(mgr.ensure_detailed(f"fast-{i}").path)),  # type: ignore[misc]
            ("floor", lambda i=i: floor.provision(f"floor-{i}")),  # type: ignore[misc]
        ]
        shift = i % len(contenders)
        for name, fn in contenders[shift:] + contenders[:shift]:
            samples[name].append(timed(fn))
    # the same two claims with no schema built between them: interleaved with the builds above, each claim's
    # backend first catches up with the catalog changes of the builds made since its last transaction (every
    # backend does, at its next transaction: measured, a SELECT 1 after another session's 6-table schema
    # takes 2-3x as long); here only the claims' own renames come between them
    # The library's claim also from an engine whose pool hands out the connection used last (pool_use_lifo):
    # on the benchmark's engine (first in, first out) each claim lands on the backend idle the longest, which
    # first catches up with every claim's rename since its last turn; the floor holds its one connection.
    lifo_engine = sa.create_engine(url, pool_size=10, pool_use_lifo=True)
    lifo = WorkspaceManager(lifo_engine, inis["async"], warm_pool=spares)
    for i in range(3):
        lifo.ensure(f"warm-lifo-{i}")
    in_a_row: dict[str, list[float]] = {"async": [], "lifo": [], "raw": []}
    for i in range(n):
        row = [
            ("async", lambda i=i: paths["async"].add(pooled_async.ensure_detailed(f"row-{i}").path)),
            ("lifo", lambda i=i: paths["async"].add(lifo.ensure_detailed(f"row-lifo-{i}").path)),
            ("raw", lambda i=i: claim_floor.claim(f"row-raw-{i}")),
        ]
        shift = i % len(row)
        for name, fn in row[shift:] + row[:shift]:
            in_a_row[name].append(timed(fn))
    floor.close()
    claim_floor.close()
    pooled.close()
    pooled_async.close()
    lifo.close()
    lifo_engine.dispose()
    assert paths == {"pool": {"pool"}, "async": {"pool"}, "careful": {"pool"}, "fast": {"fast"}}, paths
    with engine.connect() as conn:  # every project claimed from the pool is what a fresh build makes
        built = snapshot(conn, schema_for("fast-0"))
        different = [
            f"{kind}-{i}"
            for kind in ("pool", "async")
            for i in range(n)
            if diff(built, snapshot(conn, schema_for(f"{kind}-{i}")))
        ]
    assert not different, f"claimed schemas unlike a fresh build: {different}"
    log(
        f"every one of the {2 * n} first ensures (durable and async) was served from the pool and has the catalog "
        "of a fresh build"
    )
    gather = _pool_gather(url, gather_reps, spares, inis)
    for ini in inis.values():
        ini.unlink()
    raw = {str(size): [_raw_claims(engine, mgr, size, f"{size}-{rep}") for rep in range(reps)] for size in (1, 3)}
    pool_ms, async_ms, careful_ms, raw_ms, fast_ms, floor_ms = (
        median_ms(samples[k]) for k in ("pool", "async", "careful", "raw", "fast", "floor")
    )
    # library claim / the claim's floor: medians, and per round (each contender once, back to back)
    per_round = {
        k: statistics.median(a / b for a, b in zip(samples[k], samples["raw"], strict=True)) for k in ("pool", "async")
    }
    ratios = {mode: _gather_ratio(gather, mode) for mode in ("async", "durable")}
    label = f"{existing} schemas present" if existing else "no other schema"
    print(f"\n== warm pool: a new project's first ensure ({label}; filled {filled.built} spares) ==")
    for name in ("pool", "async", "careful", "raw", "fast", "floor"):  # pool: workspace_pool_claim_commit = durable
        print(f"{name:<7} {spread(samples[name])}  p99 {p99_ms(samples[name]):.2f} ms")
    fast_p99 = p99_ms(samples["fast"])
    print(
        f"pool p50 = 1/{fast_ms / pool_ms:.1f} of the fast path's (target <= 1/20: {verdict(20 * pool_ms, fast_ms)}); "
        f"p99 1/{fast_p99 / p99_ms(samples['pool']):.1f} of its p99; "
        f"1/{floor_ms / pool_ms:.1f} of the floor's; the careful path's claim (3 round trips) "
        f"1/{fast_ms / careful_ms:.1f}"
    )
    print(
        f"async claim p50 (workspace_pool_claim_commit = async) = 1/{fast_ms / async_ms:.1f} of the fast path's "
        f"(target <= 1/20: {verdict(20 * async_ms, fast_ms)}); "
        f"p99 1/{fast_p99 / p99_ms(samples['async']):.1f} of its p99"
    )
    raw_p99 = p99_ms(samples["raw"])
    print(
        f"the claim's floor (raw: an expert's claim with a rename, psycopg2, 1 round trip, async commit) p50 = "
        f"1/{fast_ms / raw_ms:.1f} of the fast path's (p99 1/{fast_p99 / raw_p99:.1f}): "
        f"1/20 {'reachable' if 20 * raw_ms <= fast_ms else 'NOT reachable'} while a claim renames"
    )
    print(
        f"library claim / its floor: async {async_ms / raw_ms:.2f}x (per round {per_round['async']:.2f}x, p99 "
        f"{p99_ms(samples['async']) / raw_p99:.2f}x); durable {pool_ms / raw_ms:.2f}x (per round "
        f"{per_round['pool']:.2f}x, p99 {p99_ms(samples['pool']) / raw_p99:.2f}x)"
    )
    row_async, row_lifo, row_raw = (median_ms(in_a_row[k]) for k in ("async", "lifo", "raw"))
    print(
        f"claims in a row, no schema built between them (n={n}): async {spread(in_a_row['async'])} p99 "
        f"{p99_ms(in_a_row['async']):.2f} ms = 1/{fast_ms / row_async:.1f} of the interleaved fast path's p50 "
        f"(p99 1/{fast_p99 / p99_ms(in_a_row['async']):.1f}); raw floor {spread(in_a_row['raw'])} = "
        f"1/{fast_ms / row_raw:.1f}; library / floor {row_async / row_raw:.2f}x"
    )
    print(
        f"  the same from an engine with pool_use_lifo=True: {spread(in_a_row['lifo'])} p99 "
        f"{p99_ms(in_a_row['lifo']):.2f} ms = 1/{fast_ms / row_lifo:.1f} of the fast path's p50 "
        f"(p99 1/{fast_p99 / p99_ms(in_a_row['lifo']):.1f}); library / floor {row_lifo / row_raw:.2f}x"
    )
    for mode in ("async", "durable"):  # async: the default
        of_medians, of_rounds = ratios[mode]
        one, three = gather[f"{mode}-1"], gather[f"{mode}-3"]
        print(
            f"asyncio.gather from the pool ({mode} claim commit), {gather_reps} rounds: "
            f"1 project {spread(one['wall'])} (client CPU p50 {median_ms(one['cpu']):.2f} ms); "
            f"3 projects {spread(three['wall'])} (client CPU p50 {median_ms(three['cpu']):.2f} ms)  -> "
            f"{of_medians:.2f}x one (median of the rounds' ratios {of_rounds:.2f}x; target <= 2x: "
            f"{verdict(of_rounds, 2.0)})"
        )
    raw_ratio = statistics.median(raw["3"]) / statistics.median(raw["1"])
    print(f"raw claims, 1 connection:  {spread(raw['1'])}")
    print(
        f"raw claims, 3 connections: {spread(raw['3'])}  -> {raw_ratio:.2f}x one (the same statements, one "
        "batch each, from threads with no library: how far the server itself overlaps them)"
    )
    record(
        f"pool_{existing}",
        existing=existing,
        n=n,
        pool_p50_ms=pool_ms,
        pool_p99_ms=p99_ms(samples["pool"]),
        async_claim_p50_ms=async_ms,
        async_claim_p99_ms=p99_ms(samples["async"]),
        careful_claim_p50_ms=careful_ms,
        careful_claim_p99_ms=p99_ms(samples["careful"]),
        raw_claim_p50_ms=raw_ms,
        raw_claim_p99_ms=raw_p99,
        async_claim_over_raw=async_ms / raw_ms,
        async_claim_in_a_row_p50_ms=row_async,
        raw_claim_in_a_row_p50_ms=row_raw,
        lifo_claim_in_a_row_p50_ms=row_lifo,
        async_claim_over_raw_per_round=per_round["async"],
        pool_over_raw=pool_ms / raw_ms,
        pool_over_raw_per_round=per_round["pool"],
        fast_over_raw=fast_ms / raw_ms,
        fast_over_raw_p99=fast_p99 / raw_p99,
        fast_p50_ms=fast_ms,
        fast_p99_ms=p99_ms(samples["fast"]),
        floor_p50_ms=floor_ms,
        floor_p99_ms=p99_ms(samples["floor"]),
        fast_over_pool=fast_ms / pool_ms,
        fast_over_pool_p99=p99_ms(samples["fast"]) / p99_ms(samples["pool"]),
        fast_over_async_claim=fast_ms / async_ms,
        fast_over_async_claim_p99=p99_ms(samples["fast"]) / p99_ms(samples["async"]),
        gather_reps=gather_reps,
        gather_one_ms=median_ms(gather["async-1"]["wall"]),
        gather_three_ms=median_ms(gather["async-3"]["wall"]),
        gather_ratio=ratios["async"][0],
        gather_ratio_per_round=ratios["async"][1],
        gather_durable_one_ms=median_ms(gather["durable-1"]["wall"]),
        gather_durable_three_ms=median_ms(gather["durable-3"]["wall"]),
        gather_durable_ratio=ratios["durable"][0],
        gather_durable_ratio_per_round=ratios["durable"][1],
        gather_client_cpu_one_ms=median_ms(gather["async-1"]["cpu"]),
        gather_client_cpu_three_ms=median_ms(gather["async-3"]["cpu"]),
        raw_claims_one_ms=median_ms(raw["1"]),
        raw_claims_three_ms=median_ms(raw["3"]),
        raw_claims_ratio=raw_ratio,
    )


def _raw_claims(engine: sa.Engine, mgr: WorkspaceManager, size: int, tag: str) -> float:
    """Seconds for ``size`` threads, one held psycopg2 connection each, to claim a spare each with the
    statements a claim sends (the lock, the claim with its registry row) as one batch from BEGIN to COMMIT,
    with no library in the way."""
    conns = [engine.raw_connection() for _ in range(size)]
    batches = []
    for i in range(size):
        project_id = f"raw-{tag}-{i}"
        record = RegistryRecord(project_id, mgr.head, RegistryAction.CREATE, PlanPath.POOL)
        plan = SchemaPlan(schema_for(project_id), Flavor("-"), mgr.chain.claim_plan().steps, record=record)
        batches.append("\n".join([BEGIN, *plan.statements(), COMMIT]))

    def claim(i: int) -> None:
        dbapi = conns[i].driver_connection
        assert dbapi is not None
        dbapi.autocommit = True
        cursor = dbapi.cursor()
        cursor.execute(batches[i])
        cursor.close()
        dbapi.autocommit = False

    elapsed = timed_threads(claim, size)
    for held in conns:
        held.close()
    with engine.connect() as conn:  # each claimed a spare: its project is there
        made = conn.execute(
            sa.text(
                "SELECT count(*) FROM project_registry.workspace_config WHERE project_id LIKE :p AND last_path = 'pool'"
            ),
            {"p": f"raw-{tag}-%"},
        ).scalar_one()
    assert made == size, (tag, made)
    return elapsed


def _pool_gather(url: URL, reps: int, spares: int, inis: dict[str, Path]) -> dict[str, dict[str, list[float]]]:
    """asyncio.gather of 1 and of 3 new projects claimed from the pool through ProjectWorkspaceManager, for each
    claim commit (``inis``: workspace_pool_claim_commit = durable, async): ``reps`` rounds, each running the
    four (commit, size) contenders once, in an order rotated per round. Per contender: the seconds of each
    gather (``wall``) and the process's CPU seconds in it (``cpu``: the client's, one event loop)."""

    async def run() -> dict[str, dict[str, list[float]]]:
        engine = create_async_engine(async_url(url), pool_size=10)
        managers = {mode: ProjectWorkspaceManager(engine, ini, warm_pool=spares) for mode, ini in inis.items()}
        contenders = [(mode, size) for mode in managers for size in (1, 3)]
        samples: dict[str, dict[str, list[float]]] = {f"{m}-{n}": {"wall": [], "cpu": []} for m, n in contenders}
        try:
            for mode, amgr in managers.items():  # connections, plans, prepared statements
                await asyncio.gather(*(amgr.ensure(f"async-warm-{mode}-{i}") for i in range(3)))
            for rep in range(reps):
                shift = rep % len(contenders)
                for mode, size in contenders[shift:] + contenders[:shift]:
                    ids = [f"async-{mode}-{size}-{rep}-{i}" for i in range(size)]
                    cpu, started = time.process_time(), time.perf_counter()
                    results = await asyncio.gather(*(managers[mode].ensure_detailed(p) for p in ids))
                    samples[f"{mode}-{size}"]["wall"].append(time.perf_counter() - started)
                    samples[f"{mode}-{size}"]["cpu"].append(time.process_time() - cpu)
                    assert {r.path for r in results} == {"pool"}, results
        finally:
            await engine.dispose()
        return samples

    return asyncio.run(run())


def _gather_ratio(gather: dict[str, dict[str, list[float]]], mode: str) -> tuple[float, float]:
    """gather of 3 / gather of 1 for a claim commit: the ratio of the medians, and the median of the rounds'
    ratios (each round's 3 against the same round's 1, run back to back)."""
    one, three = gather[f"{mode}-1"]["wall"], gather[f"{mode}-3"]["wall"]
    rounds = statistics.median(b / a for a, b in zip(one, three, strict=True))
    return statistics.median(three) / statistics.median(one), rounds


def bench_soak(server: URL, minutes: float) -> None:
    """tests/soak.py for ``minutes`` on a scratch database: its report, and every broken invariant."""
    sys.path.insert(0, str(ROOT / "tests"))
    import soak

    seconds = minutes * 60
    settings = soak.Settings(seconds=seconds, grace_s=max(4.0, seconds / 12))
    log(f"live-application soak: {seconds:.0f} s, workspace_pool_grace {settings.grace_s:.0f} s")
    with scratch_database(server, "soak") as url, tempfile.TemporaryDirectory(prefix="wst-soak-") as workdir:
        outcome = soak.run(url.render_as_string(hide_password=False), Path(workdir), settings, echo=log)
    print(f"\n== live-application soak, {minutes:g} min ==\n{outcome.report}", flush=True)
    record("soak", **outcome.figures)
    if outcome.violations:
        print("\n".join(["invariants broken:", *outcome.violations]), flush=True)
        raise SystemExit(1)
    print("invariants: all hold", flush=True)


def run_lifecycle(quick: bool, jobs: int) -> None:
    """benchmarks/lifecycle.py's main (issue 20, ``--only lifecycle``, not in the default parts): export /
    import vs pg_dump / pg_restore, clone vs INSERT ... SELECT, bulk drop and exec vs raw loops."""
    import lifecycle

    argv = ["--jobs", str(jobs), *(["--quick"] if quick else [])]
    print(f"\n== tenant lifecycle: benchmarks/lifecycle.py {' '.join(argv)} ==", flush=True)
    lifecycle.main(argv)


def run_memory(quick: bool, sizes: str, repeat: int) -> None:
    """benchmarks/fleet_memory.py's main: the fleet sizes given (quick: its own --quick)."""
    import fleet_memory  # this folder is on sys.path when run as a script

    argv = ["--quick"] if quick else ["--sizes", sizes, "--repeat", str(repeat)]
    print(f"\n== server memory: benchmarks/fleet_memory.py {' '.join(argv)} ==", flush=True)
    result = fleet_memory.main(argv)
    if result:
        raise SystemExit(result)


def run_fleet(quick: bool, sizes: Sequence[int]) -> None:
    """benchmarks/fleet_upgrade.py's main(argv): once with --quick, else once per fleet size."""
    path = Path(__file__).with_name("fleet_upgrade.py")
    if not path.is_file():
        log("benchmarks/fleet_upgrade.py not present: skipping upgrade --all")
        return
    spec = importlib.util.spec_from_file_location("fleet_upgrade", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    main = module.main
    runs = [["--quick"]] if quick else [["--schemas", str(n)] for n in sizes]
    for argv in runs:
        print(f"\n== upgrade --all: benchmarks/fleet_upgrade.py {' '.join(argv)} ==", flush=True)
        result = main(argv) if inspect.signature(main).parameters else main()
        if isinstance(result, int) and result:
            raise SystemExit(result)


# ------------------------------------------------------------------------ main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes for a quick run")
    parser.add_argument("--fresh", type=int, help="fresh provisionings per contender (default 30, quick 20)")
    parser.add_argument("--gather-reps", type=int, help="rounds of gather 1/3/16 (default 9, quick 5)")
    parser.add_argument("--existing", type=int, help="schemas present for the scale test (default 10000, quick 1000)")
    parser.add_argument(
        "--existing-n", type=int, help="provisionings per side in the scale test (default 30, quick 20)"
    )
    parser.add_argument("--cached-calls", type=int, default=200_000, help="calls per cached-ensure run")
    parser.add_argument("--verify-calls", type=int, default=2000, help="ensure(verify=True) calls")
    parser.add_argument(
        "--only",
        action="append",
        choices=[
            "fresh",
            "cache",
            "gather",
            "existing",
            "fleet",
            "check",
            "startup",
            "pool",
            "soak",
            "memory",
            "lifecycle",
        ],
        help="run only these parts (repeatable)",
    )
    parser.add_argument(
        "--fleet-sizes",
        default="2000,10000",
        help="fleet sizes for benchmarks/fleet_upgrade.py, comma-separated (quick: its own --quick)",
    )
    parser.add_argument("--check-schemas", type=int, help="fleet size for check/status (default 10000, quick 1000)")
    parser.add_argument("--check-reps", type=int, help="rounds of check/no-op upgrade/status (default 5, quick 3)")
    parser.add_argument("--startup-schemas", type=int, default=2000, help="fleet size for the start-up comparison")
    parser.add_argument("--startup-reps", type=int, help="rounds of the start-up runs (default 15, quick 10)")
    parser.add_argument("--jobs", type=int, default=fleet.default_jobs(), help="connections for check and upgrade")
    parser.add_argument("--pool-n", type=int, help="ensures per contender for the warm pool (default 50, quick 30)")
    parser.add_argument("--pool-reps", type=int, help="rounds of raw claims on 1/3 connections (default 15, quick 9)")
    parser.add_argument(
        "--pool-gather-reps",
        type=int,
        help="rounds of asyncio.gather of 1/3 first ensures from the pool, per claim commit (default 30, quick 15)",
    )
    parser.add_argument("--minutes", type=float, help="length of the live-application soak (default 3, quick 1)")
    parser.add_argument(
        "--memory-sizes", default="1000,3000,8000", help="fleet sizes for benchmarks/fleet_memory.py (ascending)"
    )
    parser.add_argument("--memory-reps", type=int, default=3, help="interleaved rounds per size of fleet_memory.py")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    parser.add_argument(
        "--citus",
        metavar="URL",
        help="instead: the Citus benchmark (benchmarks/citus_bench.py) on the cluster of this coordinator",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.fresh = args.fresh or (20 if quick else 30)
    args.gather_reps = args.gather_reps or (5 if quick else 9)
    args.existing = args.existing if args.existing is not None else (1000 if quick else 10_000)
    args.existing_n = args.existing_n or (20 if quick else 30)
    args.check_schemas = args.check_schemas or (1000 if quick else 10_000)
    args.check_reps = args.check_reps or (3 if quick else 5)
    args.startup_reps = args.startup_reps or (10 if quick else 15)
    args.pool_n = args.pool_n or (30 if quick else 50)
    args.pool_reps = args.pool_reps or (9 if quick else 15)
    args.pool_gather_reps = args.pool_gather_reps or (15 if quick else 30)
    args.minutes = args.minutes or (1.0 if quick else 3.0)
    return args


def run_citus(url: str, quick: bool, jobs: int, json_path: str | None) -> int:
    """benchmarks/citus_bench.py's main: 1,000 schemas (quick: 100, one upgrade run) on a Citus cluster."""
    spec = importlib.util.spec_from_file_location("citus_bench", Path(__file__).with_name("citus_bench.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--url", url, "--jobs", str(jobs), *(["--schemas", "100", "--repeat", "1"] if quick else [])]
    result: int = module.main([*argv, *(["--json", json_path] if json_path else [])])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.citus:
        return run_citus(args.citus, args.quick, args.jobs, args.json)
    parts = set(args.only or ["fresh", "cache", "gather", "existing", "fleet", "check", "startup", "pool", "memory"])
    os.chdir(ROOT)
    server = server_url()
    print(f"server: {server.render_as_string(hide_password=True)}; cores: {os.cpu_count()}")
    started = time.perf_counter()
    if parts & {"fresh", "cache", "gather"}:
        with scratch_database(server, "main") as url:
            engine = engine_for(url, pool_size=10)
            mgr = WorkspaceManager(engine, ALEMBIC_INI)
            try:
                mgr.bootstrap()
                if "fresh" in parts:
                    bench_fresh(engine, mgr, args.fresh)
                if "cache" in parts:
                    bench_cache(engine, mgr, args.cached_calls, args.verify_calls)
                if "gather" in parts:
                    bench_gather(url, args.gather_reps)
            finally:
                mgr.close()
                engine.dispose()
    if "existing" in parts:
        bench_existing(server, args.existing, args.existing_n)
    if "fleet" in parts:
        run_fleet(args.quick, [int(n) for n in args.fleet_sizes.split(",") if n.strip()])
    if "check" in parts:
        bench_check(server, args.check_schemas, args.check_reps, args.jobs)
    if "startup" in parts:
        bench_startup(server, args.startup_schemas, args.startup_reps, args.jobs)
    if "pool" in parts:
        bench_pool(server, args.pool_n, args.pool_reps, args.pool_gather_reps, args.existing)
    if "soak" in parts:
        bench_soak(server, args.minutes)
    if "memory" in parts:
        run_memory(args.quick, args.memory_sizes, args.memory_reps)
    if "lifecycle" in parts:
        run_lifecycle(args.quick, args.jobs)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(RESULTS, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
