"""Plain Alembic on the shared chain (issue #2, section 3): a DBA's ``alembic -x schema=... upgrade head``,
``downgrade base``, ``current`` and ``--sql``, with the URL from WORKSPACE_TOOL_DATABASE_URL."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import ALEMBIC_INI, schema_tables, schema_version
from sqlalchemy.engine import URL
from test_manager import ALEMBIC, HEAD, catalog, registry_row, run_alembic

from workspace_tool import WorkspaceManager
from workspace_tool.catalog import diff


@pytest.fixture
def reference(manager: WorkspaceManager) -> dict[str, Any]:
    manager.ensure("cli-reference")
    return catalog(manager.engine, "project_cli_reference")


def test_upgrade_head_then_downgrade_base(
    manager: WorkspaceManager, database_url: URL, reference: dict[str, Any]
) -> None:
    engine = manager.engine
    up = run_alembic(database_url, "-x", "schema=project_foo", "upgrade", "head")
    assert up.returncode == 0, up.stderr
    assert schema_version(engine, "project_foo") == HEAD
    assert diff(reference, catalog(engine, "project_foo")) == []
    assert registry_row(engine, "foo") is None  # plain Alembic knows nothing of the registry

    current = run_alembic(database_url, "-x", "schema=project_foo", "current")
    assert current.returncode == 0, current.stderr
    assert current.stdout.strip() == f"{HEAD} (head)"

    down = run_alembic(database_url, "-x", "schema=project_foo", "downgrade", "base")
    assert down.returncode == 0, down.stderr
    assert schema_tables(engine, "project_foo") == {"alembic_version"}
    assert schema_version(engine, "project_foo") is None
    assert diff(reference, catalog(engine, "project_cli_reference")) == []  # the other schema is untouched

    # And the tool takes it from there.
    result = manager.ensure_detailed("foo")
    assert (result.from_revision, result.to_revision) == (None, HEAD)
    assert diff(reference, catalog(engine, "project_foo")) == []
    assert registry_row(engine, "foo")["revision"] == HEAD  # type: ignore[index]


def test_sql_mode_starts_with_the_search_path_and_applies_cleanly(
    manager: WorkspaceManager, database_url: URL, reference: dict[str, Any]
) -> None:
    offline = run_alembic(database_url, "-x", "schema=project_offline", "upgrade", "head", "--sql")
    assert offline.returncode == 0, offline.stderr
    statements = [s.strip() for s in offline.stdout.split(";\n") if s.strip()]
    assert statements[:3] == [
        "BEGIN",
        'CREATE SCHEMA IF NOT EXISTS "project_offline"',
        'SET LOCAL search_path TO "project_offline", "workspace_extensions"',
    ]
    assert statements[-1] == "COMMIT"
    assert "public." not in offline.stdout
    # A DBA can review it, then run it.
    with manager.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(offline.stdout)
    assert schema_version(manager.engine, "project_offline") == HEAD
    assert diff(reference, catalog(manager.engine, "project_offline")) == []


def test_sql_mode_for_an_upgrade_range(database_url: URL) -> None:
    offline = run_alembic(database_url, "-x", "schema=project_range", "upgrade", "0002_code_chunks:head", "--sql")
    assert offline.returncode == 0, offline.stderr
    lines = [line for line in offline.stdout.splitlines() if line.strip()]
    assert lines[2] == 'SET LOCAL search_path TO "project_range", "workspace_extensions";'
    assert lines[3] == "-- Running upgrade 0002_code_chunks -> 0003_indexing_jobs"
    assert "CREATE TABLE alembic_version" not in offline.stdout


def test_a_schema_is_required_and_must_be_a_project_schema(engine: sa.Engine, database_url: URL) -> None:
    missing = run_alembic(database_url, "upgrade", "head")
    assert missing.returncode != 0
    assert "name the project schema: alembic -x schema=project_foo upgrade head" in missing.stderr

    public = run_alembic(database_url, "-x", "schema=public", "upgrade", "head")
    assert public.returncode != 0
    assert "invalid project schema name 'public'" in public.stderr
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass('public.repositories')")).scalar() is None


def test_no_url_is_a_clear_error() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("WORKSPACE_TOOL_DATABASE_URL", "DATABASE_URL")}
    done = subprocess.run(
        [ALEMBIC, "-c", str(ALEMBIC_INI), "-x", "schema=project_x", "current"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "no database URL: set WORKSPACE_TOOL_DATABASE_URL" in done.stderr
