"""Benchmark on a Citus cluster (issue 11): fresh ``ensure`` and ``upgrade --all`` against the raw floor on
the same cluster, as medians and ratios.

    python tests/citus_cluster.py start                      # a coordinator and two workers; prints its URL
    python benchmarks/citus_bench.py --url URL [--schemas 1000] [--jobs 4] [--repeat 3] [--json PATH]
    python benchmarks/run.py --citus URL [...]                # the same

What is measured, on the coordinator's database (which must hold no project yet: the benchmark needs the
whole fleet to itself; it drops what it made at the end):

* fresh ``ensure``: ``--schemas`` new schemas, half through the library (``WorkspaceManager.ensure`` from
  ``--jobs`` threads on one engine), half by the floor (the same statements, sent by plain psycopg2 from
  ``--jobs`` held connections, one transaction per schema: SET LOCAL sharding on, CREATE SCHEMA, the
  search_path, the compiled chain, the registry row; one statement per round trip, as Citus needs), in
  alternating rounds. Per-schema latency (median) and schemas per second, each side.
* ``upgrade --all`` over the whole fleet (``--schemas`` tenant schemas across both workers) to a revision
  adding a column and an index: the floor sends that revision's statements into every schema from
  ``--jobs`` psycopg2 connections (BEGIN; SET LOCAL search_path; the statements; COMMIT: no registry row, which a
  hand-written script would also write), a second floor
  the very statements the library sends, in its round trips (lock timeout, lock, version check, registry
  row), the library runs ``fleet.upgrade`` (registry, the fleet read, per-schema lock, lock_timeout, version
  check, registry row in the same transaction; no version read first for a schema whose registry row says
  it is behind); ``--repeat`` times, interleaved, brought back down between runs (not timed); and the no-op
  run (every schema at head, every version read to confirm it). A first library run, which also stores
  ``check``'s reference for the new chain (once per chain), is not counted. A CHECKPOINT on every node before
  each timed run; each side's client CPU (this process's, or the contender's) per schema is printed too, and
  with ``--cluster-dir`` (a cluster ``tests/citus_cluster.py start`` made on this machine) the CPU its nodes'
  processes used, all three nodes together: on a busy machine these vary far less than wall times.
* ``--compare ROOT``: the same library run from another tree of workspace-tool (say ``git worktree add
  /tmp/base main``) in a process of its own, started once, warmed by an untimed run, then timed in every
  repetition beside this tree's (alternating which goes first): a paired A/B in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleet_upgrade import BASE_REV, NEW_REV, chain_copy, run_transactions  # noqa: E402

from workspace_tool import (  # noqa: E402
    WorkspaceManager,
    flavor,
    fleet,
    registry,
)
from workspace_tool.chain import Chain  # noqa: E402
from workspace_tool.flavor.citus import Citus  # noqa: E402
from workspace_tool.managers import cache  # noqa: E402
from workspace_tool.naming import schema_for  # noqa: E402
from workspace_tool.schema.migrate import Migration, Sending, fast_lane  # noqa: E402
from workspace_tool.schema.plan import Expected, SchemaPlan  # noqa: E402
from workspace_tool.sql import search_path_sql, sql_literal  # noqa: E402
from workspace_tool.urls import sync_url  # noqa: E402

ALEMBIC_INI = ROOT / "alembic.ini"
PREFIX = "cbench-"
REGISTRY_INSERT = (
    "INSERT INTO project_registry.workspace_config (project_id, schema_name, revision, status, last_action, "
    "last_duration_ms, last_path) VALUES ({pid}, {schema}, {rev}, 'ready', 'created', 0, 'floor')"
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def fresh_statements(chain: Chain, extension_schema: str, project_id: str) -> list[str]:
    """What the library sends to create a project schema, minus its lock and state read: SET LOCAL
    sharding on, CREATE SCHEMA, the search_path, the compiled chain, the registry row."""
    schema = schema_for(project_id)
    steps = chain.plan(None, chain.head).steps
    created = SchemaPlan(schema, Citus(extension_schema), steps, lock=False, create_schema=True)
    record = REGISTRY_INSERT.format(
        pid=sql_literal(project_id), schema=sql_literal(schema), rev=sql_literal(chain.head)
    )
    return [*created.statements(), record]


def library_fresh(manager: WorkspaceManager, ids: list[str], jobs: int) -> list[float]:
    def one(project_id: str) -> float:
        started = time.perf_counter()
        result = manager.ensure_detailed(project_id)
        assert result.action == "created", result
        return time.perf_counter() - started

    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(one, ids))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def bench_fresh(engine: sa.Engine, count: int, jobs: int, rounds: int) -> dict[str, Any]:
    manager = WorkspaceManager(engine, ALEMBIC_INI)
    extension_schema = manager.bootstrap()

    def floor(ids: list[str]) -> list[float]:
        return run_transactions(engine, [fresh_statements(manager.chain, extension_schema, p) for p in ids], jobs)

    library_fresh(manager, [f"{PREFIX}warm-lib-{i}" for i in range(jobs)], jobs)
    floor([f"{PREFIX}warm-floor-{i}" for i in range(jobs)])
    per_round = max(1, count // (2 * rounds))
    samples: dict[str, list[float]] = {"library": [], "floor": []}
    walls: dict[str, float] = {"library": 0.0, "floor": 0.0}
    made = 0
    for r in range(rounds):
        sides: list[tuple[str, Callable[[list[str]], list[float]]]] = [
            ("library", lambda ids: library_fresh(manager, ids, jobs)),
            ("floor", floor),
        ]
        for name, run in sides if r % 2 == 0 else sides[::-1]:
            ids = [f"{PREFIX}{name}-{r}-{i}" for i in range(per_round)]
            wall, times = timed(lambda run=run, ids=ids: run(ids))  # type: ignore[misc]
            samples[name].extend(times)
            walls[name] += wall
            made += len(ids)
        log(f"  fresh round {r + 1}/{rounds}: {made} schemas made")
    manager.close()
    n = len(samples["library"])
    lib, flo = statistics.median(samples["library"]), statistics.median(samples["floor"])
    print(f"\n== fresh ensure: {n} schemas per side, {jobs} connections each, {rounds} alternating rounds ==")
    print(f"  library ensure   median {ms(lib)}   {n / walls['library']:6.1f} schemas/s")
    print(f"  raw floor        median {ms(flo)}   {n / walls['floor']:6.1f} schemas/s")
    print(f"  library / floor: median latency {lib / flo:.2f}x, wall time {walls['library'] / walls['floor']:.2f}x")
    return {
        "schemas_per_side": n,
        "jobs": jobs,
        "library_median_ms": lib * 1000,
        "floor_median_ms": flo * 1000,
        "ratio": lib / flo,
        "library_per_s": n / walls["library"],
        "floor_per_s": n / walls["floor"],
        "wall_ratio": walls["library"] / walls["floor"],
    }


# The --compare contender: another tree's fleet.upgrade in a process of its own, timed on each line read.
CONTENDER = """
import json, sys, time
root, url, ini, jobs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sys.path.insert(0, root)
import sqlalchemy as sa
from workspace_tool import fleet
from workspace_tool.chain import Chain
from workspace_tool.urls import sync_url
assert fleet.__file__.startswith(root), fleet.__file__
engine = sa.create_engine(sync_url(url), pool_size=jobs + 2, max_overflow=4)
chain = Chain.load(ini)
for line in sys.stdin:
    cpu, started = time.process_time(), time.perf_counter()
    report = fleet.upgrade(engine, chain, jobs=jobs)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(json.dumps({"s": seconds, "cpu": cpu, "ok": report.counts()["ok"]}), flush=True)
"""


class Contender:
    """Another tree's library in a child process (``--compare``)."""

    def __init__(self, root: Path, url: str, ini: Path, jobs: int) -> None:
        self.root = root
        self.child = subprocess.Popen(
            [sys.executable, "-c", CONTENDER, str(root), url, str(ini), str(jobs)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=root,
        )

    def upgrade(self) -> tuple[float, float, int]:
        assert self.child.stdin is not None and self.child.stdout is not None
        self.child.stdin.write("run\n")
        self.child.stdin.flush()
        answer = json.loads(self.child.stdout.readline())
        return answer["s"], answer["cpu"], answer["ok"]

    def close(self) -> None:
        if self.child.stdin is not None:
            self.child.stdin.close()
        self.child.wait(60)


def checkpoint(engine: sa.Engine) -> None:
    """CHECKPOINT on the coordinator and on every worker, so no node's checkpointer lands in a timed run."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("CHECKPOINT"))
        conn.execute(sa.text("SELECT run_command_on_workers('CHECKPOINT')")).all()


def cpu_now() -> float:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


TICKS = os.sysconf("SC_CLK_TCK")


def nodes_cpu(cluster_dir: Path | None) -> float:
    """Seconds of CPU the cluster's nodes have used so far: each postmaster's own and its exited children's
    (cutime), and its live children's (the backends, Citus's connections between nodes)."""
    if cluster_dir is None:
        return 0.0

    def ticks(pid: str, fields: slice) -> int:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return sum(int(f) for f in stat[stat.rindex(")") + 2 :].split()[fields])

    total = 0
    for node in json.loads((cluster_dir / "cluster.json").read_text())["nodes"]:
        postmaster = (Path(node["data"]) / "postmaster.pid").read_text().split()[0]
        total += ticks(postmaster, slice(11, 15))  # utime, stime, cutime, cstime
        for child in Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split():
            with contextlib.suppress(OSError):
                total += ticks(child, slice(11, 13))
    return total / TICKS


def upgrade_statements(chain: Chain, project_id: str, schema: str) -> list[str]:
    """What ``fleet.upgrade`` sends for one schema on Citus (its fast lane), one round trip each, as the flavor
    groups the statements (``Citus.round_trips``): the lock timeout (propagated to the workers) with the
    search_path, the schema's lock with the version check, the revision, the version move with the registry
    row. Sent by ``run_transactions``, whose COMMIT takes a round trip of its own: the library's shares the
    registry row's (``send.send_trips``), so this floor sends one round trip more than the library does."""
    flavor = Citus("workspace_extensions")
    how = Sending(chain, flavor, lock_timeout_ms=fleet.DEFAULT_LOCK_TIMEOUT_MS)
    plan = fast_lane(how, Migration(project_id, schema, NEW_REV, fleet.UPGRADE), Expected(True, BASE_REV))
    assert plan is not None
    return ["\n".join(trip) for trip in flavor.round_trips(plan.statements())]


def bench_upgrade(
    engine: sa.Engine, jobs: int, repeat: int, compare: Path | None = None, cluster_dir: Path | None = None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        ini = chain_copy(Path(tmp))
        chain = Chain.load(ini)
        revision = chain.plan(BASE_REV, NEW_REV).statements
        assert revision is not None, "the bench revision must compile"
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT project_id, schema_name FROM project_registry.workspace_config WHERE project_id LIKE :p"
                ),
                {"p": PREFIX + "%"},
            ).all()
        n = len(rows)
        floors: dict[str, list[list[str]]] = {
            # the revision alone: BEGIN; SET LOCAL search_path; its statements; COMMIT
            "floor": [[search_path_sql(r.schema_name, "workspace_extensions"), *revision] for r in rows],
            # the very statements the library sends, with nothing around them
            "same SQL": [upgrade_statements(chain, r.project_id, r.schema_name) for r in rows],
        }
        walls: dict[str, list[float]] = {"floor": [], "same SQL": [], "library": [], "no-op": []}
        cpus: dict[str, list[float]] = {"floor": [], "same SQL": [], "library": []}
        servers: dict[str, list[float]] = {"floor": [], "same SQL": [], "library": []}
        medians = []
        # not timed: the first run with a new chain also builds and stores check's reference (once per chain)
        first, _ = timed(lambda: fleet.upgrade(engine, chain, jobs=jobs))
        assert fleet.downgrade(engine, chain, target=BASE_REV, jobs=jobs).ok
        log(f"  first upgrade with this chain (stores check's reference; not counted): {first:.1f} s")
        contender = None
        if compare is not None:
            contender = Contender(compare, engine.url.render_as_string(hide_password=False), ini, jobs)
            walls["compare"], cpus["compare"], servers["compare"] = [], [], []
            assert contender.upgrade()[2] == n  # its warm-up, not counted
            assert fleet.downgrade(engine, chain, target=BASE_REV, jobs=jobs).ok

        def library() -> None:
            checkpoint(engine)
            cpu, server = cpu_now(), nodes_cpu(cluster_dir)
            t, up = timed(lambda: fleet.upgrade(engine, chain, jobs=jobs))
            cpus["library"].append(cpu_now() - cpu)
            servers["library"].append(nodes_cpu(cluster_dir) - server)
            assert up.ok and up.counts()["ok"] == n, up.counts()
            walls["library"].append(t)
            medians.append(statistics.median(r.ms for r in up.results))

        def compared() -> None:
            assert contender is not None
            checkpoint(engine)
            server = nodes_cpu(cluster_dir)
            t, cpu, ok = contender.upgrade()
            servers["compare"].append(nodes_cpu(cluster_dir) - server)
            assert ok == n, ok
            walls["compare"].append(t)
            cpus["compare"].append(cpu)
            assert fleet.downgrade(engine, chain, target=BASE_REV, jobs=jobs).ok

        for i in range(repeat):
            for name, transactions in floors.items():
                checkpoint(engine)
                cpu, server = cpu_now(), nodes_cpu(cluster_dir)
                walls[name].append(timed(lambda t=transactions: run_transactions(engine, t, jobs))[0])  # type: ignore[misc]
                cpus[name].append(cpu_now() - cpu)
                servers[name].append(nodes_cpu(cluster_dir) - server)
                assert fleet.downgrade(engine, chain, target=BASE_REV, jobs=jobs).ok
            if contender is not None and i % 2 == 1:
                compared()
            library()
            t, noop = timed(lambda: fleet.upgrade(engine, chain, jobs=jobs))
            assert noop.counts()["skipped"] == n, noop.counts()
            walls["no-op"].append(t)
            assert fleet.downgrade(engine, chain, target=BASE_REV, jobs=jobs).ok
            if contender is not None and i % 2 == 0:
                compared()
            log(
                "  upgrade run {}/{}: {}".format(
                    i + 1, repeat, ", ".join(f"{k} {v[-1]:.1f} s" for k, v in walls.items())
                )
            )
        with engine.begin() as conn:  # the reference the runs stored for this temporary chain
            conn.execute(
                sa.text("DELETE FROM project_registry.reference_catalog WHERE key_parts->>'chain' = :c"),
                {"c": chain.fingerprint},
            )
        if contender is not None:
            contender.close()
    floor, same, lib, noop = (statistics.median(walls[k]) for k in ("floor", "same SQL", "library", "no-op"))
    pairs = statistics.median(lb / fl for lb, fl in zip(walls["library"], walls["floor"], strict=True))
    transaction = statistics.median(medians)
    print(f"\n== upgrade --all {BASE_REV} -> {NEW_REV}: {n} tenant schemas, {jobs} connections, medians of {repeat} ==")
    print(f"  raw floor (psycopg2)         {floor:7.1f} s  {floor / n * 1000:6.1f} ms/schema")
    print(f"  the library's SQL (psycopg2) {same:7.1f} s  {same / n * 1000:6.1f} ms/schema   {same / floor:.2f}x floor")
    print(f"  library fleet.upgrade        {lib:7.1f} s  {lib / n * 1000:6.1f} ms/schema   {lib / floor:.2f}x floor")
    print(f"    per-run ratios' median {pairs:.2f}x; library / its own SQL {lib / same:.2f}x")
    print(f"    per-schema transaction inside the run (median): {transaction:.1f} ms")
    print(f"  no-op run                    {noop:7.1f} s  {noop / n * 1000:6.1f} ms/schema")
    cpu_ms = {k: statistics.median(v) / n * 1000 for k, v in cpus.items()}
    print("  client CPU per schema (ms): " + ", ".join(f"{k} {v:.3f}" for k, v in cpu_ms.items()))
    server_ms = {k: statistics.median(v) / n * 1000 for k, v in servers.items() if v}
    if cluster_dir is not None:
        print("  the nodes' CPU per schema (ms): " + ", ".join(f"{k} {v:.3f}" for k, v in server_ms.items()))
        both = {k: statistics.median(c + s for c, s in zip(cpus[k], servers[k], strict=True)) for k in servers}
        print(
            "  client + nodes CPU / the floor's: "
            + ", ".join(f"{k} {v / both['floor']:.3f}x" for k, v in both.items() if k != "floor")
        )
    compared_to: dict[str, Any] = {}
    if compare is not None:
        other = statistics.median(walls["compare"])
        ab = [lb / cb for lb, cb in zip(walls["library"], walls["compare"], strict=True)]
        theirs = statistics.median(c / fl for c, fl in zip(walls["compare"], walls["floor"], strict=True))
        print(f"  --compare {compare}:")
        per = f"{other / n * 1000:6.1f} ms/schema   {other / floor:.2f}x floor"
        print(f"    its fleet.upgrade           {other:7.1f} s  {per}")
        print(f"    per-run ratios' median {theirs:.2f}x; this tree / it, per run: {', '.join(f'{r:.3f}' for r in ab)}")
        print(f"    this tree / it: median of the per-run ratios {statistics.median(ab):.3f}x")
        compared_to = {"root": str(compare), "compare_s": other, "ab_ratios": ab, "ratio_of_runs": theirs}
    return {
        "schemas": n,
        "jobs": jobs,
        "repeat": repeat,
        "floor_s": floor,
        "same_sql_s": same,
        "library_s": lib,
        "ratio": lib / floor,
        "ratio_of_runs": pairs,
        "ratio_to_same_sql": lib / same,
        "transaction_median_ms": transaction,
        "noop_s": noop,
        "first_run_s": first,
        "runs": walls,
        "cpu_ms_per_schema": cpu_ms,
        "nodes_cpu_ms_per_schema": server_ms,
        "compare": compared_to,
    }


def placement(engine: sa.Engine) -> dict[str, int]:
    manager = WorkspaceManager(engine, ALEMBIC_INI)
    counts: dict[str, int] = {}
    for status in manager.status():
        counts[str(status.node)] = counts.get(str(status.node), 0) + 1
    return counts


def drop_all(engine: sa.Engine, jobs: int) -> None:
    """Drop every schema the benchmark made (each with its registry row), from ``jobs`` connections."""
    with engine.connect() as conn:
        if not registry.present(conn):
            return  # a cluster no workspace-tool has used yet
        ids = list(
            conn.execute(
                sa.text("SELECT project_id FROM project_registry.workspace_config WHERE project_id LIKE :p"),
                {"p": PREFIX + "%"},
            ).scalars()
        )
    manager = WorkspaceManager(engine, ALEMBIC_INI)
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(manager.drop, ids))
    manager.close()


def check_empty(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        if flavor.read(conn).name != Citus.name:
            raise SystemExit("error: this database does not run Citus (no citus extension on it)")
        if registry.present(conn):
            others = conn.execute(
                sa.text("SELECT count(*) FROM project_registry.workspace_config WHERE project_id NOT LIKE :p"),
                {"p": PREFIX + "%"},
            ).scalar()
            if others:
                raise SystemExit(
                    f"error: this database holds {others} project(s): the benchmark needs the fleet to itself"
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", default=os.environ.get("WORKSPACE_TOOL_CITUS_URL"), help="the coordinator")
    parser.add_argument("--schemas", type=int, default=1000, help="fleet size (half made by each side)")
    parser.add_argument("--jobs", type=int, default=fleet.default_jobs(), help="connections per side")
    parser.add_argument("--repeat", type=int, default=3, help="upgrade --all runs per side")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of fresh ensure per side")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    parser.add_argument("--compare", metavar="ROOT", type=Path, help="also time another workspace-tool tree's run")
    parser.add_argument("--cluster-dir", type=Path, help="the local cluster's directory: its nodes' CPU too")
    parser.add_argument("--skip-fresh", action="store_true", help="make the fleet with fleet.provision, untimed")
    args = parser.parse_args(argv)
    if not args.url:
        raise SystemExit("error: name the coordinator: --url URL (or $WORKSPACE_TOOL_CITUS_URL)")
    engine = sa.create_engine(sync_url(args.url), pool_size=args.jobs + 2, max_overflow=4)
    started = time.perf_counter()
    results: dict[str, Any] = {}
    try:
        check_empty(engine)
        drop_all(engine, args.jobs)  # what an interrupted run left
        cache.clear()
        print(f"coordinator: {engine.url.render_as_string(hide_password=True)}; cores: {os.cpu_count()}")
        if args.skip_fresh:
            ids = [f"{PREFIX}fleet-{i}" for i in range(args.schemas)]
            with tempfile.TemporaryDirectory() as tmp:
                assert fleet.provision(
                    engine, Chain.load(chain_copy(Path(tmp))), ids, target=BASE_REV, jobs=args.jobs
                ).ok
        else:
            results["fresh"] = bench_fresh(engine, args.schemas, args.jobs, args.rounds)
        results["placement"] = placement(engine)
        print("  schemas per node: " + ", ".join(f"{k} {v}" for k, v in sorted(results["placement"].items())))
        results["upgrade"] = bench_upgrade(engine, args.jobs, args.repeat, args.compare, args.cluster_dir)
    finally:
        log("dropping the benchmark's schemas ...")
        drop_all(engine, args.jobs)
        engine.dispose()
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
