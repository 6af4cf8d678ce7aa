"""Fleet upgrades and downgrades through the library: one transaction per schema, failures isolated and
reported, lock timeouts retried then reported, rerunning picks up what is left, nothing leaked."""

from __future__ import annotations

import itertools
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from support.chains import ALEMBIC_INI
from support.data import add_rows, make_schema_by_hand
from support.db import registry_state, schema_version

from workspace_tool import WorkspaceManager, fleet
from workspace_tool.chain import Chain
from workspace_tool.fleet.migrator import Migrator
from workspace_tool.schema.operation import Work

ONLINE_EXTRA = "workspace_online = True\n"
IDS = [f"p{i:02d}" for i in range(1, 21)]


@pytest.fixture
def fleet_at_a1(engine: sa.Engine, tiny: Chain) -> Iterator[Chain]:
    report = fleet.provision(engine, tiny, IDS, target="a1", jobs=4)
    assert report.counts()["ok"] == len(IDS)
    yield tiny


def by_project(report: fleet.FleetReport) -> dict[str, fleet.SchemaResult]:
    return {r.project_id: r for r in report.results}


def test_upgrade_all_migrates_what_is_behind_and_skips_the_rest(engine: sa.Engine, fleet_at_a1: Chain) -> None:
    fleet.upgrade(engine, fleet_at_a1, ["p01", "p02"], jobs=2)
    report = fleet.upgrade(engine, fleet_at_a1, jobs=4)
    results = by_project(report)
    assert report.ok and report.counts() == {"ok": 18, "failed": 0, "skipped": 2, "gone": 0}
    assert results["p01"].note == "already at target" and results["p03"].status == "ok"
    assert results["p03"].from_revision == "a1" and results["p03"].to_revision == "a2"
    assert results["p03"].path == "fast" and report.executor == "threads"
    assert all(schema_version(engine, f"project_{p}") == "a2" for p in IDS)
    assert tuple(registry_state(engine, "p20")) == ("a2", "ready", None)
    # a no-op run touches no schema and starts no worker
    again = fleet.upgrade(engine, fleet_at_a1, jobs=4)
    assert again.counts() == {"ok": 0, "failed": 0, "skipped": 20, "gone": 0} and again.executor == "none"


def test_failing_subset_stays_at_its_revision_with_data_and_rerun_resumes(
    engine: sa.Engine, fleet_at_a1: Chain
) -> None:
    bad = ["p04", "p11", "p17"]
    for project_id in bad:
        add_rows(engine, project_id, "dup", "dup")
    add_rows(engine, "p01", "unique")

    report = fleet.upgrade(engine, fleet_at_a1, jobs=4)

    assert not report.ok and report.counts() == {"ok": 17, "failed": 3, "skipped": 0, "gone": 0}
    for result in report.failed:
        assert result.project_id in bad
        assert 'could not create unique index "ux_items_name"' in (result.error or "")
        assert "Key (name)=(dup) is duplicated" in (result.error or "")
    for project_id in bad:
        assert schema_version(engine, f"project_{project_id}") == "a1"
        with engine.connect() as conn:
            names = conn.execute(sa.text(f'SELECT name FROM "project_{project_id}".items')).scalars().all()
        assert names == ["dup", "dup"]
        revision, status, last_error = registry_state(engine, project_id)
        assert (revision, status) == ("a1", "failed") and "is duplicated" in last_error
    assert schema_version(engine, "project_p01") == "a2"

    # fix one schema's data: the rerun upgrades it alone and reports the other two again
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM project_p04.items WHERE id = (SELECT max(id) FROM project_p04.items)"))
    rerun = fleet.upgrade(engine, fleet_at_a1, jobs=4)
    assert rerun.counts() == {"ok": 1, "failed": 2, "skipped": 17, "gone": 0}
    assert by_project(rerun)["p04"].status == "ok"
    assert tuple(registry_state(engine, "p04")) == ("a2", "ready", None)
    assert {r.project_id for r in rerun.failed} == {"p11", "p17"}


def test_fail_fast_stops_starting_schemas_after_the_first_failure(engine: sa.Engine, fleet_at_a1: Chain) -> None:
    add_rows(engine, "p05", "dup", "dup")
    add_rows(engine, "p15", "dup", "dup")

    report = fleet.upgrade(engine, fleet_at_a1, jobs=1, fail_fast=True)

    results = by_project(report)
    assert [r.project_id for r in report.failed] == ["p05"]
    assert [p for p in IDS if results[p].status == "ok"] == ["p01", "p02", "p03", "p04"]
    not_started = [p for p in IDS if results[p].status == "skipped"]
    assert not_started == IDS[5:]
    assert all("fail-fast" in (results[p].note or "") for p in not_started)
    assert schema_version(engine, "project_p06") == "a1"

    # continue-on-error (the default) does the rest and reports both failures
    rest = fleet.upgrade(engine, fleet_at_a1, jobs=1)
    assert {r.project_id for r in rest.failed} == {"p05", "p15"}
    assert rest.counts()["ok"] == 14


def test_lock_held_by_an_application_is_retried_then_reported(engine: sa.Engine, fleet_at_a1: Chain) -> None:
    holder = engine.connect()
    holder.begin()
    holder.execute(sa.text("LOCK TABLE project_p07.items IN ROW EXCLUSIVE MODE"))  # an open write transaction
    try:
        report = fleet.upgrade(engine, fleet_at_a1, jobs=4, lock_timeout_ms=200, retries=1)
    finally:
        holder.rollback()
        holder.close()
    (failed,) = report.failed
    assert failed.project_id == "p07" and failed.attempts == 2
    assert failed.error is not None and failed.error.startswith("lock timeout (200 ms, 2 attempts)")
    assert "lock timeout" in failed.error.split(":", 1)[1]
    assert report.counts()["ok"] == 19
    assert schema_version(engine, "project_p07") == "a1"
    assert registry_state(engine, "p07").status == "failed"
    with engine.connect() as conn:  # the session setting did not stay on the pooled connections
        assert conn.execute(sa.text("SHOW lock_timeout")).scalar() == "0"

    rerun = fleet.upgrade(engine, fleet_at_a1, jobs=4, lock_timeout_ms=200, retries=1)
    assert rerun.counts() == {"ok": 1, "failed": 0, "skipped": 19, "gone": 0}
    assert tuple(registry_state(engine, "p07")) == ("a2", "ready", None)


def test_downgrade_all_and_back(engine: sa.Engine, fleet_at_a1: Chain) -> None:
    fleet.upgrade(engine, fleet_at_a1, jobs=4)
    down = fleet.downgrade(engine, fleet_at_a1, target="a1", jobs=4)
    assert down.counts() == {"ok": 20, "failed": 0, "skipped": 0, "gone": 0}
    assert all(schema_version(engine, f"project_{p}") == "a1" for p in IDS)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass('project_p01.ux_items_name')")).scalar() is None
    # below the target: nothing to downgrade
    assert fleet.downgrade(engine, fleet_at_a1, target="a2", jobs=4).counts()["skipped"] == 20
    up = fleet.upgrade(engine, fleet_at_a1, jobs=4)
    assert up.counts()["ok"] == 20
    assert all(schema_version(engine, f"project_{p}") == "a2" for p in IDS)


def test_fleet_runs_invalidate_the_ensure_cache(engine: sa.Engine, fleet_at_a1: Chain) -> None:
    manager = WorkspaceManager(engine, fleet_at_a1.config_path)
    manager.ensure("p01")  # upgrades to a2 and caches it
    fleet.downgrade(engine, fleet_at_a1, ["p01"], target="a1")
    assert schema_version(engine, "project_p01") == "a1"
    assert manager.ensure_detailed("p01").action == "upgraded"  # not a stale cache hit
    manager.close()


def test_sql_prints_each_schemas_transaction_and_changes_nothing(engine: sa.Engine, fleet_at_a1: Chain) -> None:
    fleet.upgrade(engine, fleet_at_a1, ["p01"])
    with engine.connect() as conn:
        before = conn.execute(sa.text("SELECT * FROM project_registry.workspace_config ORDER BY 1")).all()

    scripts = {s.project_id: s for s in fleet.sql(engine, fleet_at_a1, lock_timeout_ms=750)}

    assert scripts["p01"].sql is None and scripts["p01"].note == "already at target"
    text = scripts["p02"].sql or ""
    assert scripts["p02"].path == "fast"
    assert "SET LOCAL lock_timeout = '750ms';" in text
    assert 'SET LOCAL search_path TO "project_p02", "workspace_extensions";' in text
    assert "CREATE UNIQUE INDEX ux_items_name ON items (name);" in text
    # the version moves and the registry row is written in the same statement, guarded (issue 10)
    assert "UPDATE alembic_version SET version_num='a2' WHERE alembic_version.version_num = 'a1'" in text
    assert "UPDATE project_registry.workspace_config" in text
    assert text.index("BEGIN") < text.index("CREATE UNIQUE INDEX") < text.index("UPDATE alembic_version")
    assert text.index("UPDATE alembic_version") < text.index("COMMIT;")
    with engine.connect() as conn:
        after = conn.execute(sa.text("SELECT * FROM project_registry.workspace_config ORDER BY 1")).all()
    assert after == before
    assert schema_version(engine, "project_p02") == "a1"


def test_missing_unknown_and_orphan_schemas_are_reported_not_touched(engine: sa.Engine, fleet_at_a1: Chain) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA project_p01 CASCADE"))  # registered, schema gone
        conn.execute(sa.text("DELETE FROM project_registry.workspace_config WHERE project_id = 'p02'"))  # orphan
        conn.execute(sa.text("UPDATE project_p03.alembic_version SET version_num = 'zz_future'"))
    report = by_project(fleet.upgrade(engine, fleet_at_a1, jobs=4))
    assert report["p01"].status == "skipped" and "schema is missing" in (report["p01"].note or "")
    assert report["p02"].status == "skipped" and "orphan" in (report["p02"].note or "")
    assert report["p03"].status == "failed" and "zz_future" in (report["p03"].error or "")
    assert schema_version(engine, "project_p02") == "a1"
    # naming an orphan adopts it into the registry
    adopted = fleet.upgrade(engine, fleet_at_a1, ["p02"])
    assert adopted.ok and tuple(registry_state(engine, "p02")) == ("a2", "ready", None)


def test_interrupt_lets_running_schemas_finish_and_starts_no_more(
    engine: sa.Engine, fleet_at_a1: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C as a terminal sends it (SIGINT to the process), once the third schema is done: seen at once by
    the calling thread while it waits for the workers, however rarely it takes their results."""
    threads_before = threading.active_count()
    finished = itertools.count(1)
    run = Migrator.run

    def run_then_ctrl_c(self: Migrator, work: Work) -> fleet.SchemaResult:
        result = run(self, work)
        if next(finished) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(Migrator, "run", run_then_ctrl_c)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # what a terminal's Ctrl-C raises
    try:
        report = fleet.upgrade(engine, fleet_at_a1, jobs=2)
    finally:
        signal.signal(signal.SIGINT, previous)

    assert report.interrupted and not report.ok
    done = [r for r in report.results if r.status == "ok"]
    not_started = [r for r in report.results if r.note == "not started: interrupted"]
    assert len(done) >= 3 and not_started and len(done) + len(not_started) == 20
    for result in report.results:  # every schema is wholly at one revision, its registry row agreeing
        version = schema_version(engine, result.schema)
        assert version == ("a2" if result.status == "ok" else "a1")
        assert registry_state(engine, result.project_id).revision == version
    assert threading.active_count() == threads_before
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_a_progress_callback_raising_keyboard_interrupt_stops_the_run(engine: sa.Engine, fleet_at_a1: Chain) -> None:
    """Ctrl-C landing in the progress callback (it runs in the calling thread): no schema is lost from the
    report, each one wholly at the revision its result says."""

    def interrupt(event: fleet.Progress) -> None:
        if event.done == 3:
            raise KeyboardInterrupt

    report = fleet.upgrade(engine, fleet_at_a1, jobs=2, progress=interrupt)

    assert report.interrupted and not report.ok
    assert sorted(r.project_id for r in report.results) == IDS  # each schema once
    assert len([r for r in report.results if r.status == "ok"]) >= 3
    for result in report.results:
        version = schema_version(engine, result.schema)
        assert version == ("a2" if result.status == "ok" else "a1")
        assert registry_state(engine, result.project_id).revision == version


def test_a_bug_in_a_worker_is_raised_and_stops_the_others(
    engine: sa.Engine, fleet_at_a1: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads_before = threading.active_count()
    run = Migrator.run

    def run_or_fail(self: Migrator, work: Work) -> fleet.SchemaResult:
        if work.project_id == "p02":
            raise ZeroDivisionError("a bug")
        return run(self, work)

    monkeypatch.setattr(Migrator, "run", run_or_fail)
    with pytest.raises(ZeroDivisionError, match="a bug"):
        fleet.upgrade(engine, fleet_at_a1, jobs=2)
    at_a2 = [pid for pid in IDS if schema_version(engine, f"project_{pid}") == "a2"]
    assert len(at_a2) < len(IDS) - 1  # the other worker started no more schemas once it was raised
    assert threading.active_count() == threads_before
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_bad_ids_are_rejected_before_any_sql(engine: sa.Engine, tiny: Chain) -> None:
    from workspace_tool import InvalidProjectId

    with pytest.raises(InvalidProjectId):
        fleet.upgrade(engine, tiny, ["ok-id", "Bad_Id"])


def test_citus_constraints_no_registry_foreign_keys_and_no_combined_create_schema(engine: sa.Engine) -> None:

    chain = Chain.load(ALEMBIC_INI)
    fleet.provision(engine, chain, ["citus-a"])
    with engine.connect() as conn:
        foreign = conn.execute(
            sa.text(
                "SELECT k.conname, rn.nspname FROM pg_constraint k "
                "JOIN pg_class r ON r.oid = k.confrelid JOIN pg_namespace rn ON rn.oid = r.relnamespace "
                "WHERE k.contype = 'f' AND k.connamespace = 'project_citus_a'::regnamespace"
            )
        ).all()
    assert foreign and {schema for _, schema in foreign} == {"project_citus_a"}  # only within the schema
    (script,) = fleet.sql(engine, chain, ["citus-b"], operation=fleet.PROVISION)
    text = script.sql or ""
    assert 'CREATE SCHEMA "project_citus_b";\n' in text  # a statement of its own
    assert text.count("CREATE SCHEMA") == 1


def test_batched_version_reads_hold_no_table_locks(engine: sa.Engine, fleet_at_a1: Chain) -> None:
    """Thousands of schemas are read in one transaction: each batch's locks go with its savepoint."""
    from workspace_tool.registry.inventory import read_versions

    with engine.connect() as conn, conn.begin():
        versions = read_versions(conn, [f"project_{p}" for p in IDS], batch_size=6)
        held = conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                "WHERE l.pid = pg_backend_pid() AND c.relname = 'alembic_version'"
            )
        ).scalar()
    assert set(versions.values()) == {"a1"} and len(versions) == 20
    assert held == 0


def test_a_failed_row_on_a_schema_at_base_is_cleared_once_the_schema_is_fine(
    engine: sa.Engine, fleet_at_a1: Chain
) -> None:
    """A registry row marked failed on a schema at base (registry revision NULL, as for a healthy row at
    base) is rewritten ready by the next run that finds the schema where it should be."""
    assert fleet.downgrade(engine, fleet_at_a1, ["p01"], target="base").ok
    assert tuple(registry_state(engine, "p01")) == (None, "ready", None)
    with engine.begin() as conn:  # a table in the way: upgrading from base fails on it
        conn.execute(sa.text("CREATE TABLE project_p01.items (x int)"))
    assert not fleet.upgrade(engine, fleet_at_a1, ["p01"]).ok
    assert registry_state(engine, "p01")[:2] == (None, "failed")
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE project_p01.items"))

    report = fleet.downgrade(engine, fleet_at_a1, ["p01"], target="base")

    assert report.ok and by_project(report)["p01"].status == "ok"
    assert tuple(registry_state(engine, "p01")) == (None, "ready", None)
    assert fleet.downgrade(engine, fleet_at_a1, ["p01"], target="base").counts()["skipped"] == 1


def last_action(engine: sa.Engine, project_id: str) -> tuple[str, str]:
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT status, last_action FROM project_registry.workspace_config WHERE project_id = :p"),
            {"p": project_id},
        ).one()
    return (row.status, row.last_action)


def test_the_registry_names_the_operation_in_one_word_whether_it_succeeded_or_failed(
    engine: sa.Engine, fleet_at_a1: Chain
) -> None:
    assert last_action(engine, "p01") == ("ready", "create")
    add_rows(engine, "p02", "dup", "dup")

    fleet.upgrade(engine, fleet_at_a1, ["p01", "p02"], fail_fast=False)

    assert last_action(engine, "p01") == ("ready", "upgrade")
    assert last_action(engine, "p02") == ("failed", "upgrade")
    fleet.downgrade(engine, fleet_at_a1, ["p01"], target="a1")
    assert last_action(engine, "p01") == ("ready", "downgrade")
    # a row written for a schema already at its revision (here an orphan, named): 'register'
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM project_registry.workspace_config WHERE project_id = 'p03'"))
    assert by_project(fleet.upgrade(engine, fleet_at_a1, ["p03"], target="a1"))["p03"].status == "ok"
    assert last_action(engine, "p03") == ("ready", "register")


def test_a_schema_moved_above_the_target_after_the_read_gets_an_error_that_says_downgrade(
    engine: sa.Engine, fleet_at_a1: Chain
) -> None:
    assert fleet.downgrade(engine, fleet_at_a1, ["p01"], target="base").ok

    def move_it_up(event: fleet.Progress) -> None:  # after the run's batch read, before its work
        if event.result is None:
            assert fleet.upgrade(engine, fleet_at_a1, ["p01"], target="a2").ok

    report = fleet.upgrade(engine, fleet_at_a1, ["p01"], target="a1", progress=move_it_up)

    (failed,) = report.failed
    assert failed.error == (
        "project p01 (schema project_p01) is at revision a2, ahead of the target a1; nothing was changed: "
        "to go back, run `workspace-tool downgrade p01 --to a1`"
    )
    assert schema_version(engine, "project_p01") == "a2"


def test_two_runs_at_once_migrate_each_schema_once_and_report_what_the_other_moved(
    engine: sa.Engine, fleet_at_a1: Chain
) -> None:
    both_have_read = threading.Barrier(2, timeout=30)

    def meet(event: fleet.Progress) -> None:
        if event.result is None:  # after the batch read: both runs have seen every schema at a1
            both_have_read.wait()

    reports: list[fleet.FleetReport] = []
    runs = [
        threading.Thread(target=lambda: reports.append(fleet.upgrade(engine, fleet_at_a1, jobs=2, progress=meet)))
        for _ in range(2)
    ]
    for thread in runs:
        thread.start()
    for thread in runs:
        thread.join(60)

    assert len(reports) == 2 and all(r.ok for r in reports)
    migrated = sorted(r.project_id for report in reports for r in report.results if r.status == "ok")
    assert migrated == IDS  # each schema migrated once, by one of the runs
    for report in reports:
        others = [r for r in report.results if r.status != "ok"]
        assert all(r.status == "skipped" and r.note == "already at target: moved by another run" for r in others)
        assert len(report.moved_by_another_run()) == len(others)
    assert all(schema_version(engine, f"project_{p}") == "a2" for p in IDS)


def _set_registry_revision(engine: sa.Engine, project_id: str, revision: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE project_registry.workspace_config SET revision = :r WHERE project_id = :p"),
            {"r": revision, "p": project_id},
        )


def test_a_registry_row_out_of_line_with_its_schema_neither_skips_nor_misreports_it(
    engine: sa.Engine, fleet_at_a1: Chain
) -> None:
    # p01's row says a2 though its schema is at a1; p02's schema is at a2 though its row says a1 (both made
    # out of band, e.g. by hand or an old tool): the run goes by the schemas, and puts the rows in line
    fleet.upgrade(engine, fleet_at_a1, ["p02"], jobs=1)
    _set_registry_revision(engine, "p01", "a2")
    _set_registry_revision(engine, "p02", "a1")

    report = fleet.upgrade(engine, fleet_at_a1, jobs=4)

    results = by_project(report)
    assert report.ok and report.counts() == {"ok": 20, "failed": 0, "skipped": 0, "gone": 0}
    assert (results["p01"].from_revision, results["p01"].to_revision) == ("a1", "a2")
    assert (results["p02"].status, results["p02"].reason, results["p02"].from_revision) == ("ok", None, "a2")
    assert all(schema_version(engine, f"project_{p}") == "a2" for p in IDS)
    assert all(tuple(registry_state(engine, p)) == ("a2", "ready", None) for p in IDS)


def test_naming_a_hand_made_schema_without_alembic_version_adopts_it_only_when_asked(
    engine: sa.Engine, fleet_at_a1: Chain
) -> None:

    make_schema_by_hand(engine, "project_legacy", "invoices")
    assert by_project(fleet.upgrade(engine, fleet_at_a1))["legacy"].note == (
        "not in the registry (orphan): name it to adopt it, or drop it with `workspace-tool drop`"
    )

    refused = by_project(fleet.upgrade(engine, fleet_at_a1, ["legacy"]))["legacy"]

    assert refused.status == "failed" and "no alembic_version" in (refused.error or "")
    assert "--adopt" in (refused.error or "")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass('project_legacy.items')")).scalar() is None
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM project_registry.workspace_config WHERE project_id = 'legacy'")
            ).scalar()
            == 0
        )

    adopted = by_project(fleet.upgrade(engine, fleet_at_a1, ["legacy"], adopt=True))["legacy"]

    assert adopted.status == "ok" and schema_version(engine, "project_legacy") == "a2"
    assert last_action(engine, "legacy") == ("ready", "adopt")


# ------------------------------------------------------------------ the engine's pool against --jobs
@pytest.fixture
def two_connection_engine(engine: sa.Engine, database_url: Any) -> Iterator[sa.Engine]:
    small = sa.create_engine(database_url, pool_size=2, max_overflow=0, pool_timeout=1)
    yield small
    small.dispose()


def test_more_jobs_than_the_pool_gives_is_refused_before_any_schema(
    two_connection_engine: sa.Engine, engine: sa.Engine, fleet_at_a1: Chain
) -> None:
    from workspace_tool import ConfigurationError

    with pytest.raises(ConfigurationError) as info:
        fleet.upgrade(two_connection_engine, fleet_at_a1, jobs=4)
    assert str(info.value).startswith("4 jobs need 5 connections at once")
    assert "pool_size + max_overflow >= 5" in str(info.value)
    assert all(schema_version(engine, f"project_{p}") == "a1" for p in IDS)
    assert {tuple(registry_state(engine, p)) for p in IDS} == {("a1", "ready", None)}


def test_the_default_jobs_fit_the_engines_pool(
    two_connection_engine: sa.Engine, engine: sa.Engine, fleet_at_a1: Chain
) -> None:
    report = fleet.upgrade(two_connection_engine, fleet_at_a1)
    assert report.jobs == 1
    assert report.ok and report.counts()["ok"] == len(IDS)


# ------------------------------------------------------------- the executor
def test_the_removed_processes_executor_is_refused_in_one_line_and_nothing_runs(
    engine: sa.Engine, fleet_at_a1: Chain
) -> None:
    from workspace_tool import ConfigurationError

    with pytest.raises(ConfigurationError) as info:
        fleet.upgrade(engine, fleet_at_a1, jobs=2, executor="processes")
    assert "\n" not in str(info.value) and "executor='processes' was removed" in str(info.value)
    assert all(schema_version(engine, f"project_{p}") == "a1" for p in IDS)
    report = fleet.upgrade(engine, fleet_at_a1, jobs=2, executor="threads")  # what scripts pass still works
    assert report.ok and report.executor == "threads" and report.counts()["ok"] == len(IDS)


def test_the_workers_connections_are_opened_while_the_fleet_is_read(
    engine: sa.Engine, fleet_at_a1: Chain, database_url: sa.URL
) -> None:
    """A new connection costs a backend's start (ms): a run opens its workers' connections while it reads the
    fleet, not one by one as each worker starts; every worker then starts on an open one. When the run
    says it starts, the pool has made one connection per worker; the run opens none after that."""
    counted = sa.create_engine(database_url)  # a pool of 5 + 10 overflow: room for 3 jobs' connections
    made: list[str] = []
    sa.event.listen(counted, "connect", lambda *_: made.append("connect"))
    progress: list[int] = []

    def started(event: fleet.Progress) -> None:
        if event.result is None:
            progress.append(len(made))

    try:
        report = fleet.upgrade(counted, fleet_at_a1, jobs=3, progress=started)
    finally:
        counted.dispose()

    assert report.ok and report.counts()["ok"] == len(IDS)
    assert progress == [3], progress  # the reading connection and two opened ahead, by the start
    assert len(made) == 3, made  # and no worker had to open one of its own
