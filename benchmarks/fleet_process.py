"""Benchmark: `workspace-tool upgrade --all` as a whole process (start-up included) against the raw floor.

Provisions N project schemas (default 2,000) at ``BASE_REV`` of a copy of the main chain with one more
revision (``fleet_upgrade.EXTRA_REVISION``: a column and an index), then, interleaved (the order rotates
each round), a CHECKPOINT before each timed run, schemas brought back down (untimed) after each:

* floor:   per schema, the revision's ALTERs, its version UPDATE and a registry row UPDATE in one
           transaction sent as ONE round trip (BEGIN ... COMMIT), from ``--jobs`` held psycopg2 connections
           of a process already running: what a hand-written script would send, with no start-up; and the
           same from new connections (whose backends, like the process's, have cached no relation yet);
* floor, async commits: the same batches committed without waiting for their WAL flush (``SET LOCAL
           synchronous_commit = off``), then one transaction that waits for the flush of them all: what the
           tool sends by default (``--commit async``), for the same comparison without the flushes;
* process: ``workspace-tool upgrade --all --jobs J`` as a new process (this tree), and the same with
           ``--commit durable`` (each schema's commit waits for its flush, as the floor's does);
* ``--compare ROOT`` (repeatable): the same process run from another tree of workspace-tool (say
  ``git archive`` of an earlier commit), for a before/after in the same run;
* no-op:   ``workspace-tool upgrade --all`` with every schema already at head (reference).

Every contender gets its own cache directory (``WORKSPACE_TOOL_CACHE_DIR``) and bytecode cache
(``PYTHONPYCACHEPREFIX``, even when PYTHONDONTWRITEBYTECODE is set), warmed by one untimed run, as a deployed
tool's are. Prints medians, the ratio of medians to the floor, and the median of the per-round
ratios (steadier on a shared machine).

    python benchmarks/fleet_process.py [--schemas 2000] [--jobs 4] [--rounds 3] [--compare /tmp/old-tree]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
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

from fleet_upgrade import BASE_REV, NEW_REV, chain_copy, checkpoint, in_threads, server_url  # noqa: E402

from workspace_tool import fleet  # noqa: E402
from workspace_tool.chain import Chain  # noqa: E402
from workspace_tool.naming import schema_for  # noqa: E402
from workspace_tool.sql import search_path_sql, sql_literal  # noqa: E402

EXTENSION_SCHEMA = "workspace_extensions"


def floor_batches(chain: Chain, ids: list[str]) -> list[str]:
    sql = chain.plan(BASE_REV, NEW_REV).sql
    assert sql is not None
    return [
        "BEGIN ISOLATION LEVEL READ COMMITTED;\n"
        + search_path_sql(schema_for(pid), EXTENSION_SCHEMA)
        + ";\n"
        + sql
        + f"UPDATE project_registry.workspace_config SET revision = {sql_literal(NEW_REV)}, last_action = 'upgrade', "
        f"last_duration_ms = 0, last_path = 'floor', updated_at = now() WHERE project_id = {sql_literal(pid)};\n"
        "COMMIT;"
        for pid in ids
    ]


def without_waiting(batches: list[str]) -> list[str]:
    """The floor's batches, each committed without waiting for its WAL flush."""
    begin = "BEGIN ISOLATION LEVEL READ COMMITTED;\n"
    changed = [b.replace(begin, begin + "SET LOCAL synchronous_commit = off;\n", 1) for b in batches]
    assert all(a != b for a, b in zip(changed, batches, strict=True))
    return changed


def send_and_flush(engine: sa.Engine, batches: list[str], jobs: int) -> None:
    """``send_all``, then one transaction that takes an id and commits: it waits for the WAL flush of every
    commit before it."""
    send_all(engine, batches, jobs)
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT txid_current()"))


def send_all(engine: sa.Engine, batches: list[str], jobs: int) -> None:
    """Each batch in ONE round trip, from ``jobs`` held psycopg2 connections in autocommit."""
    work = list(reversed(batches))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        raw = engine.raw_connection()
        dbapi = raw.driver_connection
        assert dbapi is not None
        dbapi.autocommit = True
        cursor = dbapi.cursor()
        try:
            while True:
                with lock:
                    if not work or errors:
                        return
                    batch = work.pop()
                cursor.execute(batch)
        except BaseException as exc:
            errors.append(exc)
        finally:
            cursor.close()
            raw.invalidate()  # never back to the pool in autocommit

    in_threads(worker, jobs, errors)


ASYNC_FLOOR = "floor, async commits + one flush"
CPU: dict[str, list[float]] = {}  # label -> the process's own CPU seconds (user + system) per timed run


def process(argv: list[str], env: dict[str, str], cwd: Path, label: str | None = None) -> None:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert done.returncode == 0, done.stderr[-2000:]
    if label is not None:
        used = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        CPU.setdefault(label, []).append(used)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schemas", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", action="append", default=[], help="another workspace-tool tree (repeatable)")
    args = parser.parse_args()
    n, jobs = args.schemas, args.jobs
    server = server_url()
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    name = f"wst_fproc_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name)
    url_text = url.render_as_string(hide_password=False)
    engine = sa.create_engine(url, pool_size=jobs + 2, max_overflow=4)
    work_dir = Path(tempfile.mkdtemp(prefix="wst-fproc-"))
    try:
        ini = chain_copy(work_dir)
        chain = Chain.load(ini)
        ids = [f"bench-{i:05d}" for i in range(n)]
        started = time.perf_counter()
        assert fleet.provision(engine, chain, ids, target=BASE_REV, jobs=jobs).ok
        print(f"provisioned {n} schemas at {BASE_REV} in {time.perf_counter() - started:.0f} s", flush=True)
        batches = floor_batches(chain, ids)
        unwaited = without_waiting(batches)
        command = ["-m", "workspace_tool", "-q", "--database-url", url_text, "-c", str(ini), "upgrade", "--all"]

        def tree_env(label: str, root: Path | None) -> dict[str, str]:
            # bytecode written by the warm-up and read after, as an installed tool's is (pip compiles it):
            # with PYTHONDONTWRITEBYTECODE set, every run would compile the tool's modules again
            env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
            env["PYTHONPYCACHEPREFIX"] = str(work_dir / f"pycache-{label}")
            env["WORKSPACE_TOOL_CACHE_DIR"] = str(work_dir / f"cache-{label}")
            if root is not None:
                env["PYTHONPATH"] = str(root)
            return env

        argv = [sys.executable, *command, "--jobs", str(jobs)]
        trees: dict[str, dict[str, str]] = {"process (this tree)": tree_env("this", None)}
        for i, root in enumerate(args.compare):
            trees[f"process ({root})"] = tree_env(f"compare{i}", Path(root))
        # a script's connections are new: their backends have not cached the fleet's relations (held ones
        # have, from the run before), as the process's have not
        fresh = sa.create_engine(url, poolclass=sa.pool.NullPool)
        contenders: dict[str, tuple[Callable[[], None], bool]] = {
            "floor (1 round trip per schema)": (lambda: send_all(engine, batches, jobs), True),
            "floor, new connections": (lambda: send_all(fresh, batches, jobs), True),
            ASYNC_FLOOR: (lambda: send_and_flush(engine, unwaited, jobs), True),
        }
        for label, env in trees.items():
            process(argv, env, work_dir)  # warm-up, untimed: its cache directory (graph, planned range)
            fleet.downgrade(engine, chain, target=BASE_REV, jobs=jobs)
            contenders[label] = ((lambda env=env, label=label: process(argv, env, work_dir, label)), True)  # type: ignore[misc]
        durable = "process --commit durable (this tree)"
        contenders[durable] = (
            lambda: process([*argv, "--commit", "durable"], trees["process (this tree)"], work_dir, durable),
            True,
        )
        noop = "no-op process (this tree)"
        contenders[noop] = (lambda: process(argv, trees["process (this tree)"], work_dir, noop), False)
        samples: dict[str, list[float]] = {label: [] for label in contenders}
        names = list(contenders)
        for r in range(args.rounds):
            for label in names[r % len(names) :] + names[: r % len(names)]:
                run, migrates = contenders[label]
                if not migrates:
                    fleet.upgrade(engine, chain, jobs=jobs)  # untimed: everything at head first
                checkpoint(engine)
                began = time.perf_counter()
                run()
                samples[label].append(time.perf_counter() - began)
                fleet.downgrade(engine, chain, target=BASE_REV, jobs=jobs)
                print(f"round {r + 1} {label}: {samples[label][-1]:.2f} s", flush=True)
        floor = names[0]
        floor_median = statistics.median(samples[floor])
        print(f"\n== upgrade --all over {n} schemas, --jobs {jobs}, {args.rounds} rounds (interleaved) ==")
        async_median = statistics.median(samples[ASYNC_FLOOR])
        for label in names:
            per_round = statistics.median(a / b for a, b in zip(samples[label], samples[floor], strict=True))
            median = statistics.median(samples[label])
            print(
                f"{label:<44} median {median:6.2f} s  "
                f"/ floor {median / floor_median:5.2f}x  per round {per_round:5.2f}x  "
                f"/ async floor {median / async_median:5.2f}x  "
                f"{[round(s, 2) for s in samples[label]]}"
                + (f"  CPU median {statistics.median(CPU[label]):.2f} s" if label in CPU else "")
            )
        return 0
    finally:
        engine.dispose()
        with admin.connect() as conn:
            ended = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"
            conn.execute(sa.text(ended), {"d": name})
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
