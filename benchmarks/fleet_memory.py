"""Benchmark: server backends' private memory and wall time of `upgrade --all`, with and without recycling.

A PostgreSQL backend caches every relation it touches for its whole life, so a connection that migrates
schema after schema grows with the fleet. ``workspace_tool.recycling`` replaces each connection after
``recycle_after`` schemas. Here, for growing fleets (default 1,000, 3,000 and 8,000 schemas, the same
database grown from one size to the next), every schema one revision behind (a column and an index on an
existing table, as in benchmarks/fleet_upgrade.py), interleaved and repeated:

* never:  ``fleet.upgrade(engine, chain, jobs=J, recycle_after=0)`` (one connection per job for the run),
          twice per round: the two give the noise of the machine (their ratio, an A/A comparison);
* N:      the same with ``recycle_after=N`` (default: the library's default; several can be compared).

Before each timed run the schemas are brought back down (not timed), the engine's pool is emptied (every
run starts on new backends, as a new `workspace-tool` process does) and a CHECKPOINT is taken. While it
runs, a thread samples the private memory of the database's client backends every 50 ms: ``RssAnon`` of
``/proc/<pid>/status`` (resident anonymous memory: the backend's heap, its caches; shared buffers are
``RssShmem``, not counted), so the server must run on this machine (the embedded one does); the figure
is the largest any backend reached during the run. Beside the wall time, each run's CPU time: this
process's and its server backends' (the postmaster's reaped children, read once the pool is emptied; an
autovacuum worker that ends meanwhile is counted too), which other processes' load moves less than the
wall time.

Then, on single backends: the private memory gained per schema whose version is read and per schema
migrated; a new connection (connect and a first statement); the first schema migrated on a new backend
against the next ones; reading ``pg_backend_memory_contexts`` on a backend that read N schemas (what
deciding by the backend's own memory would cost); and what one recycle costs, from short paired trials
on one connection (100 schemas down and up, recycled every 20 or never, in alternating order), which the
load of other processes moves far less than whole runs.

    python benchmarks/fleet_memory.py [--sizes 1000,3000,8000] [--jobs 2] [--recycle-after 200,500] [--repeat 3]
    python benchmarks/fleet_memory.py --sizes 1000 --repeat 0      # the single-backend measurements only
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet_upgrade import BASE_REV, NEW_REV, chain_copy, checkpoint, server_url  # noqa: E402

from workspace_tool import fleet, recycling, registry  # noqa: E402
from workspace_tool.chain import Chain  # noqa: E402
from workspace_tool.fleet.migrator import Migrator, RunOptions  # noqa: E402
from workspace_tool.registry.inventory import read_versions  # noqa: E402
from workspace_tool.schema.operation import UPGRADE, Work  # noqa: E402

SAMPLE_S = 0.05
_BACKENDS = sa.text(
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
    "AND backend_type = 'client backend'"
)


def private_mb(pid: int) -> float | None:
    """RssAnon of a process, in MB (None once it is gone, or when /proc can't tell)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class Sampler:
    """Samples the private memory of every client backend of the database but its own, in a thread."""

    engine: sa.Engine
    peaks: dict[int, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def _run(self) -> None:
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            while True:
                for pid in conn.execute(_BACKENDS).scalars():
                    mb = private_mb(pid)
                    if mb is not None and mb > self.peaks.get(pid, 0.0):
                        self.peaks[pid] = mb
                if self._stop.wait(SAMPLE_S):
                    return

    @property
    def largest(self) -> float:
        return max(self.peaks.values(), default=float("nan"))


def postmaster(engine: sa.Engine) -> int:
    """The server's postmaster: the parent of a backend."""
    with engine.connect() as conn:
        backend = int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())
        with open(f"/proc/{backend}/stat") as stat:  # while the backend is there
            return int(stat.read().rsplit(")", 1)[1].split()[1])


def reaped_cpu(pid: int) -> float:
    """CPU seconds of the exited (and reaped) children of ``pid``: the backends that have ended."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # cutime + cstime


def settled(engine: sa.Engine, ended: Iterable[int] = ()) -> None:
    """Empty the pool and wait until the database has no client backend left, and the backends ``ended``
    (and those seen meanwhile) are gone from /proc: exited and reaped, so their CPU time is counted."""
    engine.dispose()
    probe = sa.create_engine(engine.url, poolclass=sa.pool.NullPool)
    pids = set(ended)
    try:
        for _ in range(200):
            with probe.connect() as conn:
                pids.update(conn.execute(_BACKENDS).scalars())
                left = conn.execute(_BACKENDS).first()
            if not left and not any(os.path.exists(f"/proc/{pid}") for pid in pids):
                return
            time.sleep(0.05)
    finally:
        probe.dispose()


@dataclass
class Run:
    seconds: float
    largest_mb: float
    backends: int
    cpu: float  # CPU seconds: this process's and the run's server backends'


def upgrade_run(engine: sa.Engine, monitor: sa.Engine, chain: Chain, n: int, jobs: int, recycle_after: int) -> Run:
    """Every schema down to BASE_REV (not timed), the pool emptied, a CHECKPOINT; then the timed upgrade.
    Its CPU time is this process's plus that of the server's backends that ended during the run and after
    it, once the pool is emptied (all of the run's: the postmaster reaps them), which the load of other
    processes on the machine changes far less than the wall time."""
    down = fleet.downgrade(engine, chain, target=BASE_REV, jobs=jobs)
    assert down.ok, down.failed[:3]
    engine.dispose()  # every run starts on new backends, as a new process does
    checkpoint(engine)
    settled(engine)
    server = postmaster(monitor)
    settled(engine)
    cpu_before = reaped_cpu(server) + sum(os.times()[:2])
    with Sampler(monitor) as sampler:
        started = time.perf_counter()
        report = fleet.upgrade(engine, chain, jobs=jobs, recycle_after=recycle_after)
        seconds = time.perf_counter() - started
        time.sleep(2 * SAMPLE_S)  # the backends still open (back in the pool) are sampled once more
    settled(engine, sampler.peaks)
    cpu = reaped_cpu(server) + sum(os.times()[:2]) - cpu_before
    assert report.ok and report.counts()["ok"] == n, report.counts()
    return Run(seconds, sampler.largest, len(sampler.peaks), cpu)


def grow(engine: sa.Engine, chain: Chain, have: int, want: int, jobs: int) -> None:
    """Provision project schemas bench-<have>..bench-<want - 1> at NEW_REV (they are taken down before each run)."""
    if want <= have:
        return
    ids = [f"bench-{i:05d}" for i in range(have, want)]
    started = time.perf_counter()
    report = fleet.provision(engine, chain, ids, target=NEW_REV, jobs=jobs)
    assert report.ok, report.failed[:3]
    took = time.perf_counter() - started
    print(f"provisioned {len(ids)} schemas (fleet of {want}) in {took:.1f}s", flush=True)


def backend_mb(conn: sa.Connection) -> float:
    pid = int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())
    conn.rollback()
    return private_mb(pid) or float("nan")


def costs(engine: sa.Engine, chain: Chain, n: int, reps: int = 15) -> dict[str, float]:
    """What recycling saves and costs, measured on single backends: the private memory a backend gains
    per schema whose version it reads, and per schema it migrates (the bench revision), with neither
    recycled; a new connection (connect + SELECT 1); the first schema migrated on a new backend against
    the next ones; and a read of the backend's own memory contexts (what deciding by memory would cost)."""
    connects = []
    for _ in range(reps):
        started = time.perf_counter()
        raw = engine.raw_connection()
        raw.detach()  # a real connect each time, closed after
        cursor = raw.cursor()
        cursor.execute("SELECT 1")
        cursor.fetchall()
        connects.append(time.perf_counter() - started)
        raw.close()
    ids = [f"bench-{i:05d}" for i in range(n)]
    schemas = [f"project_bench_{i:05d}" for i in range(n)]
    engine.dispose()
    with engine.connect() as conn:
        before = backend_mb(conn)
        with conn.begin():
            read_versions(conn, schemas)
        read_kb = (backend_mb(conn) - before) * 1024 / n
        query = sa.text("SELECT sum(total_bytes) FROM pg_backend_memory_contexts")
        samples = []
        for _ in range(reps):
            started = time.perf_counter()
            total = conn.execute(query).scalar()
            samples.append(time.perf_counter() - started)
            conn.rollback()
        conn.invalidate()  # not back to the pool: it touched them all

    assert fleet.downgrade(engine, chain, ids, target=BASE_REV, jobs=2).ok
    engine.dispose()
    with engine.connect() as conn:
        flavor = registry.bootstrap(conn)
    options = RunOptions(UPGRADE, NEW_REV, 5000, 0, flavor, recycle_after=0)
    migrator = Migrator(engine, chain, options)
    try:
        before = backend_mb(migrator.connection())
        ms = []
        for project_id, schema in zip(ids, schemas, strict=True):
            result = migrator.run(Work(project_id, schema, BASE_REV))
            assert result.status == "ok", result
            ms.append(result.ms)
        migrate_kb = (backend_mb(migrator.connection()) - before) * 1024 / n
    finally:
        migrator.close()
    return {
        "read_kb": read_kb,
        "migrate_kb": migrate_kb,
        "connect_ms": statistics.median(connects) * 1000,
        "first_ms": ms[0],
        "next_ms": statistics.median(ms[1:]),
        "memory_contexts_ms": statistics.median(samples) * 1000,
        "memory_contexts_mb": float(total or 0) / 2**20,
    }


def recycle_cost(engine: sa.Engine, chain: Chain, trials: int, size: int = 100, every: int = 20) -> dict[str, float]:
    """What one recycle costs, measured where the load of other processes moves it least: short paired
    trials on one connection (``jobs=1``), each ``size`` schemas upgraded then downgraded, recycled every
    ``every`` schemas or never, the two in alternating order; the median of the paired differences over
    the recycles a trial made, and the median time per schema of the trials never recycled."""
    ids = [f"bench-{i:05d}" for i in range(size)]
    connects: list[int] = []

    def connected(*args: object) -> None:
        connects.append(1)

    sa.event.listen(engine, "connect", connected)

    def trial(after: int) -> tuple[float, int]:
        engine.dispose()
        before = len(connects)
        started = time.perf_counter()
        assert fleet.downgrade(engine, chain, ids, target=BASE_REV, jobs=1, recycle_after=after).ok
        assert fleet.upgrade(engine, chain, ids, target=NEW_REV, jobs=1, recycle_after=after).ok
        return time.perf_counter() - started, len(connects) - before

    differences, per_schema, recycles = [], [], []
    for i in range(trials):
        order = (every, 0) if i % 2 == 0 else (0, every)
        timed = {after: trial(after) for after in order}
        (recycled, new), (never, old) = timed[every], timed[0]
        recycles.append(new - old)
        differences.append((recycled - never) / max(1, new - old))
        per_schema.append(never / (2 * size))
    sa.event.remove(engine, "connect", connected)
    return {
        "recycle_ms": statistics.median(differences) * 1000,
        "schema_ms": statistics.median(per_schema) * 1000,
        "recycles": statistics.median(recycles),
        "trials": trials,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1000,3000,8000", help="fleet sizes, comma-separated, ascending")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--recycle-after",
        default=str(recycling.DEFAULT_RECYCLE_AFTER),
        help="the recycle_after values to compare with 0 (never), comma-separated (default: the library's)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs per setting and size")
    parser.add_argument("--probe", type=int, default=1000, help="schemas for the single-backend measurements")
    parser.add_argument("--trials", type=int, default=20, help="paired trials measuring what one recycle costs")
    parser.add_argument("--quick", action="store_true", help="fleets of 300 and 1,000, one run each")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(",") if s.strip())
    if args.quick:
        sizes, args.repeat = [300, 1000], 1
    jobs = args.jobs
    # (label, recycle_after): "never" twice, the second as the A/A reference for the noise
    settings = [("never", 0), ("never again", 0)]
    settings += [(a.strip(), int(a)) for a in args.recycle_after.split(",") if a.strip() and int(a) > 0]

    server = server_url()
    name = f"wst_bench_memory_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine = sa.create_engine(server.set(database=name), pool_size=jobs + 2, max_overflow=4)
    monitor = sa.create_engine(server.set(database=name), poolclass=sa.pool.NullPool)
    results: dict[int, dict[str, list[Run]]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            chain = Chain.load(chain_copy(Path(tmp)))
            have = 0
            for n in sizes:
                grow(engine, chain, have, n, jobs)
                have = n
                runs: dict[str, list[Run]] = {label: [] for label, _ in settings}
                for rep in range(args.repeat):
                    for label, after in settings if rep % 2 == 0 else list(reversed(settings)):
                        run = upgrade_run(engine, monitor, chain, n, jobs, after)
                        runs[label].append(run)
                        print(
                            f"{n} schemas, recycle_after {label:>11}: {run.seconds:6.2f}s (CPU {run.cpu:6.2f}s), "
                            f"largest backend {run.largest_mb:5.1f} MB ({run.backends} backends seen)",
                            flush=True,
                        )
                results[n] = runs
            probe = min(have, args.probe)
            measured = costs(engine, chain, probe)
            cost = recycle_cost(engine, chain, args.trials)
    finally:
        engine.dispose()
        monitor.dispose()
        with admin.connect() as conn:
            conn.execute(
                sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"), {"d": name}
            )
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()

    print(
        f"\nupgrade --all {BASE_REV} -> {NEW_REV}, --jobs {jobs}; medians of {args.repeat} interleaved runs "
        "(CHECKPOINT before each); memory: the largest backend's RssAnon over all runs"
    )
    print(
        "schemas | recycle_after | largest backend | wall time | vs never | CPU time | vs never  (ratios: medians "
        "of the per-round ratios; 'never again' against 'never' is the noise)"
    )
    for n, runs in results.items():
        never = runs["never"]
        if not never:  # --repeat 0: the single-backend measurements only
            continue
        for label, got in runs.items():
            wall = statistics.median(b.seconds / a.seconds for a, b in zip(never, got, strict=True))
            cpu = statistics.median(b.cpu / a.cpu for a, b in zip(never, got, strict=True))
            print(
                f"{n:7d} | {label:>13} | {max(r.largest_mb for r in got):12.1f} MB | "
                f"{statistics.median(r.seconds for r in got):8.2f}s | {wall:.3f}x | "
                f"{statistics.median(r.cpu for r in got):7.2f}s | {cpu:.3f}x"
            )
    print(
        f"\none backend, {probe} schemas, never recycled: +{measured['read_kb']:.1f} KB of private memory per "
        f"schema whose version it read, +{measured['migrate_kb']:.1f} KB per schema it migrated"
        f"\na new connection (connect + SELECT 1): {measured['connect_ms']:.2f} ms; the first schema migrated "
        f"on a new backend {measured['first_ms']:.2f} ms, the next ones {measured['next_ms']:.2f} ms (median)"
        f"\nreading pg_backend_memory_contexts on the backend that read {probe} schemas' versions: "
        f"{measured['memory_contexts_ms']:.2f} ms ({measured['memory_contexts_mb']:.1f} MB in its contexts)"
    )
    share = cost["recycle_ms"] / (recycling.DEFAULT_RECYCLE_AFTER * cost["schema_ms"])
    print(
        f"one recycle costs {cost['recycle_ms']:.2f} ms (median of {cost['trials']} paired trials of 100 schemas "
        f"down and up on one connection, recycled every 20 ({cost['recycles']:.0f} recycles a trial) or never); "
        f"a schema {cost['schema_ms']:.2f} ms there: recycling every {recycling.DEFAULT_RECYCLE_AFTER} schemas "
        f"costs {share:.2%} of a run's migrations"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
