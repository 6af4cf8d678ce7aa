"""Bulk drop with the fleet's selectors, its quarantine (--retain, restore, purge, --purge-expired), and 400
projects dropped on a default server (max_locks_per_transaction = 64) without running out of locks."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from support.chains import ALEMBIC_INI
from support.cli import assert_one_line_error, run_cli
from support.db import database_state, registry_row, schema_exists

from workspace_tool import WorkspaceManager, fleet
from workspace_tool.chain import Chain
from workspace_tool.fleet import RunSpec, Selection, provision, upgrade
from workspace_tool.lifecycle.drop import drop_operation, purge_expired, quarantined, restore
from workspace_tool.lifecycle.errors import NotQuarantined


def projects(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(sa.text("SELECT project_id FROM project_registry.workspace_config ORDER BY 1")).scalars()
        )


def schemas(engine: sa.Engine, like: str) -> list[str]:
    with engine.connect() as conn:
        found = conn.execute(sa.text("SELECT nspname FROM pg_namespace WHERE nspname LIKE :l ORDER BY 1"), {"l": like})
        return list(found.scalars())


def project_schemas(engine: sa.Engine) -> list[str]:
    return [s for s in schemas(engine, "project%") if s != "project_registry"]


def test_drop_match_yes_removes_the_selected_projects_and_leaves_the_rest(engine: sa.Engine, url_string: str) -> None:
    provision(engine, Chain.load(ALEMBIC_INI), ["gone-1", "gone-2", "gone-3", "kept-1", "kept-2"], jobs=2)
    done = run_cli("--database-url", url_string, "drop", "--match", "gone-*", "--yes", "--json")
    assert done.exit_code == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["operation"] == "drop"
    assert sorted(r["project_id"] for r in report["results"] if r["status"] == "ok") == ["gone-1", "gone-2", "gone-3"]
    assert projects(engine) == ["kept-1", "kept-2"]
    assert project_schemas(engine) == ["project_kept_1", "project_kept_2"]


def test_bulk_drop_refuses_bad_input_and_changes_nothing(engine: sa.Engine, url_string: str) -> None:
    provision(engine, Chain.load(ALEMBIC_INI), ["a1", "a2"], jobs=2)
    state = database_state(engine)
    assert_one_line_error(run_cli("--database-url", url_string, "drop", "a1", "nope", "--yes"), "nope")
    needs_yes = run_cli("--database-url", url_string, "drop", "--match", "a*")
    assert needs_yes.exit_code == 1 and "pass --yes to confirm" in needs_yes.stderr
    assert_one_line_error(run_cli("--database-url", url_string, "restore", "a1"), "no quarantined copy")
    assert_one_line_error(run_cli("--database-url", url_string, "purge", "a1", "--yes"), "no quarantined copy")
    nothing = run_cli("--database-url", url_string, "drop", "--match", "zzz*", "--yes")
    assert nothing.exit_code == 0 and "nothing to do" in nothing.stderr
    for args, message in [
        (["a1", "--sql", "--yes"], "--sql: drop runs no migration"),  # one id: refused too, not dropped
        (["--all", "--match", "a*"], "--all takes every project"),  # a usage error, before asking
        ([], "name the projects, select them"),
    ]:
        refused = run_cli("--database-url", url_string, "drop", *args)
        assert refused.exit_code == 2 and message in refused.stderr, (args, refused.stderr)
    assert database_state(engine) == state


def test_retain_quarantines_restore_brings_back_purge_removes(engine: sa.Engine, url_string: str) -> None:
    chain = Chain.load(ALEMBIC_INI)
    manager = WorkspaceManager(engine, ALEMBIC_INI)
    for project_id in ("q1", "q2", "q3", "other"):
        manager.ensure(project_id)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO project_q1.repositories (path, name) VALUES ('/kept', 'kept')"))
    done = run_cli("--database-url", url_string, "drop", "--match", "q*", "--retain", "7d", "--yes", "--json")
    assert done.exit_code == 0, done.stderr
    assert not schema_exists(engine, "project_q1")
    assert schemas(engine, "dropped_%") == ["dropped_q1", "dropped_q2", "dropped_q3"]
    row = registry_row(engine, "q1")
    assert row is not None and row["status"] == "dropped" and row["last_action"] == "quarantine"
    assert [q.project_id for q in quarantined(engine)] == ["q1", "q2", "q3"]
    # fleet runs leave a quarantined project alone
    report = upgrade(engine, chain)
    assert {r.project_id for r in report.results} == {"other"}
    assert not schema_exists(engine, "project_q1")
    assert run_cli("--database-url", url_string, "check").exit_code == 0  # a quarantined project is not drift
    # restore: as it was dropped, data included
    restore(engine, "q1")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT name FROM project_q1.repositories")).scalars().all() == ["kept"]
    row = registry_row(engine, "q1")
    assert row is not None and row["status"] == "ready" and "quarantine" not in row["metadata"]
    with pytest.raises(NotQuarantined):
        restore(engine, "q1")
    # purge one by name; the next --purge-expired purges the one past its date only
    purged = run_cli("--database-url", url_string, "purge", "q2", "--yes")
    assert purged.exit_code == 0, purged.stderr
    assert registry_row(engine, "q2") is None and not schema_exists(engine, "dropped_q2")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE project_registry.workspace_config SET metadata = jsonb_set(metadata, '{quarantine,until}', "
                "to_jsonb(now() - interval '1 minute')) WHERE project_id = 'q3'"
            )
        )
    manager.ensure("q4")
    fleet.run(engine, chain, drop_operation(3600), RunSpec(selection=Selection(ids=["q4"])))
    expired = run_cli("--database-url", url_string, "drop", "--purge-expired", "--yes")
    assert expired.exit_code == 0, expired.stderr
    assert registry_row(engine, "q3") is None and not schema_exists(engine, "dropped_q3")
    assert [q.project_id for q in quarantined(engine)] == ["q4"]
    assert purge_expired(engine) == []
    assert project_schemas(engine) == ["project_other", "project_q1"]


def expire(engine: sa.Engine, project_id: str) -> None:
    """Move a quarantined project's date into the past."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE project_registry.workspace_config SET metadata = jsonb_set(metadata, '{quarantine,until}', "
                "to_jsonb(now() - interval '1 minute')) WHERE project_id = :p"
            ),
            {"p": project_id},
        )


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--sql"], "--sql"),
        (["--retain", "1d"], "--retain"),
        (["--jobs", "2"], "--jobs"),
        (["--recycle-after", "3"], "--recycle-after"),
        (["--retries", "1"], "--retries"),
        (["--fail-fast"], "--fail-fast"),
        (["--continue-on-error"], "--fail-fast/--continue-on-error"),
        (["--canary", "1"], "--canary"),
        (["--max-failures", "1"], "--max-failures"),
        (["--order", "name"], "--order"),
        (["live"], "project ids"),
        (["--match", "l*"], "--match"),
        (["--state", "at-head"], "--state"),
        (["--all"], "--all"),
    ],
)
def test_purge_expired_refuses_what_it_would_not_use_and_changes_nothing(
    engine: sa.Engine, url_string: str, args: list[str], named: str
) -> None:
    """drop --purge-expired purges the quarantined projects past their date, and takes --lock-timeout, --json
    and --yes: anything else (--sql, --retain, the fleet's options, ids, a selection) is a usage error (exit
    2) before anything is purged or dropped, --yes or not."""
    manager = WorkspaceManager(engine, ALEMBIC_INI)
    manager.ensure("old")
    manager.ensure("live")
    fleet.run(engine, Chain.load(ALEMBIC_INI), drop_operation(3600), RunSpec(selection=Selection(ids=["old"])))
    expire(engine, "old")
    state = database_state(engine)
    refused = run_cli("--database-url", url_string, "drop", "--purge-expired", *args, "--yes")
    assert refused.exit_code == 2, (refused.stdout, refused.stderr)
    assert "Traceback" not in refused.stderr and refused.stdout == ""
    error = refused.stderr.splitlines()[-1]
    assert error.startswith("Error: --purge-expired") and named in error, refused.stderr
    assert database_state(engine) == state
    done = run_cli("--database-url", url_string, "drop", "--purge-expired", "--lock-timeout", "2s", "--json", "--yes")
    assert done.exit_code == 0, done.stderr
    assert [q["project_id"] for q in json.loads(done.stdout)] == ["old"]
    assert projects(engine) == ["live"] and schemas(engine, "dropped_%") == []


def test_purge_list_refuses_what_it_would_not_use(engine: sa.Engine, url_string: str) -> None:
    """`purge --list` lists every quarantined project: ids (which it would neither filter by nor purge) and
    --lock-timeout (it takes no lock) are a usage error, and nothing is purged."""
    manager = WorkspaceManager(engine, ALEMBIC_INI)
    manager.ensure("q1")
    fleet.run(engine, Chain.load(ALEMBIC_INI), drop_operation(3600), RunSpec(selection=Selection(ids=["q1"])))
    state = database_state(engine)
    for args, named in [(["q1"], "project ids"), (["--lock-timeout", "2s"], "--lock-timeout")]:
        refused = run_cli("--database-url", url_string, "purge", "--list", *args, "--yes")
        assert refused.exit_code == 2 and refused.stdout == "", (args, refused.stdout, refused.stderr)
        error = refused.stderr.splitlines()[-1]
        assert error.startswith("Error: --list") and named in error, refused.stderr
    assert database_state(engine) == state
    listed = run_cli("--database-url", url_string, "purge", "--list", "--json")
    assert listed.exit_code == 0 and [q["project_id"] for q in json.loads(listed.stdout)] == ["q1"]


def test_drop_one_id_with_json_writes_the_report(engine: sa.Engine, url_string: str) -> None:
    """`drop ID --json` writes the fleet's report on stdout, as `drop A B --json` does (the one-project path
    took --json and wrote a sentence instead)."""
    provision(engine, Chain.load(ALEMBIC_INI), ["one", "two"], jobs=2)
    done = run_cli("--database-url", url_string, "drop", "one", "--json", "--yes")
    assert done.exit_code == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["operation"] == "drop"
    assert [(r["project_id"], r["status"]) for r in report["results"]] == [("one", "ok")]
    assert projects(engine) == ["two"]


@pytest.mark.slow
def test_drop_400_projects_on_a_default_server(engine: sa.Engine, url_string: str) -> None:
    """max_locks_per_transaction = 64 (PostgreSQL's default, the test server's): one transaction over 400 of
    these schemas would need far more than the shared lock table holds; each project in its own does not."""
    with engine.connect() as conn:
        assert conn.execute(sa.text("SHOW max_locks_per_transaction")).scalar() == "64"
    gone = [f"gone-{i}" for i in range(400)]
    report = provision(engine, Chain.load(ALEMBIC_INI), [*gone, "stay-1", "stay-2"], jobs=4)
    assert not report.failed
    done = run_cli("--database-url", url_string, "drop", "--match", "gone-*", "--yes", "--json", "--jobs", "4")
    assert done.exit_code == 0, done.stderr
    assert len([r for r in json.loads(done.stdout)["results"] if r["status"] == "ok"]) == 400
    assert projects(engine) == ["stay-1", "stay-2"]
    assert project_schemas(engine) == ["project_stay_1", "project_stay_2"]


def test_a_project_made_again_after_its_quarantine(engine: sa.Engine, url_string: str) -> None:
    """ensure makes a quarantined project anew; its quarantined copy stays listed, and purge removes only it."""
    manager = WorkspaceManager(engine, ALEMBIC_INI)
    manager.ensure("again")
    fleet.run(engine, Chain.load(ALEMBIC_INI), drop_operation(3600), RunSpec(selection=Selection(ids=["again"])))
    manager.invalidate()
    manager.ensure("again")
    assert schema_exists(engine, "project_again") and schema_exists(engine, "dropped_again")
    assert [q.project_id for q in quarantined(engine)] == ["again"]
    refused = run_cli("--database-url", url_string, "drop", "again", "--retain", "1d", "--yes", "--json")
    assert refused.exit_code == 1 and "purge" in json.loads(refused.stdout)["results"][0]["error"]
    assert_one_line_error(run_cli("--database-url", url_string, "restore", "again"), "no quarantined copy")
    assert run_cli("--database-url", url_string, "purge", "again", "--yes").exit_code == 0
    assert schema_exists(engine, "project_again") and not schema_exists(engine, "dropped_again")
    row = registry_row(engine, "again")
    assert row is not None and row["status"] == "ready" and "quarantine" not in row["metadata"]


def test_drop_one_quarantined_project_drops_its_copy_too(engine: sa.Engine, url_string: str) -> None:
    WorkspaceManager(engine, ALEMBIC_INI).ensure("solo")
    assert run_cli("--database-url", url_string, "drop", "solo", "--retain", "1h", "--yes").exit_code == 0
    done = run_cli("--database-url", url_string, "drop", "solo", "--yes")
    assert (done.exit_code, done.stderr) == (0, "Dropped project_solo.\n")
    assert registry_row(engine, "solo") is None and not schema_exists(engine, "dropped_solo")
