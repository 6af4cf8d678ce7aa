"""Faults on a Citus cluster (issue 11, item 3), and what Citus's commit protocol guarantees a schema's
transaction (its DDL on a worker and its registry row on the coordinator commit together, by two-phase
commit; after a failure in the commit phase, the worker's side appears once the prepared transaction is
recovered).

These run only with ``-m citus`` (``tox -e citus``); stopping a worker needs the cluster's nodes (the cluster
this session started, or the one in WORKSPACE_TOOL_CITUS_DIR), see ``citus_nodes`` in conftest.py.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator

import citus_cluster
import pytest
import sqlalchemy as sa
from support.chains import ALEMBIC_INI, HEAD, ChainBuilder
from support.citus import on_all_nodes
from support.cli import run_cli
from support.concurrency import GATE, WAIT, Victim
from support.db import assert_consistent

from workspace_tool import WorkspaceManager, doctor, fleet
from workspace_tool.chain import Chain
from workspace_tool.fleet import Progress
from workspace_tool.managers import cache

pytestmark = [pytest.mark.citus, pytest.mark.usefixtures("citus_clean")]

GATED = "0005_gated"


@pytest.fixture
def nodes(citus_nodes: citus_cluster.Cluster | None) -> citus_cluster.Cluster:
    if citus_nodes is None:
        pytest.skip("stopping a worker needs the cluster's nodes: WORKSPACE_TOOL_CITUS_URL is another cluster's")
    return citus_nodes


@pytest.fixture
def gated_chain(chain_builder: ChainBuilder) -> Chain:
    """The main chain plus a revision that, after its first DDL (its worker sessions are open then), waits on
    the advisory lock (GATE, its schema): a test holding that lock holds the schema's migration there."""
    chain_builder.copy_main_chain().add(
        GATED,
        f"""
        op.add_column("repositories", sa.Column("note", sa.Text()))
        op.execute("SELECT pg_advisory_xact_lock({GATE}, hashtext(current_schema()))")
        op.create_index("ix_repositories_note", "repositories", ["note"])
        """,
        """
        op.drop_index("ix_repositories_note", table_name="repositories")
        op.drop_column("repositories", "note")
        """,
    )
    return Chain.load(chain_builder.ini)


class HeldAt:
    """Holds the gate of one schema: its migration through ``gated_chain`` waits inside its transaction,
    after its first DDL, until ``release``."""

    def __init__(self, engine: sa.Engine, schema: str) -> None:
        self.engine = engine
        self.schema = schema
        self.conn = engine.connect()
        self.conn.execute(sa.text("SELECT pg_advisory_lock(:g, hashtext(:s))"), {"g": GATE, "s": schema})
        self.conn.commit()

    def wait_until_blocked(self, run: Victim) -> None:
        deadline = time.monotonic() + WAIT
        while True:
            with self.engine.connect() as conn:
                blocked = conn.execute(
                    sa.text(
                        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                        "AND classid = :g AND objid = hashtext(:s)::oid)"
                    ),
                    {"g": GATE, "s": self.schema},
                ).scalar()
            if blocked:
                return
            assert run.is_alive(), f"the run ended before reaching the gate: {run.error!r} {run.result!r}"
            assert time.monotonic() < deadline, "the migration never reached the gate"
            time.sleep(0.02)

    def release(self) -> None:
        if not self.conn.closed:
            self.conn.execute(sa.text("SELECT pg_advisory_unlock_all()"))  # session locks outlive a pool return
            self.conn.close()


def node_of(engine: sa.Engine, project_id: str) -> str:
    [status] = WorkspaceManager(engine, ALEMBIC_INI).status([project_id])
    assert status.node is not None
    return status.node


def on_node(engine: sa.Engine, node: str) -> sa.Engine:
    """An engine on one node of the cluster (same user and database as the coordinator's)."""
    host, port = node.rsplit(":", 1)
    return sa.create_engine(engine.url.set(host=host, port=int(port)), poolclass=sa.pool.NullPool)


def terminate_citus_sessions(engine: sa.Engine, node: str, *, in_transaction: bool = True) -> int:
    """Terminate the coordinator's sessions on ``node`` (Citus opens them as 'citus_internal gpid=...'):
    those inside a transaction, or all of them."""
    worker = on_node(engine, node)
    state = "idle in transaction%" if in_transaction else "%"
    try:
        with worker.connect() as conn:
            return len(
                conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                        "AND application_name LIKE 'citus_internal gpid=%' AND coalesce(state, '') LIKE :state"
                    ),
                    {"state": state},
                ).all()
            )
    finally:
        worker.dispose()


def placed_versions(engine: sa.Engine, schema: str) -> list[str]:
    """The schema's alembic_version as its placement on its worker holds it (read there)."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text("SELECT result FROM run_command_on_placements(:t, 'SELECT version_num FROM %s')"),
                {"t": f"{schema}.alembic_version"},
            ).scalars()
        )


def registry_of(engine: sa.Engine, project_id: str) -> tuple[str, str]:
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT revision, status FROM project_registry.workspace_config WHERE project_id = :p"),
            {"p": project_id},
        ).one()
    return str(row[0]), str(row[1])


# ------------------------------------------------------------------ a worker's backend terminated mid-run
def test_a_worker_backend_terminated_mid_upgrade_leaves_the_project_as_it_was_and_a_rerun_finishes(
    citus_engine: sa.Engine, gated_chain: Chain
) -> None:
    assert fleet.provision(citus_engine, gated_chain, ["victim"], target=HEAD).ok
    node = node_of(citus_engine, "victim")
    gate = HeldAt(citus_engine, "project_victim")
    try:
        run = Victim(lambda: fleet.upgrade(citus_engine, gated_chain, retries=0, lock_timeout_ms=60_000))
        run.start()
        gate.wait_until_blocked(run)  # inside its transaction, its first DDL done on the worker
        assert terminate_citus_sessions(citus_engine, node) >= 1
    finally:
        gate.release()
    run.finish()
    assert isinstance(run.result, fleet.FleetReport)
    [result] = run.result.results
    assert result.status == "failed" and result.error is not None
    assert "terminating connection due to administrator command" in result.error

    # the project as it was, on its worker and in the registry (the row says the run failed)
    assert placed_versions(citus_engine, "project_victim") == [HEAD]
    assert registry_of(citus_engine, "victim") == (HEAD, "failed")
    columns = on_all_nodes(
        citus_engine,
        "SELECT count(*) FROM information_schema.columns "
        "WHERE table_schema = 'project_victim' AND column_name = 'note'",
    )
    assert set(columns.values()) == {"0"}

    rerun = fleet.upgrade(citus_engine, gated_chain)
    assert [(r.project_id, r.status) for r in rerun.results] == [("victim", "ok")]
    assert placed_versions(citus_engine, "project_victim") == [GATED]
    assert registry_of(citus_engine, "victim") == (GATED, "ready")


# ------------------------------------------------------------------ a worker stopped during upgrade --all
def test_a_worker_stopped_during_upgrade_all_stops_the_run_naming_it_and_a_rerun_finishes(
    citus_engine: sa.Engine, gated_chain: Chain, nodes: citus_cluster.Cluster
) -> None:
    """A stopped worker blocks every schema change (DDL goes to every node holding metadata), on either
    worker: what the first schemas finished stays; each schema tried after fails in one line naming the
    worker; the run stops starting schemas; a rerun after the worker is back finishes them."""
    projects = [f"p{i}" for i in range(8)]
    assert fleet.provision(citus_engine, gated_chain, projects, target=HEAD, jobs=4).ok
    placed = {p: node_of(citus_engine, p) for p in projects}
    assert len(set(placed.values())) == 2  # both workers hold some
    second = projects[1]
    stopped = next(n for n in set(placed.values()) if n != placed[second])  # not the worker of the 2nd
    worker = nodes.node_at(stopped)
    gate = HeldAt(citus_engine, f"project_{second}")
    events: list[Progress] = []
    try:
        run = Victim(
            lambda: fleet.upgrade(citus_engine, gated_chain, jobs=1, lock_timeout_ms=60_000, progress=events.append)
        )
        run.start()
        gate.wait_until_blocked(run)  # the 1st schema is done; the 2nd waits inside its transaction
        nodes.stop_node(worker)
        gate.release()
        run.finish()
        report = run.result
        assert isinstance(report, fleet.FleetReport)
        outcome = {r.project_id: r for r in report.results}
        assert outcome[projects[0]].status == "ok"
        failed = [r for r in report.results if r.status == "failed"]
        not_started = report.not_started()
        assert failed[0].project_id == second  # on the worker still up
        assert len(failed) == 3 and len(failed) + len(not_started) == len(projects) - 1
        for r in failed:
            assert r.error is not None and stopped in r.error, r.error
        assert report.stopped == f"Citus worker {stopped} is unreachable, 3 schemas in a row failed on it"
        assert {r.note for r in not_started} == {f"not started: {report.stopped}"}
        assert events[-1].stopped == report.stopped

        # while it is down: the registry agrees with every schema still reachable, and commands say why
        for p in projects[1:]:
            assert registry_of(citus_engine, p)[0] == HEAD
        cache.clear()
        again = run_cli("--database-url", citus_engine.url.render_as_string(hide_password=False), "-c",
                        str(gated_chain.config_path), "upgrade", "--all")  # fmt: skip
        assert again.exit_code == 1 and again.stdout == ""
        assert again.stderr.startswith(f"Error: Citus worker {stopped} is unreachable:"), again.stderr
        assert len(again.stderr.splitlines()) == 1
    finally:
        gate.release()
        if not nodes.runs(worker):
            nodes.start_node(worker)

    rerun = fleet.upgrade(citus_engine, gated_chain)
    assert {r.project_id: r.status for r in rerun.results} == {
        projects[0]: "skipped",
        **{p: "ok" for p in projects[1:]},
    }
    assert set(assert_consistent(citus_engine).values()) == {GATED}


# ------------------------------------------------------------------------- a schema moved to the other worker
def test_a_schema_moved_to_the_other_worker_shows_its_new_node_and_keeps_working(
    citus_engine: sa.Engine, citus_url: str
) -> None:
    manager = WorkspaceManager(citus_engine, ALEMBIC_INI)
    manager.ensure("mover")
    manager.ensure("stayer")
    add_rows_to(citus_engine, "mover", "kept across the move")
    before = node_of(citus_engine, "mover")
    with citus_engine.connect() as conn:
        others = conn.execute(
            sa.text("SELECT node_name || ':' || node_port FROM citus_get_active_worker_nodes()")
        ).scalars()
        target = next(n for n in others if n != before)
        host, port = target.rsplit(":", 1)
        conn.execute(
            sa.text("SELECT citus_schema_move('project_mover', :h, :p, 'block_writes')"), {"h": host, "p": int(port)}
        )
        conn.commit()

    assert node_of(citus_engine, "mover") == target
    status = run_cli("--database-url", citus_url, "status", "mover")
    assert status.exit_code == 0 and target in status.stdout.splitlines()[1]
    assert manager.ensure_detailed("mover", verify=True).action == "verified"
    cache.clear()
    assert WorkspaceManager(citus_engine, ALEMBIC_INI).ensure_detailed("mover").action == "current"
    with citus_engine.connect() as conn:
        names = conn.execute(sa.text("SELECT name FROM project_mover.repositories")).scalars().all()
    assert names == ["kept across the move"]
    # DDL goes to its new worker: a round trip down and up, then check
    chain = Chain.load(ALEMBIC_INI)
    assert fleet.downgrade(citus_engine, chain, ["mover"], target=chain.revisions[0]).ok
    assert fleet.upgrade(citus_engine, chain).ok
    check = run_cli("--database-url", citus_url, "check")
    assert check.exit_code == 0 and "2 schema(s) checked" in check.stderr and "all match" in check.stderr
    assert node_of(citus_engine, "mover") == target


def add_rows_to(engine: sa.Engine, project_id: str, *names: str) -> None:
    with engine.begin() as conn:
        for name in names:
            conn.execute(
                sa.text(f'INSERT INTO "project_{project_id}".repositories (path, name) VALUES (:n, :n)'), {"n": name}
            )


# ------------------------------------------------------------------------------- two-phase commit
@pytest.fixture
def commit_pauses_after_prepare(citus_engine: sa.Engine) -> Iterator[sa.Engine]:
    """An engine whose sessions' COMMIT stops after Citus has prepared the transaction on the workers and
    committed it on the coordinator, and before it commits the prepared transactions: it waits for a
    synchronous standby that does not exist (until cancelled). Citus's own recovery of prepared
    transactions is off meanwhile, so what that window leaves stays visible until recovered by hand."""
    settings = {"synchronous_standby_names": "'wst_no_such_standby'", "citus.recover_2pc_interval": "-1"}

    def configure(reset: bool) -> None:
        with citus_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for name, value in settings.items():
                conn.execute(sa.text(f"ALTER SYSTEM RESET {name}" if reset else f"ALTER SYSTEM SET {name} = {value}"))
            conn.execute(sa.text("SELECT pg_reload_conf()"))

    configure(reset=False)
    waiting = sa.create_engine(
        citus_engine.url, poolclass=sa.pool.NullPool, connect_args={"options": "-c synchronous_commit=on"}
    )
    try:
        deadline = time.monotonic() + WAIT
        while True:  # the reload reaches new sessions
            with waiting.connect() as conn:
                if conn.execute(sa.text("SHOW synchronous_standby_names")).scalar() == "wst_no_such_standby":
                    break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield waiting
    finally:
        configure(reset=True)
        waiting.dispose()
        citus_engine.dispose()
        with citus_engine.connect() as conn:  # what a failed run of the test left prepared
            conn.execute(sa.text("SELECT recover_prepared_transactions()"))
            conn.commit()


def test_a_commit_that_fails_after_prepare_commits_the_registry_row_and_the_worker_catches_up_on_recovery(
    citus_engine: sa.Engine, commit_pauses_after_prepare: sa.Engine
) -> None:
    """What Citus guarantees one schema's transaction (DDL on the workers, the registry row on the
    coordinator): two-phase commit. Its outcome is decided by the coordinator's commit; a failure after
    that (here: the workers' sessions killed before COMMIT PREPARED) does not undo it: ensure succeeds, the
    registry row is there, and the workers' side, prepared, appears when the prepared transactions are
    recovered (by Citus's maintenance daemon within citus.recover_2pc_interval, 60 s by default)."""
    WorkspaceManager(citus_engine, ALEMBIC_INI).bootstrap()
    cache.clear()
    run = Victim(lambda: WorkspaceManager(commit_pauses_after_prepare, ALEMBIC_INI).ensure_detailed("twopc"))
    run.start()
    deadline = time.monotonic() + WAIT
    while True:
        with citus_engine.connect() as conn:
            pid = conn.execute(
                sa.text(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep' AND datname = current_database()"
                )
            ).scalar()
        if pid is not None:
            break
        assert run.is_alive() and time.monotonic() < deadline, run.error
        time.sleep(0.02)
    workers = worker_nodes(citus_engine)
    assert prepared(citus_engine, workers) == dict.fromkeys(workers, 1)  # phase one done on both workers
    for node in workers:
        terminate_citus_sessions(citus_engine, node, in_transaction=False)
    with citus_engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_cancel_backend(:pid)"), {"pid": pid})
    run.finish()
    citus_engine.dispose()  # its pooled sessions' cached connections to the workers were killed too

    assert run.error is None and getattr(run.result, "action", None) == "created"
    assert registry_of(citus_engine, "twopc") == (HEAD, "ready")
    assert prepared(citus_engine, workers) == dict.fromkeys(workers, 1)  # phase two failed: still prepared
    schema_on = on_all_nodes(citus_engine, "SELECT count(*) FROM pg_namespace WHERE nspname = 'project_twopc'")
    assert {n: schema_on[n] for n in workers} == dict.fromkeys(workers, "0")  # not there yet

    with citus_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT recover_prepared_transactions()")).scalar() == len(workers)
        conn.commit()
    assert prepared(citus_engine, workers) == dict.fromkeys(workers, 0)
    schema_on = on_all_nodes(citus_engine, "SELECT count(*) FROM pg_namespace WHERE nspname = 'project_twopc'")
    assert set(schema_on.values()) == {"1"}
    add_rows_to(citus_engine, "twopc", "after recovery")
    assert WorkspaceManager(citus_engine, ALEMBIC_INI).ensure_detailed("twopc", verify=True).action == "verified"
    assert assert_consistent(citus_engine) == {"project_twopc": HEAD}


def worker_nodes(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text("SELECT node_name || ':' || node_port FROM citus_get_active_worker_nodes() ORDER BY 1")
            ).scalars()
        )


def prepared(engine: sa.Engine, workers: list[str]) -> dict[str, int]:
    """Prepared transactions waiting on each worker, read there directly."""
    counts = {}
    for node in workers:
        worker = on_node(engine, node)
        try:
            with worker.connect() as conn:
                counts[node] = int(conn.execute(sa.text("SELECT count(*) FROM pg_prepared_xacts")).scalar_one())
        finally:
            worker.dispose()
    return counts


# ------------------------------------------------------------------------- doctor
class Relay:
    """A TCP relay on a free local port to ``target`` (a port of 127.0.0.1): a stand-in for a pooler."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.server = socket.create_server(("127.0.0.1", 0))
        self.threads: list[threading.Thread] = []

    def __enter__(self) -> int:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        return int(self.server.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def test_doctor_checks_every_node_and_names_a_stopped_worker(
    citus_engine: sa.Engine, nodes: citus_cluster.Cluster
) -> None:
    WorkspaceManager(citus_engine, ALEMBIC_INI).ensure("doc")
    url = citus_engine.url.render_as_string(hide_password=False)

    def citus_findings() -> tuple[int, list[dict[str, str]]]:
        result = run_cli("--database-url", url, "-c", str(ALEMBIC_INI), "doctor", "--jobs", "2", "--json")
        return result.exit_code, [f for f in json.loads(result.stdout)["findings"] if f["check"] == "citus"]

    assert citus_findings() == (
        0,
        [{"check": "citus", "status": "ok", "finding": "3 node(s), 2 worker(s): all active and answering"}],
    )
    # over TCP, straight to the server: nothing in between; through a relay on another port: something is
    pooler = doctor.diagnose(
        citus_engine, Chain.load(ALEMBIC_INI), jobs=2, checks=[("pooler", doctor.transaction_pooler)]
    )
    assert [f.finding for f in pooler.findings] == ["no connection pooler detected"]
    with Relay(citus_engine.url.port or 5432) as port:
        relayed = sa.create_engine(citus_engine.url.set(port=port), poolclass=sa.pool.NullPool)
        through = doctor.diagnose(
            relayed, Chain.load(ALEMBIC_INI), jobs=2, checks=[("pooler", doctor.transaction_pooler)]
        )
        relayed.dispose()
    [warning] = through.findings
    assert warning.status == "warn" and warning.finding.startswith(
        f"the URL dials port {port}, the server listens on {citus_engine.url.port}: a pooler or proxy stands in "
        "between, and no direct URL: fine for this chain, but a revision that runs outside a transaction"
    )
    worker = next(n for n in nodes.nodes if n.name != "coordinator")
    try:
        nodes.stop_node(worker)
        code, [found] = citus_findings()
        assert code == 1 and found["status"] == "problem"
        assert found["finding"].startswith(f"worker 127.0.0.1:{worker.port} does not answer the coordinator (")
        assert found["finding"].endswith("start it, or let the coordinator reach it; until then no project schema "
                                         "can be changed")  # fmt: skip
    finally:
        if not nodes.runs(worker):
            nodes.start_node(worker)
        citus_engine.dispose()  # its pooled sessions' cached connections to that worker were cut
