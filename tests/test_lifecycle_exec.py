"""exec -c/-f: SQL in every selected project's schema, each in its own transaction with its search_path,
through the fleet runner (selectors, --jobs, --json, failure limits)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL
from support.chains import ALEMBIC_INI
from support.cli import assert_one_line_error, run_cli
from support.db import database_state
from wire import WireRecorder

from workspace_tool import fleet, registry, transactions
from workspace_tool.chain import Chain
from workspace_tool.errors import WorkspaceNotFound
from workspace_tool.flavor import Flavor
from workspace_tool.fleet import RunSpec, Selection, provision
from workspace_tool.lifecycle.exec import exec_operation
from workspace_tool.schema.operation import Work
from workspace_tool.sql import split_statements


def repositories(engine: sa.Engine, project_id: str) -> list[str]:
    schema = "project_" + project_id.replace("-", "_")
    with engine.connect() as conn:
        return list(conn.execute(sa.text(f"SELECT name FROM {schema}.repositories ORDER BY name")).scalars())


def test_exec_match_reaches_every_selected_project_and_writes_json(engine: sa.Engine, url_string: str) -> None:
    ids = ["t-1", "t-2", "t-3", "u-1"]
    provision(engine, Chain.load(ALEMBIC_INI), ids, jobs=2)
    sql = "INSERT INTO repositories (path, name) VALUES ('/x', current_schema()); SELECT 1 WHERE 'a' LIKE 'a%'"
    done = run_cli("--database-url", url_string, "exec", "--match", "t-*", "-c", sql, "--json", "--jobs", "2")
    assert done.exit_code == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["operation"] == "exec"
    assert sorted((r["project_id"], r["status"], r["note"]) for r in report["results"]) == [
        (p, "ok", "1 row") for p in ("t-1", "t-2", "t-3")
    ]
    for project_id in ("t-1", "t-2", "t-3"):  # the project's own schema first on the search_path
        assert repositories(engine, project_id) == ["project_" + project_id.replace("-", "_")]
    assert repositories(engine, "u-1") == []


def test_exec_from_a_file_a_failing_project_rolls_back_alone(
    engine: sa.Engine, url_string: str, tmp_path: Path
) -> None:
    provision(engine, Chain.load(ALEMBIC_INI), ["a", "b", "c"], jobs=2)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE project_b.repositories ADD CONSTRAINT no_x CHECK (name <> 'x')"))
    script = tmp_path / "fix.sql"
    script.write_text("INSERT INTO repositories (path, name) VALUES ('/x', 'x');\n")
    done = run_cli("--database-url", url_string, "exec", "--all", "-f", str(script), "--continue-on-error", "--json")
    assert done.exit_code == 1
    report = json.loads(done.stdout)
    assert {r["project_id"]: r["status"] for r in report["results"]} == {"a": "ok", "b": "failed", "c": "ok"}
    assert "no_x" in next(r["error"] for r in report["results"] if r["project_id"] == "b")
    assert repositories(engine, "a") == ["x"] and repositories(engine, "b") == []
    # a failed exec does not mark the project failed: its schema's migration state is untouched
    with engine.connect() as conn:
        statuses = conn.execute(sa.text("SELECT DISTINCT status FROM project_registry.workspace_config")).scalars()
        assert list(statuses) == ["ready"]


def test_exec_bad_input_changes_nothing(engine: sa.Engine, url_string: str, tmp_path: Path) -> None:
    provision(engine, Chain.load(ALEMBIC_INI), ["a"], jobs=1)
    state = database_state(engine)
    assert_one_line_error(
        run_cli("--database-url", url_string, "exec", "a", "nope", "-c", "DROP TABLE repositories"), "nope"
    )
    assert run_cli("--database-url", url_string, "exec", "a").exit_code == 2  # no SQL
    assert_one_line_error(run_cli("--database-url", url_string, "exec", "a", "-c", "  "), "no SQL")
    latin1 = tmp_path / "latin1.sql"
    latin1.write_bytes("UPDATE repositories SET name = 'café'".encode("latin-1"))  # not UTF-8: no traceback
    not_text = run_cli("--database-url", url_string, "exec", "a", "-f", str(latin1))
    assert not_text.exit_code == 2 and "Traceback" not in not_text.stderr
    assert not_text.stderr.splitlines()[-1].startswith(f"Error: -f {latin1}: cannot read it (UnicodeDecodeError")
    assert database_state(engine) == state


def test_exec_reads_no_version_unless_its_selection_needs_them(
    engine: sa.Engine, url_string: str, caplog: pytest.LogCaptureFixture
) -> None:
    """exec runs whatever a schema's revision: the fleet read skips every alembic_version (the read's log
    line says 0 read); selected by a state only the version tells (--state behind), it reads them and
    reaches the schema behind alone."""
    chain = Chain.load(ALEMBIC_INI)
    provision(engine, chain, ["v-1", "v-2"], jobs=2)
    old = chain.revisions[-2]
    down = run_cli("--database-url", url_string, "downgrade", "v-2", "--to", old, "--yes")
    assert down.exit_code == 0, down.stderr
    sql = "INSERT INTO repositories (path, name) VALUES ('/v', 'v')"
    with caplog.at_level(logging.INFO, logger="workspace_tool.registry.inventory"):
        everyone = run_cli("--database-url", url_string, "exec", "--all", "-c", sql)
    assert everyone.exit_code == 0, everyone.stdout + everyone.stderr
    reads = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fleet read:")]
    assert reads and all("0 version(s) read" in line for line in reads), reads
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="workspace_tool.registry.inventory"):
        behind = run_cli(
            "--database-url", url_string, "exec", "--state", "behind", "-c", sql.replace("/v", "/w"), "--json"
        )
    assert behind.exit_code == 0, behind.stdout
    assert [r["project_id"] for r in json.loads(behind.stdout)["results"]] == ["v-2"]
    assert (repositories(engine, "v-1"), repositories(engine, "v-2")) == (["v"], ["v", "v"])
    assert any("2 version(s) read" in r.getMessage() for r in caplog.records)


def test_exec_on_a_schema_dropped_since_the_read_is_gone_and_runs_nothing(engine: sa.Engine) -> None:
    """A schema the read saw, dropped before its turn: the task says gone (WorkspaceNotFound) and its SQL
    runs nowhere (not in the next schema of the search_path); SQL that names a missing schema itself fails
    as the database says, not as gone."""
    chain = Chain.load(ALEMBIC_INI)
    provision(engine, chain, ["here"], jobs=1)
    task = exec_operation("CREATE TABLE leak (id int)").task
    assert task is not None
    with transactions.connect(engine) as conn:
        flavor = registry.bootstrap(conn)
        with pytest.raises(WorkspaceNotFound):
            task.run(conn, Work("gone", "project_gone", None), flavor, 1000)
        with pytest.raises(sa.exc.DBAPIError, match="nowhere"):
            exec_operation("SELECT * FROM nowhere.t").task.run(  # type: ignore[union-attr]
                conn, Work("here", "project_here", None), flavor, 1000
            )
    with engine.connect() as conn:
        assert conn.execute(
            sa.text("SELECT to_regclass('leak') IS NULL AND NOT EXISTS (SELECT 1 FROM pg_class WHERE relname = 'leak')")
        ).scalar()


# A script as psql takes it: the semicolons in strings, quoted names, comments, a dollar-quoted body and a
# BEGIN ATOMIC body end no statement.
SCRIPT = r"""
-- notes; made by a script
CREATE TABLE "odd;name" (id int, note text);
INSERT INTO "odd;name" VALUES (1, 'a;b'), (2, E'c\';d'), (3, 'it''s; fine'); /* a; /* nested; */ comment; */
CREATE FUNCTION bump() RETURNS int LANGUAGE plpgsql AS $body$
BEGIN
    UPDATE "odd;name" SET id = id * 10;
    RETURN 1;
END $body$;
CREATE FUNCTION total() RETURNS text LANGUAGE sql BEGIN ATOMIC
    SELECT CASE WHEN true THEN 'unused' END;
    SELECT string_agg(id || ':' || note, ' ' ORDER BY id) FROM "odd;name";
END;
SELECT bump();
INSERT INTO repositories (path, name) SELECT '/total', total();
-- the end; nothing more
"""


@dataclass(frozen=True)
class OneAtATime(Flavor):
    """A database that takes one statement at a time (as Citus does)."""

    batches: ClassVar[bool] = False


def test_a_script_sent_statement_by_statement_does_what_the_whole_batch_does(engine: sa.Engine) -> None:
    """Where the flavor takes no batch (Citus), exec sends the script split as psql splits it: the same
    rows as the script sent whole."""
    chain = Chain.load(ALEMBIC_INI)
    provision(engine, chain, ["whole", "split"], jobs=1)
    task = exec_operation(SCRIPT).task
    assert task is not None
    with WireRecorder(engine.url) as wire:
        recorded = sa.create_engine(wire.url, poolclass=sa.pool.NullPool)
        try:
            with transactions.connect(recorded) as conn:
                flavor = registry.bootstrap(conn)
                assert task.run(conn, Work("whole", "project_whole", None), flavor, 1000) == "1 row"
                wire.clear()
                split = OneAtATime(flavor.extension_schema)
                assert task.run(conn, Work("split", "project_split", None), split, 1000) == "1 row"
        finally:
            recorded.dispose()
        sent = wire.queries
    script = [q for q in sent if "odd;name" in q or "bump()" in q or "total()" in q]
    assert script == split_statements(SCRIPT) and len(script) == 6, sent  # each on its own
    expected = ["10:a;b 20:c';d 30:it's; fine"]
    assert repositories(engine, "whole") == repositories(engine, "split") == expected


def _exec(engine: sa.Engine, sql: str, ids: list[str]) -> dict[str, tuple[str, str | None]]:
    """exec ``sql`` in ``ids`` one after another on one connection: project id -> (status, error)."""
    spec = RunSpec(jobs=1, selection=Selection(ids=ids))
    report = fleet.run(engine, Chain.load(ALEMBIC_INI), exec_operation(sql), spec)
    return {r.project_id: (str(r.status), r.error) for r in report.results}


def test_exec_sql_that_opens_a_transaction_block_of_its_own_is_committed_whole(engine: sa.Engine) -> None:
    """A BEGIN in the SQL joins the project's transaction (as it did when the library sent BEGIN first): its
    rows are committed with it, and the next project on the same connection starts a transaction of its own."""
    ids = ["blk-1", "blk-2", "blk-3"]
    provision(engine, Chain.load(ALEMBIC_INI), ids, jobs=1)
    outcome = _exec(engine, "BEGIN; INSERT INTO repositories (path, name) VALUES ('/b', current_schema())", ids)
    assert outcome == {p: ("ok", None) for p in ids}
    for project_id in ids:
        assert repositories(engine, project_id) == ["project_" + project_id.replace("-", "_")]


def test_exec_sql_whose_own_transaction_block_fails_rolls_back_that_project_alone(engine: sa.Engine) -> None:
    """The block the SQL opened fails: that project's transaction is rolled back, and the projects after it on
    the same connection run (no 'current transaction is aborted')."""
    ids = ["fb-1", "fb-2", "fb-3"]
    provision(engine, Chain.load(ALEMBIC_INI), ids, jobs=1)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE project_fb_2.repositories ADD CONSTRAINT no_x CHECK (name <> 'x')"))
    outcome = _exec(engine, "BEGIN; INSERT INTO repositories (path, name) VALUES ('/x', 'x')", ids)
    assert {p: s for p, (s, _) in outcome.items()} == {"fb-1": "ok", "fb-2": "failed", "fb-3": "ok"}
    assert "no_x" in (outcome["fb-2"][1] or "")
    assert [repositories(engine, p) for p in ids] == [["x"], [], ["x"]]


def test_exec_runs_read_committed_whatever_the_sessions_default_isolation(engine: sa.Engine, database_url: URL) -> None:
    """A role or server whose default isolation is SERIALIZABLE: each project's transaction is READ
    COMMITTED (the state read after its lock sees what the lock's previous holder committed)."""
    serializable = sa.create_engine(
        database_url, connect_args={"options": "-c default_transaction_isolation=serializable"}
    )
    try:
        provision(serializable, Chain.load(ALEMBIC_INI), ["iso-1", "iso-2"], jobs=1)
        sql = "INSERT INTO repositories (path, name) VALUES ('/i', current_setting('transaction_isolation'))"
        assert _exec(serializable, sql, ["iso-1", "iso-2"]) == {"iso-1": ("ok", None), "iso-2": ("ok", None)}
    finally:
        serializable.dispose()
    assert [repositories(engine, p) for p in ("iso-1", "iso-2")] == [["read committed"]] * 2
