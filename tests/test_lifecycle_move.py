"""move ID --to-url URL: quarantine, export, import, verify, purge; a crash at a step is resumed by running
the move again, and the tenant is never live in both databases nor in neither without the registry saying so."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from support.chains import ALEMBIC_INI, HEAD
from support.cli import assert_one_line_error, run_cli
from support.data import add_chunks, data_rows
from support.db import database_state, registry_row

from workspace_tool import WorkspaceManager
from workspace_tool.chain import Chain
from workspace_tool.errors import WorkspaceError
from workspace_tool.lifecycle import drop, move
from workspace_tool.lifecycle.move import MoveInterrupted, move_project


def chunks(engine: sa.Engine) -> list[str]:
    return data_rows(engine, "project_mv")["code_chunks"]


@pytest.fixture
def source(manager: WorkspaceManager) -> str:
    manager.ensure("mv")
    manager.ensure("stays")
    with manager.session("mv") as s:
        add_chunks(s)
        s.commit()
    return "mv"


def test_move_to_another_database(engine: sa.Engine, source: str, other_engine: sa.Engine, url_string: str) -> None:
    before = chunks(engine)
    to_url = other_engine.url.render_as_string(hide_password=False)
    done = run_cli("--database-url", url_string, "move", source, "--to-url", to_url, "--yes", "--json")
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["steps"] == ["quarantine", "export", "import", "verify", "purge"]
    assert chunks(other_engine) == before and len(before) == 40
    assert registry_row(engine, source) is None
    with engine.connect() as conn:
        names = conn.execute(sa.text("SELECT nspname FROM pg_namespace WHERE nspname LIKE '%mv%'")).scalars().all()
        assert names == []
    row = registry_row(other_engine, source)
    assert row is not None and row["revision"] == HEAD
    again = run_cli("--database-url", url_string, "move", source, "--to-url", to_url, "--yes")
    assert again.exit_code == 0 and "moved to" in again.stderr and "already" in again.stderr


@pytest.mark.parametrize("crash_in", ["import_project", "purge"])
def test_a_crashed_move_is_resumed(
    engine: sa.Engine, source: str, other_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch, crash_in: str
) -> None:
    chain = Chain.load(ALEMBIC_INI)
    before = chunks(engine)

    def crash(*args: object, **kwargs: object) -> None:
        raise WorkspaceError("the machine went away")

    with monkeypatch.context() as patched:
        patched.setattr(move if crash_in == "import_project" else drop, crash_in, crash)
        with pytest.raises(MoveInterrupted, match="run the same move again"):
            move_project(engine, other_engine, chain, source)
    # never live in both: the source is quarantined (by the move), the registry says so
    row = registry_row(engine, source)
    assert row is not None and row["status"] == "dropped" and row["metadata"]["quarantine"]["by"] == "move"
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass('project_mv.code_chunks')")).scalar() is None
    resumed = move_project(engine, other_engine, chain, source)
    assert resumed.resumed_from == ("quarantine" if crash_in == "import_project" else "import")
    assert resumed.steps[-2:] == ["verify", "purge"]
    assert chunks(other_engine) == before
    assert registry_row(engine, source) is None


def test_move_refuses_bad_input_and_changes_nothing(
    engine: sa.Engine, source: str, other_engine: sa.Engine, url_string: str
) -> None:
    to_url = other_engine.url.render_as_string(hide_password=False)
    WorkspaceManager(other_engine, ALEMBIC_INI).ensure(source)  # the target has it already
    here, there = database_state(engine), database_state(other_engine)
    assert_one_line_error(run_cli("--database-url", url_string, "move", source, "--to-url", to_url, "--yes"), "exists")
    assert_one_line_error(run_cli("--database-url", url_string, "move", "nope", "--to-url", to_url, "--yes"), "nope")
    needs_yes = run_cli("--database-url", url_string, "move", source, "--to-url", to_url)
    assert needs_yes.exit_code == 1 and "pass --yes to confirm" in needs_yes.stderr
    assert (database_state(engine), database_state(other_engine)) == (here, there)
