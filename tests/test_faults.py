"""Faults: connections killed at each step, the tool SIGKILLed mid-fleet, the server restarted mid-run.

Each fault is hit deterministically: the victim blocks on an advisory lock the test holds (the schema's
own lock, or a "gate" a revision takes between two revisions) or pauses in a SQLAlchemy event (before
the registry write, at commit) while the test terminates its backend with pg_terminate_backend. After
every fault: no schema without a registry row, no registry row claiming a revision its schema lacks,
the error is a one-line DatabaseUnavailable, and a rerun succeeds.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pgprivate import PrivateServer
from support.chains import ChainBuilder
from support.cli import CLI
from support.concurrency import WAIT, Victim, waiting_on_advisory
from support.db import assert_consistent

from workspace_tool import DatabaseUnavailable, WorkspaceManager, fleet
from workspace_tool.chain import Chain
from workspace_tool.managers import cache
from workspace_tool.sql import LOCK_SQL, lock_key

GATE = "wst-fault-gate"
GATE_SQL = f"op.execute(\"SELECT pg_advisory_xact_lock(hashtext('{GATE}'))\")"
T1 = "op.create_table('t1', sa.Column('id', sa.Integer, primary_key=True))"
T2 = "op.create_table('t2', sa.Column('id', sa.Integer, primary_key=True))"
T3 = "op.create_table('t3', sa.Column('id', sa.Integer, primary_key=True))"


# ------------------------------------------------------------------ invariants


# -------------------------------------------------------------- fault injection
def backend_pid(conn: Any) -> int:
    return int(conn.connection.dbapi_connection.get_backend_pid())


def terminate(admin: sa.Connection, pid: int) -> None:
    assert admin.execute(sa.text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": pid}).scalar() is True


def kill_while_locked(engine: sa.Engine, key_sql: str, params: dict[str, str], work: Callable[[], object]) -> Victim:
    """Hold an advisory lock, let ``work`` block on it, terminate the blocked backend."""
    with engine.connect() as admin:
        admin.execute(sa.text("BEGIN"))
        admin.execute(sa.text(key_sql), params)
        victim = Victim(work)
        victim.start()
        [pid] = waiting_on_advisory(admin, 1, victim)
        terminate(admin, pid)
        victim.finish()
        admin.rollback()
    return victim


def kill_at_event(engine: sa.Engine, event: str, matches: Callable[..., bool], work: Callable[[], object]) -> Victim:
    """Pause ``work`` in a SQLAlchemy engine event, terminate its backend, let it carry on."""
    paused: queue.Queue[int] = queue.Queue()
    resume = threading.Event()
    fired = threading.Event()

    def hook(conn: Any, *args: Any) -> None:
        if not fired.is_set() and matches(*args):
            fired.set()
            paused.put(backend_pid(conn))
            resume.wait(WAIT)

    sa.event.listen(engine, event, hook)
    try:
        victim = Victim(work)
        victim.start()
        pid = paused.get(timeout=WAIT)
        with engine.connect() as admin:
            terminate(admin, pid)
        resume.set()
        victim.finish()
    finally:
        sa.event.remove(engine, event, hook)
    return victim


def registry_insert(cursor: Any, statement: str, *args: Any) -> bool:
    return "INSERT INTO project_registry.workspace_config" in statement


def any_commit(*args: Any) -> bool:
    return True


FAULTS = ["before-schema-lock", "between-revisions", "before-registry-write", "at-commit"]


def inject(kind: str, engine: sa.Engine, schema: str, work: Callable[[], object]) -> Victim:
    if kind == "before-schema-lock":  # holds the tool's own per-schema lock: nothing has happened yet
        return kill_while_locked(engine, LOCK_SQL, {"key": lock_key(schema)}, work)
    if kind == "between-revisions":  # r1 applied in the transaction, r2 waiting at the gate
        return kill_while_locked(engine, "SELECT pg_advisory_xact_lock(hashtext(:k))", {"k": GATE}, work)
    if kind == "before-registry-write":
        return kill_at_event(engine, "before_cursor_execute", registry_insert, work)
    assert kind == "at-commit"
    return kill_at_event(engine, "commit", any_commit, work)


def assert_clear_connection_error(victim: Victim, schema: str) -> str:
    error = victim.error
    assert isinstance(error, DatabaseUnavailable), repr(error)
    message = str(error)
    assert "\n" not in message
    assert message.startswith(f"database connection failed while working on {schema}")
    assert "rolled back" in message and "rerun" in message
    return message


@pytest.fixture
def chains(tmp_path: Path) -> dict[str, Path]:
    """short: r1.  gated: r1, r2 (waits at the gate), r3.  gated_online: the same, r2 run online."""
    short = ChainBuilder(tmp_path / "short").add("r1", T1)
    gated = ChainBuilder(tmp_path / "gated").add("r1", T1).add("r2", GATE_SQL + "\n" + T2).add("r3", T3)
    online = (
        ChainBuilder(tmp_path / "online")
        .add("r1", T1)
        .add("r2", GATE_SQL + "\n" + T2, extra="workspace_online = True")
        .add("r3", T3)
    )
    return {"short": short.ini, "gated": gated.ini, "gated_online": online.ini}


# --------------------------------------------------------- one connection killed
# A first ensure of a compiled chain is ONE implicit transaction (schema/migrate.py first_round_trip): it
# has no COMMIT of its own to be killed at; the kills before and inside its round trip are the cases.
@pytest.mark.parametrize(
    ("kind", "chain_name"),
    [(k, c) for k in FAULTS for c in ["gated", "gated_online"] if (k, c) != ("at-commit", "gated")],
)
def test_kill_during_provisioning(engine: sa.Engine, chains: dict[str, Path], kind: str, chain_name: str) -> None:
    mgr = WorkspaceManager(engine, chains[chain_name])
    mgr.bootstrap()
    victim = inject(kind, engine, "project_victim", lambda: mgr.ensure("victim"))
    assert_clear_connection_error(victim, "project_victim")
    assert assert_consistent(engine) == {}  # no schema, no row

    result = mgr.ensure_detailed("victim")  # the rerun
    assert (result.action, result.to_revision) == ("created", "r3")
    assert assert_consistent(engine) == {"project_victim": "r3"}


@pytest.mark.parametrize("chain_name", ["gated", "gated_online"])
@pytest.mark.parametrize("kind", FAULTS)
def test_kill_during_upgrade(engine: sa.Engine, chains: dict[str, Path], kind: str, chain_name: str) -> None:
    WorkspaceManager(engine, chains["short"]).ensure("victim")
    WorkspaceManager(engine, chains["short"]).ensure("bystander")
    cache.clear()
    mgr = WorkspaceManager(engine, chains[chain_name])
    victim = inject(kind, engine, "project_victim", lambda: mgr.ensure("victim"))
    assert_clear_connection_error(victim, "project_victim")
    assert assert_consistent(engine) == {"project_victim": "r1", "project_bystander": "r1"}

    assert mgr.ensure_detailed("victim").action == "upgraded"
    assert assert_consistent(engine) == {"project_victim": "r3", "project_bystander": "r1"}


def kill_one_fleet_worker(engine: sa.Engine, chains: dict[str, Path], retries: int) -> Any:
    """Four schemas at r1 upgraded to r3 by two workers; one worker's backend is terminated (57P01) while
    its schema's transaction waits at the gate between r1 and r2. Returns the run's report."""
    for project_id in [f"fleet-{i}" for i in range(4)]:
        WorkspaceManager(engine, chains["short"]).ensure(project_id)
    chain = Chain.load(chains["gated"])
    with engine.connect() as admin:
        admin.execute(sa.text("BEGIN"))
        admin.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": GATE})
        run = Victim(lambda: fleet.upgrade(engine, chain, jobs=2, executor="threads", retries=retries))
        run.start()
        pids = waiting_on_advisory(admin, 2)
        terminate(admin, pids[0])
        admin.rollback()  # open the gate
        run.finish()
    assert run.error is None, run.error
    return run.result


def test_a_schema_whose_connection_is_killed_is_retried_and_ends_ok(engine: sa.Engine, chains: dict[str, Path]) -> None:
    report = kill_one_fleet_worker(engine, chains, retries=fleet.DEFAULT_RETRIES)
    assert report.ok and report.counts() == {"ok": 4, "failed": 0, "skipped": 0, "gone": 0}
    assert sorted(r.attempts for r in report.results) == [1, 1, 1, 2]  # the killed one, retried once
    assert set(assert_consistent(engine).values()) == {"r3"}


def test_one_schema_killed_past_its_retries_fails_on_one_line_and_a_rerun_finishes(
    engine: sa.Engine, chains: dict[str, Path]
) -> None:
    report = kill_one_fleet_worker(engine, chains, retries=0)
    [failed] = report.failed
    # the fleet's per-schema error: one line naming the broken connection
    assert failed.error.startswith("database connection lost (1 attempts): ") and "\n" not in failed.error
    assert failed.connection_lost and report.stopped is None  # one lost connection is not a dead server
    versions = assert_consistent(engine)
    assert sorted(str(v) for v in versions.values()) == ["r1", "r3", "r3", "r3"]

    rerun = fleet.upgrade(engine, Chain.load(chains["gated"]), jobs=2, executor="threads")
    assert rerun.ok
    assert set(assert_consistent(engine).values()) == {"r3"}


# ---------------------------------------------------- SIGKILL of upgrade --all
@pytest.mark.slow
def test_sigkill_during_upgrade_all(engine: sa.Engine, url_string: str, tmp_path: Path) -> None:
    ids = [f"kill-{i:03d}" for i in range(200)]
    short = ChainBuilder(tmp_path / "short").add("r1", T1)
    slow = (
        ChainBuilder(tmp_path / "slow")
        .add("r1", T1)
        .add("r2", "op.execute('SELECT pg_sleep(0.01)')\n" + T2 + "\nop.execute('SELECT pg_sleep(0.01)')")
    )
    report = fleet.provision(engine, Chain.load(short.ini), ids, jobs=4)
    assert report.ok and len(report.results) == 200

    url = url_string + ("&" if "?" in url_string else "?") + "application_name=wst-sigkill"
    command = [*CLI, "--database-url", url, "-c", str(slow.ini), "upgrade", "--all", "-j", "4"]
    log = (tmp_path / "killed.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=log)
    at_r2 = 0
    deadline = time.monotonic() + 120
    with engine.connect() as conn:
        while at_r2 < 30 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
            at_r2 = conn.execute(
                sa.text("SELECT count(*) FROM project_registry.workspace_config WHERE revision = 'r2'")
            ).scalar_one()
            conn.rollback()
    assert process.poll() is None, (tmp_path / "killed.log").read_text()
    os.kill(process.pid, signal.SIGKILL)
    process.wait(WAIT)
    assert process.returncode == -signal.SIGKILL
    with engine.connect() as conn:  # the killed tool's sessions end (and roll back) on their own
        deadline = time.monotonic() + WAIT
        while conn.execute(
            sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'wst-sigkill'")
        ).scalar_one():
            assert time.monotonic() < deadline
            time.sleep(0.02)
            conn.rollback()

    versions = assert_consistent(engine)
    assert len(versions) == 200
    done = sum(v == "r2" for v in versions.values())
    assert set(versions.values()) <= {"r1", "r2"}
    assert 0 < done < 200, f"the kill landed outside the run ({done} of 200 upgraded)"

    rerun = subprocess.run(
        [*CLI, "--database-url", url_string, "-c", str(slow.ini), "upgrade", "--all", "-j", "4", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert set(assert_consistent(engine).values()) == {"r2"}
    print(f"\nSIGKILL after {done}/200 schemas upgraded; rerun finished the other {200 - done}")


# ------------------------------------------------------- server restart mid-run
@pytest.fixture(scope="module")
def private_server() -> Iterator[PrivateServer]:
    server = PrivateServer()
    yield server
    server.stop()


@pytest.fixture
def private_engine(private_server: PrivateServer) -> Iterator[sa.Engine]:
    import uuid

    name = f"wst_restart_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(private_server.url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine = sa.create_engine(sa.make_url(private_server.url).set(database=name))
    yield engine
    engine.dispose()
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def hold_gate(engine: sa.Engine) -> sa.Connection:
    admin = engine.connect()
    admin.execute(sa.text("BEGIN"))
    admin.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": GATE})
    return admin


def run_while_the_server_stops(
    server: PrivateServer,
    engine: sa.Engine,
    blocker: sa.Connection,
    command: list[str],
    blocked: int,
    stop: Callable[[], None],
) -> tuple[int, str, str]:
    """Run ``command``; once ``blocked`` of its sessions wait on ``blocker``'s advisory lock, ``stop`` the
    server; the command's exit status and output, never a traceback. The server is started again whatever
    happens, and ``engine``'s pooled connections, which died with it, dropped."""
    upgrade = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        waiting_on_advisory(blocker, blocked)
        stop()
        blocker.invalidate()
        out, err = upgrade.communicate(timeout=WAIT * 2)
    finally:
        if upgrade.poll() is None:
            upgrade.kill()
        server.resume()
        engine.dispose()
    assert "Traceback" not in err
    return upgrade.returncode, out, err


@pytest.mark.slow
def test_server_restart_during_ensure(
    private_server: PrivateServer, private_engine: sa.Engine, chains: dict[str, Path]
) -> None:
    mgr = WorkspaceManager(private_engine, chains["gated"])
    mgr.bootstrap()
    ids = ["restart-a", "restart-b", "restart-c"]
    admin = hold_gate(private_engine)
    victims = [Victim(lambda p=p: mgr.ensure(p)) for p in ids]  # type: ignore[misc]
    for victim in victims:
        victim.start()
    waiting_on_advisory(admin, len(ids))
    private_server.restart()
    admin.invalidate()
    for project_id, victim in zip(ids, victims, strict=True):
        victim.finish()
        assert_clear_connection_error(victim, f"project_{project_id.replace('-', '_')}")
    # the pool held connections the restart broke: the next calls must still work
    assert assert_consistent(private_engine) == {}
    for project_id in ids:
        assert mgr.ensure_detailed(project_id).action == "created"
    assert set(assert_consistent(private_engine).values()) == {"r3"}


@pytest.mark.slow
def test_server_restart_during_cli_runs(
    private_server: PrivateServer, private_engine: sa.Engine, chains: dict[str, Path]
) -> None:
    url = private_engine.url.render_as_string(hide_password=False)
    for project_id in ("up-a", "up-b", "up-c", "up-d"):
        subprocess.run([*CLI, "--database-url", url, "-c", str(chains["short"]), "ensure", project_id], check=True)
    admin = hold_gate(private_engine)
    ensure = subprocess.Popen(
        [*CLI, "--database-url", url, "-c", str(chains["gated"]), "ensure", "new-x"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    upgrade = subprocess.Popen(
        # --retries 0: a lost connection is retried by default, and the server may be back in time
        [
            *CLI,
            "--database-url",
            url,
            "-c",
            str(chains["gated"]),
            "upgrade",
            "--all",
            "-j",
            "2",
            "--json",
            "--retries",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    waiting_on_advisory(admin, 3)
    private_server.restart()
    admin.invalidate()
    out, err = ensure.communicate(timeout=WAIT * 2)
    assert ensure.returncode == 1, (out, err)
    assert out == ""
    [line] = err.strip().splitlines()
    assert line.startswith("Error: database connection failed while working on project_new_x")
    assert "Traceback" not in err

    out, err = upgrade.communicate(timeout=WAIT * 2)
    assert upgrade.returncode == 1, (out, err)
    assert "Traceback" not in err
    assert "connection" in out  # per-schema errors in the JSON report
    assert_consistent(private_engine)

    rerun = subprocess.run(
        [*CLI, "--database-url", url, "-c", str(chains["gated"]), "upgrade", "--all"], capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr
    again = subprocess.run(
        [*CLI, "--database-url", url, "-c", str(chains["gated"]), "ensure", "new-x"], capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert set(assert_consistent(private_engine).values()) == {"r3"}
    assert len(assert_consistent(private_engine)) == 5


@pytest.mark.slow
@pytest.mark.parametrize("commit", ["async", "durable"])
def test_a_server_crash_mid_run_undoes_unflushed_schemas_whole_and_a_rerun_finishes(
    private_server: PrivateServer, private_engine: sa.Engine, chains: dict[str, Path], commit: str
) -> None:
    """The run's schemas commit without waiting for their flush (--commit async, the default): a crash before
    the run's one flush may undo some of them. Each is undone whole (schema and registry row), the run says
    in one line that it can't confirm them, and a rerun finishes. The WAL writer is slowed down so that the
    commits before the crash are very likely not flushed yet. With --commit durable every commit the run
    made before the crash survives it."""
    ids = [f"crash-{i:02d}" for i in range(8)]
    assert fleet.provision(private_engine, Chain.load(chains["short"]), ids, jobs=2).ok
    url = private_engine.url.render_as_string(hide_password=False)
    settings = {"wal_writer_delay": "10s", "wal_writer_flush_after": "1GB"}
    admin = sa.create_engine(private_server.url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            for name, value in settings.items():
                conn.execute(sa.text(f"ALTER SYSTEM SET {name} = '{value}'"))
            conn.execute(sa.text("SELECT pg_reload_conf()"))
        last = private_engine.connect()
        last.execute(sa.text("BEGIN"))  # the last schema in name order waits for its lock: the others are done
        last.execute(sa.text(LOCK_SQL), {"key": lock_key("project_crash_07")})
        command = [*CLI, "-q", "--database-url", url, "-c", str(chains["gated"]), "upgrade", "--all", "-j", "1"]
        options = ["--order", "name", "--retries", "0", "--lock-timeout", "60s", "--commit", commit]
        committed: list[int] = []

        def crash() -> None:
            committed.append(sum(v == "r3" for v in assert_consistent(private_engine).values()))
            private_server.crash()

        run = [*command, *options]
        code, out, err = run_while_the_server_stops(private_server, private_engine, last, run, 1, crash)
        assert committed == [7]  # committed and seen by other sessions before the crash
        assert code == 1, (out, err)
        after = assert_consistent(private_engine)  # each schema whole: its version and its row agree
        survived = sum(v == "r3" for v in after.values())
        if commit == "async":
            [line] = err.strip().splitlines()
            assert line.startswith("Error: 7 schema(s) migrated, but the server did not confirm that they are on disk")
            assert "run the command again" in line
            assert re.search(r"^ok\s+7\s", out, re.MULTILINE), out  # the run's report all the same
            print(f"\n{survived} of the 7 schemas committed before the crash survived it")
        else:  # the last schema failed on the crash, in the report; the others were on disk when it came
            assert survived == 7 and "database connection lost" in out
        rerun = subprocess.run(command, capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr
        assert set(assert_consistent(private_engine).values()) == {"r3"}
    finally:
        with admin.connect() as conn:
            for name in settings:
                conn.execute(sa.text(f"ALTER SYSTEM RESET {name}"))
            conn.execute(sa.text("SELECT pg_reload_conf()"))
        admin.dispose()


@pytest.mark.slow
def test_server_stopped_mid_fleet_starts_no_more_schemas_and_a_rerun_finishes(
    private_server: PrivateServer, private_engine: sa.Engine, chains: dict[str, Path]
) -> None:
    ids = [f"down-{i:02d}" for i in range(12)]
    assert fleet.provision(private_engine, Chain.load(chains["short"]), ids, jobs=2).ok
    url = private_engine.url.render_as_string(hide_password=False)
    command = [*CLI, "--database-url", url, "-c", str(chains["gated"]), "upgrade", "--all", "-j", "2"]
    admin = hold_gate(private_engine)
    # two schemas mid-transaction, ten waiting their turn, when the server stops
    code, out, err = run_while_the_server_stops(private_server, private_engine, admin, command, 2, private_server.halt)

    assert code == 1, (out, err)
    lines = err.splitlines()
    failures = [line for line in lines if " failed: database connection lost (" in line]
    stopping = [line for line in lines if line.startswith("Stopping: ")]
    assert stopping == [
        "Stopping: the database connection was lost, 3 schemas in a row failed on it; starting no more "
        "schemas: rerun when the database is back"
    ]
    assert 3 <= len(failures) <= 4  # the third in a row stops the run; the other worker's schema ends too
    not_started = 12 - len(failures)
    assert (
        f"upgrade to r3: 0 ok, {len(failures)} failed, {not_started} skipped ({not_started} not started: the "
        "database connection was lost, 3 schemas in a row failed on it)"
    ) in err
    assert [line for line in lines if "project_down_" in line] == failures, err  # no line for a schema not started

    assert set(assert_consistent(private_engine).values()) == {"r1"}
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=WAIT * 2)
    assert rerun.returncode == 0, rerun.stderr
    assert "upgrade to r3: 12 ok, 0 failed, 0 skipped" in rerun.stderr
    assert set(assert_consistent(private_engine).values()) == {"r3"}
