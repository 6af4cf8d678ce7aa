"""Plain Alembic on the shared chain (issue #2, section 3): a DBA's ``alembic -x schema=... upgrade head``,
``downgrade base``, ``current`` and ``--sql``, with the URL from WORKSPACE_TOOL_DATABASE_URL; and Alembic's
cookbook pattern from code, a connection shared through ``config.attributes["connection"]`` (issue 13)."""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL
from support.chains import ALEMBIC_INI, HEAD, ChainBuilder
from support.cli import ALEMBIC, run_alembic
from support.db import catalog, registry_row, schema_tables, schema_version

from workspace_tool import ConfigurationError, WorkspaceManager
from workspace_tool.authoring import create_revision
from workspace_tool.schema.catalog import diff
from workspace_tool.sql import lock_schema


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


# ------------------------------------------- Alembic's cookbook: a connection in config.attributes
def shared_config(**attributes: Any) -> Config:
    """The cookbook's ``Config``, the schema named as on the command line (``-x schema=``) unless given."""
    x = [] if "schema" in attributes else ["schema=project_shared"]
    config = Config(str(ALEMBIC_INI), cmd_opts=argparse.Namespace(x=x))
    config.attributes.update(attributes)
    return config


def test_a_shared_connection_migrates_the_schema_named_by_x_schema(
    manager: WorkspaceManager, reference: dict[str, Any]
) -> None:
    engine = manager.engine
    with engine.begin() as conn:
        command.upgrade(shared_config(connection=conn), "head")
        assert conn.get_execution_options().get("schema_translate_map") is None  # the caller's, put back
    assert schema_version(engine, "project_shared") == HEAD
    assert diff(reference, catalog(engine, "project_shared")) == []
    assert registry_row(engine, "shared") is None

    with engine.begin() as conn:
        command.downgrade(shared_config(connection=conn), "0002_code_chunks")
    assert schema_version(engine, "project_shared") == "0002_code_chunks"
    assert "indexing_jobs" not in schema_tables(engine, "project_shared")
    assert diff(reference, catalog(engine, "project_cli_reference")) == []  # the other schema is untouched


def test_the_callers_transaction_is_the_unit(manager: WorkspaceManager) -> None:
    engine = manager.engine
    with engine.connect() as conn:
        conn.begin()
        command.upgrade(shared_config(connection=conn, schema="project_attr"), "head")
        assert schema_version_on(conn, "project_attr") == HEAD
        conn.rollback()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regnamespace('project_attr')")).scalar() is None

    # a connection not in a transaction gets one, committed by Alembic
    with engine.connect() as conn:
        command.upgrade(shared_config(connection=conn, schema="project_attr"), "head")
        assert not conn.in_transaction()
    assert schema_version(engine, "project_attr") == HEAD


def schema_version_on(conn: sa.Connection, schema: str) -> str | None:
    return conn.execute(sa.text(f"SELECT version_num FROM {schema}.alembic_version")).scalar()


def test_the_schema_is_created_under_its_advisory_lock(manager: WorkspaceManager) -> None:
    engine = manager.engine
    manager.bootstrap()
    with engine.connect() as holder, holder.begin():
        lock_schema(holder, "project_locked")  # what ensure/upgrade hold while they work on the schema
        with engine.connect() as conn, conn.begin():
            conn.execute(sa.text("SET LOCAL lock_timeout = '200ms'"))
            with pytest.raises(sa.exc.OperationalError, match="lock timeout"):
                command.upgrade(shared_config(connection=conn, schema="project_locked"), "head")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regnamespace('project_locked')")).scalar() is None


def test_an_autocommit_connection_or_no_schema_is_refused(manager: WorkspaceManager) -> None:
    engine = manager.engine
    manager.bootstrap()
    refused = pytest.raises(ConfigurationError, match=r"AUTOCOMMIT mode.*pass a connection in a transaction")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn, refused:
        command.upgrade(shared_config(connection=conn, schema="project_auto"), "head")
    with engine.begin() as conn:
        config = Config(str(ALEMBIC_INI))
        config.attributes["connection"] = conn
        with pytest.raises(ConfigurationError, match=r"name the project schema.*config.attributes\['schema'\]"):
            command.upgrade(config, "head")
        with pytest.raises(ConfigurationError, match="must be a SQLAlchemy Connection or Engine, not str"):
            command.upgrade(shared_config(connection="postgresql://x"), "head")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regnamespace('project_auto')")).scalar() is None


def test_migrating_never_imports_the_models_autogenerate_does(
    engine: sa.Engine, chain_builder: ChainBuilder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chain's models (alembic.ini's workspace_models) may pull in a whole application: a migration
    doesn't need them, so it doesn't import them; autogenerate does, and says which setting is wrong."""
    chain_builder.copy_main_chain()
    ini = chain_builder.ini
    ini.write_text(ini.read_text().replace("migrations.models:metadata", "unimportable_app.models:metadata"))
    (tmp_path / "unimportable_app").mkdir()
    (tmp_path / "unimportable_app" / "__init__.py").write_text("raise ImportError('the app needs its settings')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    WorkspaceManager(engine, ini).bootstrap()

    config = Config(str(ini))
    config.attributes["schema"] = "project_lazy"
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")  # the plain path; ensure and the fast path compile it too
    assert schema_version(engine, "project_lazy") == HEAD
    assert WorkspaceManager(engine, ini).ensure_detailed("lazy-too").to_revision == HEAD

    with pytest.raises(ConfigurationError) as refused:
        create_revision("x", config=ini, autogenerate=True, engine=engine)
    assert str(refused.value) == (
        f"workspace_models in {ini} 'unimportable_app.models:metadata': cannot import unimportable_app.models: "
        "the app needs its settings"
    )
    assert len(list(chain_builder.versions.glob("*.py"))) == 4
