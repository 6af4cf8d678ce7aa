"""clone SRC DST: a copy inside one database, server-side, at the source's revision, independent of it;
an unknown source or an existing target is refused in one line with nothing changed."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from support.chains import ALEMBIC_INI, HEAD, ITEMS
from support.cli import assert_one_line_error, run_cli
from support.data import add_rows, data_rows
from support.db import catalog, database_state

from workspace_tool import WorkspaceManager
from workspace_tool.chain import Chain
from workspace_tool.errors import WorkspaceNotFound
from workspace_tool.lifecycle import ProjectExists, clone_project


def test_clone_gives_equal_rows_at_the_source_revision_independent_of_it(engine: sa.Engine, filled_source: str) -> None:
    result = clone_project(engine, Chain.load(ALEMBIC_INI), filled_source, "dst")
    assert result.revision == HEAD and result.rows == 42
    assert data_rows(engine, "project_dst") == data_rows(engine, "project_src")
    assert len(data_rows(engine, "project_dst")["code_chunks"]) == 40
    source_catalog = catalog(engine, "project_src")
    assert catalog(engine, "project_dst") == source_catalog and source_catalog  # its indexes built again
    with engine.begin() as conn:
        row = conn.execute(
            sa.text("SELECT revision, last_action FROM project_registry.workspace_config WHERE project_id = 'dst'")
        ).one()
        assert tuple(row) == (HEAD, "clone")
        conn.execute(sa.text("DELETE FROM project_src.code_chunks"))
        conn.execute(sa.text("DROP SCHEMA project_src CASCADE"))
    assert len(data_rows(engine, "project_dst")["code_chunks"]) == 40


def test_clone_without_data_and_the_sequences(engine: sa.Engine, chain_builder: Any) -> None:
    ini = chain_builder.add("a1", ITEMS, 'op.drop_table("items")').ini
    WorkspaceManager(engine, ini).ensure("seq")
    add_rows(engine, "seq", "a", "b")
    chain = Chain.load(ini)
    assert clone_project(engine, chain, "seq", "empty", data=False).rows == 0
    clone_project(engine, chain, "seq", "full")
    with engine.begin() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM project_empty.items")).scalar() == 0
        new_id = conn.execute(sa.text("INSERT INTO project_full.items (name) VALUES ('c') RETURNING id")).scalar()
        assert new_id == 3


def test_clone_refuses_an_unknown_source_or_an_existing_target(
    engine: sa.Engine, filled_source: str, manager: WorkspaceManager, url_string: str
) -> None:
    manager.ensure("taken")
    chain = Chain.load(ALEMBIC_INI)
    state = database_state(engine)
    with pytest.raises(WorkspaceNotFound):
        clone_project(engine, chain, "nope", "new")
    with pytest.raises(ProjectExists):
        clone_project(engine, chain, filled_source, "taken")
    with pytest.raises(ProjectExists):
        clone_project(engine, chain, filled_source, filled_source)
    assert_one_line_error(run_cli("--database-url", url_string, "clone", filled_source, "taken"), "already exists")
    assert_one_line_error(run_cli("--database-url", url_string, "clone", "nope", "new"), "nope")
    assert database_state(engine) == state
    done = run_cli("--database-url", url_string, "clone", filled_source, "viacli", "--json")
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["rows"] == 42
