"""Soaks.

``test_soak``: 8 processes x 4 threads ensure the same 50 projects in random order while `upgrade --all`
runs beside them, over and over. Half the projects start one revision behind, so the fleet and the ensures
race to upgrade them. Result: exactly 50 schemas, all at head, 50 registry rows agreeing with them, and no
error other than lock timeouts the fleet retried (the documented behaviour of `upgrade --lock-timeout/--retries`).

``test_live_application_soak``: the live application of issue 18 (tests/soak.py, also run longer by
``benchmarks/run.py --only soak``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import soak
import sqlalchemy as sa
from support.chains import ALEMBIC_INI, ROOT, ChainBuilder
from support.db import assert_consistent

from workspace_tool import WorkspaceManager, fleet
from workspace_tool.chain import Chain

PROCESSES = 8
THREADS = 4
PROJECTS = [f"soak-{i:02d}" for i in range(50)]
PRE_CREATED = PROJECTS[::2]  # 25 projects exist beforehand, one revision behind head

WORKER = textwrap.dedent(
    """
    import json, random, sys, threading, time
    from pathlib import Path
    import sqlalchemy as sa
    from workspace_tool import LockTimeout, WorkspaceManager

    url, ini, go, seed, threads = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    ids = json.loads(sys.argv[6])
    engine = sa.create_engine(url, pool_size=threads, max_overflow=0)
    mgr = WorkspaceManager(engine, ini)
    actions, errors, retried, lock = {}, [], [0], threading.Lock()

    def work(n):
        order = list(ids)
        random.Random(seed * 100 + n).shuffle(order)
        for project_id in order:
            for attempt in range(10):
                try:
                    action = mgr.ensure_detailed(project_id).action
                except LockTimeout:
                    with lock:
                        retried[0] += 1
                    time.sleep(0.05 * (attempt + 1))
                    continue
                except Exception as exc:
                    with lock:
                        errors.append(f"{project_id}: {type(exc).__name__}: {exc}")
                    break
                with lock:
                    actions[action] = actions.get(action, 0) + 1
                break

    while not go.exists():
        time.sleep(0.005)
    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    engine.dispose()
    print(json.dumps({"actions": actions, "errors": errors, "lock_timeouts_retried": retried[0]}))
    """
)

UPGRADER = textwrap.dedent(
    """
    import contextlib, io, json, sys, time
    from pathlib import Path
    from workspace_tool.cli import main

    url, ini, go, stop = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    go.touch()  # the fleet starts first; the workers start with it and race it for the behind schemas
    runs = []
    while not stop.exists() or not runs:
        out = io.StringIO()
        code = 0
        with contextlib.redirect_stdout(out):
            try:
                main(["--database-url", url, "-c", ini, "upgrade", "--all", "-j", "4", "--lock-timeout", "2s",
                      "--json"], standalone_mode=False)
            except SystemExit as exc:
                code = exc.code
        report = json.loads(out.getvalue())
        runs.append({"exit": code, "counts": report["counts"], "results": report["results"]})
    Path(sys.argv[5]).write_text(json.dumps(runs))
    """
)


@pytest.mark.slow
def test_soak(engine: sa.Engine, url_string: str, tmp_path: Path) -> None:
    # the chain one revision short of head, for the projects that start behind
    old = ChainBuilder(tmp_path / "old")
    head = Chain.load(ALEMBIC_INI).head
    for path in sorted((ROOT / "migrations" / "versions").glob("*.py")):
        if not path.name.startswith(head):
            shutil.copy(path, old.versions / path.name)
    old_chain = Chain.load(old.ini)
    assert fleet.provision(engine, old_chain, PRE_CREATED, jobs=4).ok
    assert set(assert_consistent(engine).values()) == {old_chain.head}

    worker, upgrader = tmp_path / "worker.py", tmp_path / "upgrader.py"
    worker.write_text(WORKER)
    upgrader.write_text(UPGRADER)
    go, stop = tmp_path / "go", tmp_path / "stop"
    ids = json.dumps(PROJECTS)
    workers = [
        subprocess.Popen(
            [sys.executable, str(worker), url_string, str(ALEMBIC_INI), str(go), str(seed), str(THREADS), ids],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(PROCESSES)
    ]
    beside = subprocess.Popen(
        [sys.executable, str(upgrader), url_string, str(ALEMBIC_INI), str(go), str(stop), str(tmp_path / "runs.json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    started = time.perf_counter()  # the upgrader touches the go file, which releases the workers
    reports = []
    for process in workers:
        out, err = process.communicate(timeout=240)
        assert process.returncode == 0, err
        reports.append(json.loads(out))
    stop.touch()
    out, err = beside.communicate(timeout=240)
    assert beside.returncode == 0, err
    duration = time.perf_counter() - started
    runs = json.loads((tmp_path / "runs.json").read_text())

    actions: Counter[str] = Counter()
    for report in reports:
        actions.update(report["actions"])
    errors = [e for r in reports for e in r["errors"]]
    retried = sum(r["lock_timeouts_retried"] for r in reports)
    fleet_statuses: Counter[str] = Counter()
    fleet_errors = []
    for run in runs:
        fleet_statuses.update(run["counts"])
        fleet_errors += [r for r in run["results"] if r["status"] == fleet.FAILED]
    print(
        f"\nsoak: {PROCESSES} processes x {THREADS} threads, {len(PROJECTS)} projects "
        f"({len(PRE_CREATED)} pre-created one revision behind), {sum(actions.values())} ensures "
        f"{dict(actions)}, {retried} lock timeouts retried, {len(runs)} `upgrade --all` runs beside "
        f"{dict(fleet_statuses)} (exit codes {[r['exit'] for r in runs]}), {duration:.1f} s"
    )

    assert errors == []
    # the only failure `upgrade --all` may report is a lock wait that outlasted its retries
    assert all("lock timeout" in r["error"] for r in fleet_errors), fleet_errors
    assert sum(actions.values()) == PROCESSES * THREADS * len(PROJECTS)
    assert actions["created"] == len(PROJECTS) - len(PRE_CREATED)  # each project created exactly once
    assert actions["created"] + actions["upgraded"] + fleet_statuses["ok"] >= len(PROJECTS)

    versions = assert_consistent(engine)
    assert len(versions) == len(PROJECTS)
    assert set(versions.values()) == {head}
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT status, count(*) FROM project_registry.workspace_config GROUP BY 1")).all()
    assert [tuple(r) for r in rows] == [("ready", len(PROJECTS))]
    assert [s.state for s in WorkspaceManager(engine, ALEMBIC_INI).status()] == ["at-head"] * len(PROJECTS)


@pytest.mark.slow
def test_live_application_soak(engine: sa.Engine, url_string: str, tmp_path: Path) -> None:
    """Two releases' applications create, write, read and drop projects and claim spares at a steady rate
    through a rolling deploy while `upgrade --all`, `status`, `check`, `pool fill` and `pool status` of
    both run beside them, then a rollback and a redeploy (tests/soak.py: the phases and the invariants);
    30 s of it. No invariant broken, and the run did exercise what it is about (else it proves nothing)."""
    outcome = soak.run(url_string, tmp_path, soak.Settings(seconds=30))
    print("\n" + outcome.report)

    assert outcome.violations == [], "\n".join(outcome.violations)
    figures = outcome.figures
    for name, app in figures["applications"].items():
        counts = app["counts"]
        assert counts["creates"] >= 10 and counts["created via pool"] >= 1, (name, counts)
        assert min(counts["writes"], counts["reads"]) >= 10 and counts["drops"] >= 3, (name, counts)
    commands = figures["commands"]
    assert commands["B upgrade"]["ok"] >= 1  # projects release A made at its head, brought to B's
    assert {"A pool fill", "A status", "A check", "B pool fill", "B status", "B check", "B pool status"} <= set(
        commands
    )
    assert figures["pool deletions"].get("A's dropped by B", 0) >= 1  # after A retired, once the grace passed
    rollback = figures["rollback"]  # B's spares, ahead of A, outlived B's grace while A filled the pool
    assert rollback["B's spares kept"] >= 1 and rollback["A's fills after B's grace"] >= 1, rollback
