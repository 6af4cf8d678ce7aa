"""`workspace-tool doctor`: a healthy database passes (exit 0) with every check listed; each problem one can
make (an orphan schema, a project with no schema, --jobs beyond max_connections, a transaction larger than
the lock table) is one line saying what to change, exit 1; --json; it writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import Result
from sqlalchemy.engine import URL
from support.chains import ALEMBIC_INI, ChainBuilder, with_options
from support.cli import run_cli
from support.data import make_schema_by_hand

from workspace_tool import WorkspaceManager, doctor, spares
from workspace_tool.chain import Chain
from workspace_tool.doctor import Health

CHECKS = ["server", "pgvector", "lock budget", "connections", "citus", "registry", "pooler", "warm pool"]


def run_doctor(url: str, *args: str) -> Result:
    return run_cli("--database-url", url, "-c", str(ALEMBIC_INI), "doctor", *args)


def rows(result: Result) -> list[tuple[str, str, str]]:
    """The table's rows: (check, status, finding)."""
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["CHECK", "STATUS", "FINDING"]
    status_at, finding_at = lines[0].index("STATUS"), lines[0].index("FINDING")
    return [(ln[:status_at].strip(), ln[status_at:finding_at].strip(), ln[finding_at:]) for ln in lines[1:]]


def problems(result: Result) -> list[str]:
    return [finding for _, status, finding in rows(result) if status == "problem"]


@pytest.fixture
def provisioned(manager: WorkspaceManager) -> WorkspaceManager:
    for project in ("doc-a", "doc-b"):
        manager.ensure(project)
    return manager


def test_a_healthy_database_passes_with_every_check_listed(provisioned: WorkspaceManager, url_string: str) -> None:
    result = run_doctor(url_string, "--jobs", "2")
    assert result.exit_code == 0, result.stdout
    found = rows(result)
    assert [check for check, _, _ in found] == CHECKS
    statuses = {check: status for check, status, _ in found}
    assert {statuses[c] for c in ("server", "pgvector", "lock budget", "citus", "registry", "warm pool")} == {"ok"}
    assert "2 project(s) registered, each with its schema" in dict((c, f) for c, _, f in found)["registry"]
    assert "0 problem(s)" in result.stderr


def test_an_orphan_schema_is_one_line_saying_what_to_do(provisioned: WorkspaceManager, url_string: str) -> None:
    make_schema_by_hand(provisioned.engine, "project_stray", "notes")
    result = run_doctor(url_string, "--jobs", "2")
    assert result.exit_code == 1
    [line] = problems(result)
    assert "1 schema(s) with no registry row (orphans, skipped by fleet runs): project_stray" in line
    assert "`workspace-tool upgrade stray`" in line and 'DROP SCHEMA "project_stray" CASCADE' in line
    assert "1 problem(s)" in result.stderr


def test_a_project_with_no_schema_is_a_problem(provisioned: WorkspaceManager, url_string: str) -> None:
    with provisioned.engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA project_doc_b CASCADE"))
    [line] = problems(run_doctor(url_string, "--jobs", "2"))
    assert "1 registered project(s) with no schema: doc-b" in line
    assert "`workspace-tool ensure doc-b`" in line and "`workspace-tool drop doc-b --yes`" in line


def test_jobs_beyond_max_connections(provisioned: WorkspaceManager, url_string: str) -> None:
    result = run_doctor(url_string, "--jobs", "400")
    assert result.exit_code == 1
    line = next(f for c, s, f in rows(result) if c == "connections")
    assert line.startswith("--jobs 400 needs 401 connections but the server has ")
    assert "raise max_connections" in line and "use --jobs " in line


def test_a_transaction_larger_than_the_lock_table(provisioned: WorkspaceManager, url_string: str) -> None:
    ok = run_doctor(url_string, "--jobs", "2")
    assert dict((c, s) for c, s, _ in rows(ok))["lock budget"] == "ok"
    result = run_doctor(url_string, "--jobs", "2", "--schemas-per-transaction", "1000")
    assert result.exit_code == 1
    [line] = problems(result)
    assert "x 1000 per transaction x 2 jobs" in line and "but the lock table holds" in line
    assert "set max_locks_per_transaction = " in line


def test_json(provisioned: WorkspaceManager, url_string: str) -> None:
    make_schema_by_hand(provisioned.engine, "project_stray", "notes")
    result = run_doctor(url_string, "--jobs", "2", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert set(report) == {"ok", "findings"} and report["ok"] is False
    assert [f["check"] for f in report["findings"]] == CHECKS
    assert all(set(f) == {"check", "status", "finding"} for f in report["findings"])
    assert {f["status"] for f in report["findings"]} <= {"ok", "warn", "problem"}
    assert [f["check"] for f in report["findings"] if f["status"] == "problem"] == ["registry"]


def test_it_writes_nothing(new_database: URL) -> None:
    """On a database where nothing was provisioned: no registry, no extension are made; it says so."""
    url = new_database.render_as_string(hide_password=False)
    result = run_doctor(url, "--jobs", "2")
    assert result.exit_code == 0, result.stdout
    found = {c: (s, f) for c, s, f in rows(result)}
    assert found["registry"][0] == "warn" and "`workspace-tool init` creates it" in found["registry"][1]
    assert found["pgvector"][0] == "warn" and "run `workspace-tool init` once" in found["pgvector"][1]
    engine = sa.create_engine(new_database)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT to_regnamespace('project_registry')")).scalar() is None
            assert conn.execute(sa.text("SELECT count(*) FROM pg_extension WHERE extname = 'vector'")).scalar() == 0
    finally:
        engine.dispose()


def test_the_lock_count_of_a_schema_is_what_dropping_it_takes(provisioned: WorkspaceManager) -> None:
    with provisioned.engine.connect() as conn:
        with conn.begin():
            estimate = doctor.locks_per_schema(conn, "project_doc_a")
        with conn.begin():
            conn.execute(sa.text("DROP SCHEMA project_doc_a CASCADE"))
            held = conn.execute(sa.text("SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid()")).scalar_one()
            conn.rollback()
    # the DROP's locks: every object counted, plus its transaction's own ids and a catalog or two
    assert estimate > 100 and held - 5 <= estimate <= held


def test_a_check_that_fails_is_a_warning_and_the_others_still_run(
    provisioned: WorkspaceManager,
) -> None:
    def broken(conn: sa.Connection, context: doctor.Context) -> list[doctor.Finding]:
        conn.execute(sa.text("SELECT 1 / 0"))
        return []

    report = doctor.diagnose(
        provisioned.engine, provisioned.chain, jobs=2, checks=[("broken", broken), ("server", doctor.server_version)]
    )
    assert [(f.check, f.status) for f in report.findings] == [("broken", Health.WARN), ("server", Health.OK)]
    assert report.findings[0].finding == "could not check: division by zero" and report.ok


def test_the_pooler_slot_reports_what_a_detector_finds(provisioned: WorkspaceManager) -> None:
    def pgbouncer(conn: sa.Connection, engine: sa.Engine) -> str:
        return "PgBouncer in transaction mode"

    checks = [("pooler", doctor.transaction_pooler)]
    [found] = doctor.diagnose(provisioned.engine, provisioned.chain, jobs=2, checks=checks).findings
    assert (found.status, found.finding) == (Health.OK, "no connection pooler detected")  # the server itself
    [found] = doctor.diagnose(
        provisioned.engine, provisioned.chain, jobs=2, checks=checks, detect_pooler=pgbouncer
    ).findings
    assert found.status == Health.WARN
    assert found.finding.startswith("PgBouncer in transaction mode, and no direct URL: fine for this chain, but")
    [found] = doctor.diagnose(
        provisioned.engine, provisioned.chain, jobs=2, checks=checks, detect_pooler=pgbouncer, direct_url=True
    ).findings
    assert (found.status, found.finding) == (
        Health.OK,
        "PgBouncer in transaction mode; what needs a session goes through the direct URL",
    )


def with_chain_options(ini: Path, **options: str) -> Chain:
    return Chain.load(with_options(ini, **options))


def test_spares_behind_this_chains_head_are_a_warning(engine: sa.Engine, chain_builder: ChainBuilder) -> None:
    chain_builder.add("a1", 'op.create_table("items", sa.Column("id", sa.Integer, primary_key=True))')
    assert spares.fill(engine, Chain.load(chain_builder.ini), 2, jobs=1).built == 2
    chain_builder.add("a2", 'op.add_column("items", sa.Column("name", sa.Text))')
    checks = [("warm pool", doctor.unused_spares)]
    # a1's release filled the pool a moment ago: within the grace its spares are kept for it (a rolling deploy)
    [found] = doctor.diagnose(engine, with_chain_options(chain_builder.ini), jobs=2, checks=checks).findings
    assert (found.status, found.finding) == (
        Health.OK,
        "0 spare(s) ready at head a2 (target 0); 2 kept for another release",
    )
    # with no grace, nobody runs a1 any more
    chain = with_chain_options(chain_builder.ini, workspace_pool_grace="0")
    [found] = doctor.diagnose(engine, chain, jobs=2, checks=checks).findings
    assert found.status == Health.WARN
    assert found.finding.startswith("2 spare schema(s) at a head nobody runs (workspace_spare_")
    assert found.finding.endswith("never handed out; `workspace-tool pool fill` (or `upgrade --all`) replaces them")
