"""Targeting the project's schema (issue #2, section 3): tables named like the project's in public are
never touched, by a fresh provisioning or by a later upgrade, on the compiled (fast) path, the online
path and through plain Alembic; the search_path holds only the project and extension schemas."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL
from support.chains import ALEMBIC_INI, HEAD, MAIN_REVISIONS, TABLES, ChainBuilder, truncated_chain
from support.cli import run_alembic
from support.data import make_public_twins, public_state
from support.db import catalog, schema_tables, schema_version

from workspace_tool import ConfigurationError, WorkspaceManager
from workspace_tool.chain import Chain
from workspace_tool.managers import cache
from workspace_tool.schema.catalog import diff


def online_copy(root: Path, source_ini: Path) -> Path:
    """A copy of a chain where every revision opts out of the compiled path."""
    builder = ChainBuilder(root)
    for path in (source_ini.parent / "migrations" / "versions").glob("*.py"):
        builder.versions.joinpath(path.name).write_text(path.read_text() + "\nworkspace_online = True\n")
    return builder.ini


@pytest.fixture
def reference(manager: WorkspaceManager) -> dict[str, Any]:
    manager.ensure("twin-reference")
    ref = catalog(manager.engine, "project_twin_reference")
    manager.drop("twin-reference")
    return ref


@pytest.mark.parametrize("online", [False, True], ids=["fast", "online"])
def test_public_twins_survive_provisioning_and_a_later_upgrade(
    manager: WorkspaceManager, tmp_path: Path, reference: dict[str, Any], online: bool
) -> None:
    engine = manager.engine
    make_public_twins(engine)
    before = public_state(engine)
    old_ini = truncated_chain(tmp_path / "old", MAIN_REVISIONS[0])
    new_ini = ALEMBIC_INI
    if online:
        old_ini = online_copy(tmp_path / "old-online", old_ini)
        new_ini = online_copy(tmp_path / "new-online", ALEMBIC_INI)

    old = WorkspaceManager(engine, old_ini)
    first = old.ensure_detailed("twin")
    assert first.path == ("online" if online else "fast")
    assert public_state(engine) == before
    assert schema_version(engine, "project_twin") == MAIN_REVISIONS[0]

    new = WorkspaceManager(engine, new_ini)
    upgraded = new.ensure_detailed("twin")
    assert (upgraded.action, upgraded.from_revision, upgraded.to_revision) == ("upgraded", MAIN_REVISIONS[0], HEAD)
    assert upgraded.path == ("online" if online else "fast")
    assert public_state(engine) == before
    assert schema_tables(engine, "project_twin") == TABLES
    assert diff(reference, catalog(engine, "project_twin")) == []

    fresh = new.ensure_detailed("twin-fresh")
    assert fresh.action == "created"
    assert public_state(engine) == before
    assert diff(reference, catalog(engine, "project_twin_fresh")) == []


def test_public_twins_survive_plain_alembic(
    manager: WorkspaceManager, database_url: URL, reference: dict[str, Any]
) -> None:
    engine = manager.engine
    make_public_twins(engine)
    before = public_state(engine)
    for target in (MAIN_REVISIONS[0], "head"):
        done = run_alembic(database_url, "-x", "schema=project_twin_cli", "upgrade", target)
        assert done.returncode == 0, done.stderr
        assert public_state(engine) == before
    assert diff(reference, catalog(engine, "project_twin_cli")) == []
    done = run_alembic(database_url, "-x", "schema=project_twin_cli", "downgrade", "base")
    assert done.returncode == 0, done.stderr
    assert public_state(engine) == before
    assert schema_tables(engine, "project_twin_cli") == {"alembic_version"}


@pytest.mark.parametrize("online", [False, True], ids=["fast", "online"])
def test_migrations_run_under_a_search_path_without_public(
    engine: sa.Engine, chain_builder: ChainBuilder, online: bool
) -> None:
    chain_builder.add(
        "r1",
        "op.execute(\"CREATE TABLE seen AS SELECT current_setting('search_path') AS search_path\")",
        extra="workspace_online = True" if online else "",
    )
    mgr = WorkspaceManager(engine, chain_builder.ini)
    schema = mgr.ensure("path-check")
    with engine.connect() as conn:
        seen = conn.execute(sa.text(f"SELECT search_path FROM {schema}.seen")).scalar()
        after = conn.execute(sa.text("SHOW search_path")).scalar()
    assert seen == "project_path_check, workspace_extensions"
    assert after == '"$user", public'  # SET LOCAL: the pooled connection keeps its own path


def test_compiled_sql_names_no_schema() -> None:
    chain = Chain.load(ALEMBIC_INI)
    plan = chain.plan(None, chain.head)
    assert plan.path == "fast"
    assert plan.sql is not None
    assert "CREATE TABLE repositories" in plan.sql
    assert "ALTER TABLE change_events RENAME file_path TO path" in plan.sql
    assert re.findall(r'"?\b(?:public|project_\w+|workspace_extensions)"?\.', plan.sql) == []
    assert "search_path" not in plan.sql
    assert "CREATE SCHEMA" not in plan.sql


def test_a_revision_using_get_bind_runs_online(engine: sa.Engine, chain_builder: ChainBuilder) -> None:
    chain_builder.add("r1", 'op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))')
    chain_builder.add("r2", 'op.get_bind().exec_driver_sql("INSERT INTO t VALUES (1)")')
    result = WorkspaceManager(engine, chain_builder.ini).ensure_detailed("bind")
    assert result.path == "mixed"
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT id FROM project_bind.t")).scalar() == 1


@pytest.mark.parametrize(
    "made",
    [
        ["CREATE TABLE workspace_extensions.repositories (x int)"],
        ["CREATE VIEW workspace_extensions.repositories AS SELECT 1 AS x"],
        ["CREATE TABLE public.repositories (x int)", "ALTER TABLE public.repositories SET SCHEMA workspace_extensions"],
    ],
    ids=["table", "view", "table-moved-in"],
)
def test_extension_schema_holding_tables_is_refused(manager: WorkspaceManager, made: list[str]) -> None:
    manager.bootstrap()
    with manager.engine.begin() as conn:
        for statement in made:
            conn.execute(sa.text(statement))
    try:
        cache.clear()  # a new process
        with pytest.raises(ConfigurationError, match="ALTER EXTENSION vector SET SCHEMA"):
            WorkspaceManager(manager.engine, ALEMBIC_INI).ensure("shadowed")
        with manager.engine.connect() as conn:
            assert not conn.execute(
                sa.text("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'project_shadowed')")
            ).scalar()
    finally:
        with manager.engine.begin() as conn:
            kind = "VIEW" if "VIEW" in made[0] else "TABLE"
            conn.execute(sa.text(f"DROP {kind} workspace_extensions.repositories"))
        cache.clear()


def test_truncated_chain_helper_is_a_real_prefix(tmp_path: Path) -> None:
    ini = truncated_chain(tmp_path / "c", MAIN_REVISIONS[1])
    assert Chain.load(ini).revisions == MAIN_REVISIONS[:2]
