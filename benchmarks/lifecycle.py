"""Benchmark: the tenant lifecycle commands (issue 20) against their floors, interleaved, medians and ratios.

* export / import of one project (repositories, files, N chunks with 768-dimension embeddings) vs
  ``pg_dump -Fc -n SCHEMA`` / ``pg_restore`` of the same schema (the embedded server's pginstall18 clients).
  Goal: library <= 1x.
* clone vs raw ``INSERT ... SELECT`` per table (one transaction, into a schema built beforehand, untimed);
  also against the raw copy plus ``clone --no-data`` (the schema's DDL). Goal <= 1.2x.
* bulk drop of N projects (``drop --match``) vs raw ``DROP SCHEMA ... CASCADE`` and the registry row's
  DELETE, one transaction per schema, on the same number of connections. Goal <= 1.2x.
* ``exec -c SQL`` over N projects vs a raw parallel loop (SET LOCAL search_path; the SQL; COMMIT per
  schema, same connections). Goal <= 1.3x.

CHECKPOINT before each timed run. Works in databases it creates and drops on the embedded server (or
$WORKSPACE_TOOL_BENCH_DATABASE_URL's).

    python benchmarks/lifecycle.py [--chunks 5000] [--schemas 1000] [--repeat 3] [--quick]
"""

from __future__ import annotations

import argparse
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

from fleet_upgrade import checkpoint, run_transactions, server_url  # noqa: E402

from workspace_tool import WorkspaceManager, embedded, fleet  # noqa: E402
from workspace_tool.chain import Chain  # noqa: E402
from workspace_tool.fleet import RunSpec, Selection  # noqa: E402
from workspace_tool.lifecycle import clone_project, export_project, import_project  # noqa: E402
from workspace_tool.lifecycle.drop import drop_operation  # noqa: E402
from workspace_tool.lifecycle.exec import exec_operation  # noqa: E402
from workspace_tool.lifecycle.tables import project_tables  # noqa: E402
from workspace_tool.sql import quote_ident, search_path_sql  # noqa: E402
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


def bench_drop_exec(server: sa.URL, schemas: int, repeat: int, jobs: int) -> None:
    chain = Chain.load(ALEMBIC_INI)
    with fresh_database(server, "life_fleet", prefix="wst_bench") as url:
        engine = sa.create_engine(url, pool_size=jobs + 2, max_overflow=4)
        try:
            ids = [f"gone-{i:05d}" for i in range(schemas)]
            ext = WorkspaceManager(engine, ALEMBIC_INI).bootstrap()
            ex_lib, ex_raw, dr_lib, dr_raw = [], [], [], []
            select = Selection(match=["gone-*"])
            for _ in range(repeat):
                report = fleet.provision(engine, chain, ids, jobs=jobs)
                assert report.ok, report.failed[:3]
                checkpoint(engine)
                ex_lib.append(
                    timed(
                        lambda: fleet.run(engine, chain, exec_operation(EXEC_SQL), RunSpec(jobs=jobs, selection=select))
                    )
                )
                transactions = [[search_path_sql(r.schema, ext) + ";\n" + EXEC_SQL] for r in report.results]
                checkpoint(engine)
                ex_raw.append(timed(lambda: run_transactions(engine, transactions, jobs)))  # noqa: B023
                checkpoint(engine)
                dr_lib.append(
                    timed(lambda: fleet.run(engine, chain, drop_operation(), RunSpec(jobs=jobs, selection=select)))
                )
                report = fleet.provision(engine, chain, ids, jobs=jobs)
                assert report.ok, report.failed[:3]
                drops = [
                    [
                        f"DROP SCHEMA {quote_ident(r.schema)} CASCADE",
                        f"DELETE FROM project_registry.workspace_config WHERE project_id = '{r.project_id}'",
                    ]
                    for r in report.results
                ]
                checkpoint(engine)
                dr_raw.append(timed(lambda: run_transactions(engine, drops, jobs)))  # noqa: B023
            print(f"\nover {schemas} projects, {jobs} connections, medians of {repeat}")
            print(f"  exec -c vs raw parallel loop:           {ratio(ex_lib, ex_raw)}")
            print(f"  drop --match vs raw DROP SCHEMA (1/tx): {ratio(dr_lib, dr_raw)}")
        finally:
            engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=5000, help="chunks of the exported / cloned project")
    parser.add_argument("--schemas", type=int, default=1000, help="projects for drop and exec")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=fleet.default_jobs())
    parser.add_argument("--quick", action="store_true", help="1,000 chunks, 100 projects, 3 rounds")
    parser.add_argument("--only", action="append", choices=["export", "clone", "fleet"], help="run only these")
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
        bench_drop_exec(server, args.schemas, args.repeat, args.jobs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
