"""The per-project Alembic verbs: history, heads, show, current, stamp (--yes, recorded in the registry)."""

from __future__ import annotations

import json

import sqlalchemy as sa
from support.chains import HEAD, MAIN_REVISIONS
from support.cli import assert_one_line_error, run_cli
from support.db import database_state, registry_row, schema_version

from workspace_tool import WorkspaceManager


def test_history_heads_show(url_string: str) -> None:
    listed = run_cli("--database-url", url_string, "history", "--json")
    assert listed.exit_code == 0, listed.stderr
    assert [r["revision"] for r in json.loads(listed.stdout)] == list(reversed(MAIN_REVISIONS))
    assert [r["revision"] for r in json.loads(run_cli("--database-url", url_string, "heads", "--json").stdout)] == [
        HEAD
    ]
    shown = json.loads(run_cli("--database-url", url_string, "show", HEAD[:6], "--json").stdout)
    assert shown["revision"] == HEAD and shown["down_revision"] == MAIN_REVISIONS[-2]
    assert shown["sql"] == "" or "alembic_version" in shown["sql"]
    assert_one_line_error(run_cli("--database-url", url_string, "show", "nosuchrev"), "nosuchrev")


def test_current_and_stamp(engine: sa.Engine, manager: WorkspaceManager, url_string: str) -> None:
    manager.ensure("a")
    manager.ensure("b")
    now = json.loads(run_cli("--database-url", url_string, "current", "a", "--json").stdout)
    assert [(r["project_id"], r["revision"]) for r in now] == [("a", HEAD)]
    state = database_state(engine)
    needs_yes = run_cli("--database-url", url_string, "stamp", "a", MAIN_REVISIONS[-2])
    assert needs_yes.exit_code == 1 and "pass --yes to confirm" in needs_yes.stderr
    assert_one_line_error(run_cli("--database-url", url_string, "stamp", "nope", "head", "--yes"), "nope")
    assert_one_line_error(run_cli("--database-url", url_string, "stamp", "a", "nosuchrev", "--yes"), "nosuchrev")
    assert_one_line_error(run_cli("--database-url", url_string, "stamp", "a", "head", "--yes"), "already")
    assert_one_line_error(run_cli("--database-url", url_string, "current", "a", "nope"), "nope")
    assert database_state(engine) == state
    done = run_cli("--database-url", url_string, "stamp", "a", MAIN_REVISIONS[-2], "--yes", "--json")
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout) == {"project_id": "a", "from_revision": HEAD, "to_revision": MAIN_REVISIONS[-2]}
    assert schema_version(engine, "project_a") == MAIN_REVISIONS[-2]
    row = registry_row(engine, "a")
    assert row is not None and (row["revision"], row["last_action"]) == (MAIN_REVISIONS[-2], "stamp")
    both = json.loads(run_cli("--database-url", url_string, "current", "--json").stdout)
    assert {r["project_id"]: r["revision"] for r in both} == {"a": MAIN_REVISIONS[-2], "b": HEAD}
