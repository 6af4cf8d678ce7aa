"""Benchmark: the tenant lifecycle commands (issue 20) against their floors, interleaved, medians and ratios.

* export / import of one project (repositories, files, N chunks with 768-dimension embeddings) vs
  ``pg_dump -Fc -n SCHEMA`` / ``pg_restore`` of the same schema (the embedded server's pginstall18 clients).
  Goal: library <= 1x.
* clone vs raw ``INSERT ... SELECT`` per table (one transaction, into a schema built beforehand, untimed);
  also against the raw copy plus ``clone --no-data`` (the schema's DDL). Goal <= 1.2x.
* bulk drop of N projects (``drop --match``) vs raw ``DROP SCHEMA ... CASCADE`` and the registry row's
  DELETE, one transaction per schema sent as ONE round trip (BEGIN ... COMMIT), on the same number of
  connections. Goal <= 1.2x.
* ``exec -c SQL`` over N projects vs a raw parallel loop (BEGIN; SET LOCAL search_path; the SQL; COMMIT per
  schema in ONE round trip, same number of connections). Goal <= 1.3x.
  Both floors are given the schemas (the library reads the registry and the catalog to find them), take no
  lock and check nothing: the fastest correct raw SQL a hand-written script would send. The library runs in a
  child process (``--compare ROOT``: another tree's too, for a paired before/after), the contenders in a
  rotating order, each timed run on new connections (a CLI run's backends, and a script's, are new).

CHECKPOINT before each timed run. Works in databases it creates and drops on the embedded server (or
$WORKSPACE_TOOL_BENCH_DATABASE_URL's).

    python benchmarks/lifecycle.py [--chunks 5000] [--schemas 1000] [--repeat 3] [--quick] [--only fleet]
        [--compare /tmp/old-tree]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleet_process import send_all  # noqa: E402
from fleet_upgrade import checkpoint, server_url  # noqa: E402

from workspace_tool import WorkspaceManager, embedded, fleet  # noqa: E402
from workspace_tool.chain import Chain  # noqa: E402
from workspace_tool.lifecycle import clone_project, export_project, import_project  # noqa: E402
from workspace_tool.lifecycle.tables import project_tables  # noqa: E402
from workspace_tool.naming import schema_for  # noqa: E402
from workspace_tool.sql import quote_ident, search_path_sql, sql_literal  # noqa: E402
from workspace_tool.testing import fresh_database  # noqa: E402

ALEMBIC_INI = ROOT / "alembic.ini"
DIMS = 768
EXEC_SQL = "UPDATE repositories SET name = name || '' WHERE true"


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def libpq(url: sa.URL) -> tuple[str, dict[str, str]]:
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    return url.set(drivername="postgresql", password=None).render_as_string(hide_password=False), env


def fill(engine: sa.Engine, schema: str, chunks: int) -> None:
    """A repository, a file, and ``chunks`` chunks with embeddings, in ``schema``."""
    extension_schema = WorkspaceManager(engine, ALEMBIC_INI).bootstrap()
    with engine.begin() as conn:
        conn.execute(sa.text(search_path_sql(schema, extension_schema)))
        repo = conn.execute(
            sa.text(f"INSERT INTO {schema}.repositories (path, name) VALUES ('/r', 'r') RETURNING id")
        ).scalar()
        file_id = conn.execute(
            sa.text(
                f"INSERT INTO {schema}.code_files (repository_id, path, relative_path) "
                "VALUES (:r, '/r/a.py', 'a.py') RETURNING id"
            ),
            {"r": repo},
        ).scalar()
        conn.execute(
            sa.text(
                f"INSERT INTO {schema}.code_chunks (code_file_id, content, embedding, token_count) "
                f"SELECT :f, repeat('chunk ' || g, 20), "
                f"(SELECT array_agg(sin(g * {DIMS} + d))::vector FROM generate_series(1, {DIMS}) d), g "
                "FROM generate_series(1, :n) g"
            ),
            {"f": file_id, "n": chunks},
        )


def ratio(lib: list[float], floor: list[float]) -> str:
    lm, fm = statistics.median(lib), statistics.median(floor)
    return f"library {lm * 1000:.0f} ms, floor {fm * 1000:.0f} ms: {lm / fm:.2f}x"


def bench_export_import(server: sa.URL, chunks: int, repeat: int) -> None:
    chain = Chain.load(ALEMBIC_INI)
    bin_dir = embedded.client_bin_dir()
    with (
        fresh_database(server, "life_src", prefix="wst_bench") as src_url,
        fresh_database(server, "life_lib", prefix="wst_bench") as lib_url,
        fresh_database(server, "life_pg", prefix="wst_bench") as pg_url,
        tempfile.TemporaryDirectory(prefix="wst-bench-life-") as tmp,
    ):
        src, lib_db, pg_db = (sa.create_engine(u) for u in (src_url, lib_url, pg_url))
        try:
            WorkspaceManager(src, ALEMBIC_INI).ensure("big")
            WorkspaceManager(lib_db, ALEMBIC_INI).bootstrap()
            WorkspaceManager(pg_db, ALEMBIC_INI).bootstrap()  # the vector extension, where pg_restore wants it
            fill(src, "project_big", chunks)
            src_dsn, env = libpq(src_url)
            pg_dsn, _ = libpq(pg_url)
            ex_lib, ex_pg, im_lib, im_pg = [], [], [], []
            for i in range(repeat):
                ours, dump = os.path.join(tmp, f"big{i}.wstx"), os.path.join(tmp, f"big{i}.dump")
                checkpoint(src)
                ex_lib.append(timed(lambda: export_project(src, chain, "big", ours)))  # noqa: B023
                checkpoint(src)
                ex_pg.append(
                    timed(
                        lambda: subprocess.run(
                            [str(bin_dir / "pg_dump"), "-Fc", "-n", "project_big", "-f", dump, src_dsn],  # noqa: B023
                            check=True,
                            env=env,
                        )
                    )
                )
                checkpoint(lib_db)
                im_lib.append(timed(lambda: import_project(lib_db, chain, ours, as_id=f"copy-{i}")))  # noqa: B023
                with pg_db.begin() as conn:
                    conn.execute(sa.text("DROP SCHEMA IF EXISTS project_big CASCADE"))
                checkpoint(pg_db)
                im_pg.append(
                    timed(
                        lambda: subprocess.run(
                            [str(bin_dir / "pg_restore"), "--no-owner", "-d", pg_dsn, dump],  # noqa: B023
                            check=True,
                            env=env,
                        )
                    )
                )
                with lib_db.begin() as conn:
                    conn.execute(sa.text(f"DROP SCHEMA project_copy_{i} CASCADE"))
                    conn.execute(sa.text("DELETE FROM project_registry.workspace_config"))
                sizes = os.path.getsize(ours), os.path.getsize(dump)
            print(f"\nexport / import of one project ({chunks} chunks of {DIMS} dims), medians of {repeat}")
            print(f"  files: ours {sizes[0] / 1e6:.1f} MB, pg_dump -Fc {sizes[1] / 1e6:.1f} MB")
            print(f"  export vs pg_dump -Fc -n:  {ratio(ex_lib, ex_pg)}")
            print(f"  import vs pg_restore:      {ratio(im_lib, im_pg)}")
        finally:
            for engine in (src, lib_db, pg_db):
                engine.dispose()


def bench_clone(server: sa.URL, chunks: int, repeat: int) -> None:
    chain = Chain.load(ALEMBIC_INI)
    with fresh_database(server, "life_clone", prefix="wst_bench") as url:
        engine = sa.create_engine(url)
        try:
            WorkspaceManager(engine, ALEMBIC_INI).ensure("big")
            fill(engine, "project_big", chunks)
            with engine.connect() as conn:
                tables = project_tables(conn, "project_big")
            lib, raw, ddl = [], [], []
            for i in range(repeat):
                checkpoint(engine)
                lib.append(timed(lambda: clone_project(engine, chain, "big", f"lib-{i}")))  # noqa: B023
                ddl.append(timed(lambda: clone_project(engine, chain, "big", f"raw-{i}", data=False)))  # noqa: B023
                checkpoint(engine)

                def copy(target: str) -> None:
                    with engine.begin() as conn:
                        for t in tables:
                            cols = t.column_list()
                            conn.execute(
                                sa.text(
                                    f"INSERT INTO {t.qualified(target)} ({cols}) SELECT {cols} "
                                    f"FROM {t.qualified('project_big')}"
                                )
                            )

                raw.append(timed(lambda: copy(f"project_raw_{i}")))  # noqa: B023
            print(f"\nclone of one project ({chunks} chunks), medians of {repeat}")
            print(f"  clone vs raw INSERT ... SELECT per table:           {ratio(lib, raw)}")
            full = [r + d for r, d in zip(raw, ddl, strict=True)]
            print(f"  clone vs raw copy + clone --no-data (the schema): {ratio(lib, full)}")
        finally:
            engine.dispose()


# The library of a tree of workspace-tool (this one, or --compare's) in a process of its own, so that both
# trees' runs are timed the same way: its engine's connections closed before each run (a CLI run's, and a
# script's, backends are new: they have cached no project's relations), then one fleet run, timed in the child.
CONTENDER = """
import json, sys, time
root, url, ini, jobs, match = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
sys.path.insert(0, root)
import sqlalchemy as sa
from workspace_tool import fleet
from workspace_tool.chain import Chain
from workspace_tool.fleet import RunSpec, Selection
from workspace_tool.lifecycle.drop import drop_operation
from workspace_tool.lifecycle.exec import exec_operation
assert fleet.__file__.startswith(root), fleet.__file__
engine = sa.create_engine(url, pool_size=jobs + 2, max_overflow=4)
chain = Chain.load(ini)
spec = RunSpec(jobs=jobs, selection=Selection(match=[match]))
for line in sys.stdin:
    what, sql = json.loads(line)
    operation = exec_operation(sql) if what == "exec" else drop_operation()
    engine.dispose()
    started = time.perf_counter()
    report = fleet.run(engine, chain, operation, spec)
    print(json.dumps({"s": time.perf_counter() - started, "ok": report.counts()["ok"]}), flush=True)
"""


class Contender:
    """A tree's library in a child process: ``run("exec"|"drop")`` is one timed fleet run there."""

    def __init__(self, root: Path, url: sa.URL, jobs: int, match: str) -> None:
        self.child = subprocess.Popen(
            [sys.executable, "-c", CONTENDER, str(root), url.render_as_string(hide_password=False), str(ALEMBIC_INI),
             str(jobs), match],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=root,
        )  # fmt: skip

    def run(self, what: str, expected: int) -> float:
        assert self.child.stdin is not None and self.child.stdout is not None
        self.child.stdin.write(json.dumps([what, EXEC_SQL]) + "\n")
        self.child.stdin.flush()
        answer = json.loads(self.child.stdout.readline())
        assert answer["ok"] == expected, answer
        return float(answer["s"])

    def close(self) -> None:
        if self.child.stdin is not None:
            self.child.stdin.close()
        self.child.wait(60)


def exec_floor(schema: str, extension_schema: str) -> str:
    """What a hand-written script sends to run EXEC_SQL in one schema: its transaction, search_path first, in
    ONE round trip (BEGIN ... COMMIT in one simple query, on a connection in autocommit)."""
    return f"BEGIN ISOLATION LEVEL READ COMMITTED;\n{search_path_sql(schema, extension_schema)};\n{EXEC_SQL};\nCOMMIT;"


def drop_floor(schema: str, project_id: str) -> str:
    """What a hand-written script sends to drop one project: its schema and its registry row, in one
    transaction sent as ONE round trip."""
    return (
        f"BEGIN ISOLATION LEVEL READ COMMITTED;\nDROP SCHEMA {quote_ident(schema)} CASCADE;\n"
        f"DELETE FROM project_registry.workspace_config WHERE project_id = {sql_literal(project_id)};\nCOMMIT;"
    )


def bench_drop_exec(server: sa.URL, schemas: int, repeat: int, jobs: int, compare: Path | None = None) -> None:
    """exec and bulk drop over ``schemas`` projects, each round's contenders in a rotating order, each timed run
    after a CHECKPOINT and on new connections: this tree's library (and --compare's), each in a child process,
    against the floor (``send_all``: each schema's transaction in ONE round trip from ``jobs`` connections)."""
    chain = Chain.load(ALEMBIC_INI)
    with fresh_database(server, "life_fleet", prefix="wst_bench") as url:
        engine = sa.create_engine(url, pool_size=jobs + 2, max_overflow=4)
        trees = {"library": ROOT} | ({} if compare is None else {f"--compare {compare}": compare})
        contenders = {label: Contender(root, url, jobs, "gone-*") for label, root in trees.items()}
        try:
            ids = [f"gone-{i:05d}" for i in range(schemas)]
            ext = WorkspaceManager(engine, ALEMBIC_INI).bootstrap()
            names = [*contenders, "floor"]
            times: dict[str, dict[str, list[float]]] = {"exec": {n: [] for n in names}, "drop": {n: [] for n in names}}
            schemas_of = {p: schema_for(p) for p in ids}
            execs = [exec_floor(s, ext) for s in schemas_of.values()]
            drops = [drop_floor(s, p) for p, s in schemas_of.items()]

            def provision() -> None:
                report = fleet.provision(engine, chain, ids, jobs=jobs)
                assert report.ok, report.failed[:3]

            def fresh() -> None:
                checkpoint(engine)
                engine.dispose()

            for i in range(repeat):
                order = names[i % len(names) :] + names[: i % len(names)]
                provision()  # the last drop of the round before took them
                for name in order:
                    fresh()
                    if name == "floor":
                        times["exec"][name].append(timed(lambda: send_all(engine, execs, jobs)))
                    else:
                        times["exec"][name].append(contenders[name].run("exec", schemas))
                for name in order:
                    provision()
                    fresh()
                    if name == "floor":
                        times["drop"][name].append(timed(lambda: send_all(engine, drops, jobs)))
                    else:
                        times["drop"][name].append(contenders[name].run("drop", schemas))
            print(f"\nover {schemas} projects, {jobs} connections, medians of {repeat}, new connections each run")
            what = {"exec": "exec -c vs raw parallel loop", "drop": "drop --match vs raw DROP SCHEMA (1/tx)"}
            for kind, by_name in times.items():
                floor = by_name["floor"]
                for name in contenders:
                    per_round = statistics.median(t / f for t, f in zip(by_name[name], floor, strict=True))
                    print(f"  {what[kind]} [{name}]: {ratio(by_name[name], floor)}; per round {per_round:.2f}x")
                if compare is not None:
                    ab = [a / b for a, b in zip(by_name["library"], by_name[f"--compare {compare}"], strict=True)]
                    print(f"  {kind}: this tree / --compare, median per round: {statistics.median(ab):.2f}x")
        finally:
            for contender in contenders.values():
                contender.close()
            engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=5000, help="chunks of the exported / cloned project")
    parser.add_argument("--schemas", type=int, default=1000, help="projects for drop and exec")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=fleet.default_jobs())
    parser.add_argument("--quick", action="store_true", help="1,000 chunks, 100 projects, 3 rounds")
    parser.add_argument("--only", action="append", choices=["export", "clone", "fleet"], help="run only these")
    parser.add_argument(
        "--compare", type=Path, metavar="ROOT", help="also time another workspace-tool tree's exec and drop (fleet)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.chunks, args.schemas = min(args.chunks, 1000), min(args.schemas, 100)
    parts = set(args.only or ["export", "clone", "fleet"])
    server = server_url()
    if "export" in parts:
        bench_export_import(server, args.chunks, args.repeat)
    if "clone" in parts:
        bench_clone(server, args.chunks, args.repeat)
    if "fleet" in parts:
        bench_drop_exec(server, args.schemas, args.repeat, args.jobs, args.compare)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
