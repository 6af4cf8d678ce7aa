"""The warm pool under load (issue 12, item 5): 4 processes x 8 threads ensure the same 40 new projects in
random order with a pool of 10, while `workspace-tool pool fill` runs beside them over and over.

Result: 40 schemas and 40 registry rows that agree, each project created exactly once, no error; every
spare claimed once (the projects made from a spare are exactly the spares that left the pool: the 10 there
at the start plus those the fills built, minus those left), the rest built by the fast path.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
from support.chains import ALEMBIC_INI
from support.db import assert_consistent, registry_row

from workspace_tool import spares
from workspace_tool.chain import Chain

PROCESSES = 4
THREADS = 8
PROJECTS = [f"load-{i:02d}" for i in range(40)]
POOL = 10

WORKER = textwrap.dedent(
    """
    import json, random, sys, threading, time
    from pathlib import Path
    import sqlalchemy as sa
    from workspace_tool import WorkspaceManager

    url, ini, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    seed, threads, size = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    ids = json.loads(sys.argv[7])
    engine = sa.create_engine(url, pool_size=threads, max_overflow=0)
    mgr = WorkspaceManager(engine, ini, warm_pool=size)
    created, errors, lock = {}, [], threading.Lock()

    def work(n):
        order = list(ids)
        random.Random(seed * 100 + n).shuffle(order)
        for project_id in order:
            try:
                result = mgr.ensure_detailed(project_id)
            except Exception as exc:
                with lock:
                    errors.append(f"{project_id}: {type(exc).__name__}: {exc}")
                continue
            if result.action == "created":
                with lock:
                    created[project_id] = str(result.path)

    while not go.exists():
        time.sleep(0.005)
    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    engine.dispose()
    print(json.dumps({"created": created, "errors": errors}))
    """
)

FILLER = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from pathlib import Path
    from workspace_tool.cli import main

    url, ini, go, stop, size = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), sys.argv[5]
    go.touch()
    runs = []
    while not stop.exists() or not runs:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            main(["--database-url", url, "-c", ini, "pool", "fill", "--size", size, "--jobs", "2", "--json"],
                 standalone_mode=False)
        runs.append(json.loads(out.getvalue()))
    Path(sys.argv[6]).write_text(json.dumps(runs))
    """
)


@pytest.mark.slow
def test_processes_and_threads_claim_each_spare_once_while_pool_fill_runs_beside(
    engine: sa.Engine, url_string: str, tmp_path: Path
) -> None:
    chain = Chain.load(ALEMBIC_INI)
    assert spares.fill(engine, chain, POOL, jobs=2).built == POOL
    worker, filler = tmp_path / "worker.py", tmp_path / "filler.py"
    worker.write_text(WORKER)
    filler.write_text(FILLER)
    go, stop, runs_file = tmp_path / "go", tmp_path / "stop", tmp_path / "runs.json"
    ids = json.dumps(PROJECTS)
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(worker),
                url_string,
                str(ALEMBIC_INI),
                str(go),
                str(seed),
                str(THREADS),
                str(POOL),
                ids,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(PROCESSES)
    ]
    beside = subprocess.Popen(
        [sys.executable, str(filler), url_string, str(ALEMBIC_INI), str(go), str(stop), str(POOL), str(runs_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reports = []
    for process in workers:
        out, err = process.communicate(timeout=240)
        assert process.returncode == 0, err
        reports.append(json.loads(out))
    stop.touch()
    out, err = beside.communicate(timeout=240)
    assert beside.returncode == 0, err
    fills = json.loads(runs_file.read_text())

    errors = [e for r in reports for e in r["errors"]]
    assert errors == []
    created: Counter[str] = Counter(p for r in reports for p in r["created"])
    assert sorted(created) == PROJECTS and set(created.values()) == {1}  # each created exactly once
    paths = {p: path for r in reports for p, path in r["created"].items()}
    assert set(paths.values()) <= {"pool", "fast"}
    assert {p: registry_row(engine, p)["last_path"] for p in PROJECTS} == paths  # type: ignore[index]

    versions = assert_consistent(engine)
    assert len(versions) == len(PROJECTS) and set(versions.values()) == {chain.head}
    built = sum(run["built"] for run in fills)
    left = spares.status(engine, chain).ready
    from_pool = sum(1 for path in paths.values() if path == "pool")
    assert from_pool == POOL + built - left  # every spare that left the pool became exactly one project
    assert from_pool >= POOL  # the spares there at the start were all claimed; the fast path built the rest
    with engine.connect() as conn:
        spare_named = conn.execute(
            sa.text("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'workspace\\_spare\\_%'")
        ).scalar_one()
    assert spare_named == left
    print(
        f"\npool load: {PROCESSES} processes x {THREADS} threads, {len(PROJECTS)} projects, pool of {POOL}: "
        f"{from_pool} from spares, {len(PROJECTS) - from_pool} built; {len(fills)} `pool fill` runs beside "
        f"built {built}, {left} left"
    )
