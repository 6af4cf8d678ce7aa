"""A role missing a privilege gets PermissionDenied naming what to grant (or which command a privileged
role must run first), one line from the CLI, nothing changed; following the advice makes it work.

Every test runs in a database of its own (no vector extension, no registry: what a DBA hands out) with a
login role of its own; both are dropped at the end (roles are cluster-wide).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from sqlalchemy.ext.asyncio import create_async_engine
from support.chains import ALEMBIC_INI

from workspace_tool import PermissionDenied, ProjectWorkspaceManager, WorkspaceManager
from workspace_tool.cli import main
from workspace_tool.managers import cache
from workspace_tool.urls import async_url


@dataclass
class Scene:
    database: str
    role: str
    admin_url: sa.URL  # a superuser on the scene's database
    role_url: sa.URL  # the restricted role on it

    def admin(self, *statements: str) -> None:
        engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            for statement in statements:
                conn.execute(sa.text(statement))
        engine.dispose()

    def state(self) -> tuple[list[str], list[str]]:
        """The scene database's schemas and registry rows: what a refused command must leave alone."""
        engine = sa.create_engine(self.admin_url, poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            schemas = conn.execute(sa.text("SELECT nspname FROM pg_namespace ORDER BY 1")).scalars().all()
            rows: list[str] = []
            if conn.execute(sa.text("SELECT to_regclass('project_registry.workspace_config')")).scalar():
                rows = list(
                    conn.execute(sa.text("SELECT project_id FROM project_registry.workspace_config ORDER BY 1"))
                    .scalars()
                    .all()
                )
        engine.dispose()
        return list(schemas), rows

    def ensure_async(self, project_id: str) -> PermissionDenied:
        """The same through ProjectWorkspaceManager (asyncpg)."""

        async def run() -> PermissionDenied:
            engine = create_async_engine(async_url(self.role_url))
            try:
                with pytest.raises(PermissionDenied) as info:
                    await ProjectWorkspaceManager(engine, ALEMBIC_INI).ensure_workspace_exists(project_id)
                return info.value
            finally:
                await engine.dispose()

        cache.clear()
        return asyncio.run(run())

    def cli(self, *args: str, url: sa.URL | None = None) -> Result:
        cache.clear()
        rendered = (url or self.role_url).render_as_string(hide_password=False)
        return CliRunner().invoke(main, ["--database-url", rendered, "-c", str(ALEMBIC_INI), *args])

    def ensure(self, project_id: str) -> PermissionDenied:
        """ensure as the role through the library: it must be refused, with nothing changed."""
        before = self.state()
        cache.clear()
        engine = sa.create_engine(self.role_url, poolclass=sa.pool.NullPool)
        try:
            with pytest.raises(PermissionDenied) as info:
                WorkspaceManager(engine, ALEMBIC_INI).ensure(project_id)
        finally:
            engine.dispose()
        assert self.state() == before
        error = info.value
        assert "\n" not in str(error) and error.role == self.role
        return error


@pytest.fixture
def scene(database_url: sa.URL) -> Iterator[Scene]:
    token = uuid.uuid4().hex[:10]
    database, role, password = f"wst_perm_{token}", f"wst_perm_{token}", f"pw-{token}"
    server = sa.create_engine(database_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with server.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
    admin_url = database_url.set(database=database)
    try:
        yield Scene(database, role, admin_url, admin_url.set(username=role, password=password))
    finally:
        cache.clear()
        with server.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
            conn.execute(sa.text(f"DROP ROLE IF EXISTS {role}"))
        server.dispose()


def one_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: ") and "Traceback" not in result.output
    return line


def test_each_missing_privilege_is_named_and_the_advice_works(scene: Scene) -> None:
    # 1. A fresh database, and a role that may not create anything in it: a privileged role must run init.
    error = scene.ensure("perm-a")
    assert error.detail == f"permission denied for database {scene.database}"
    assert "run `workspace-tool init`" in str(error) and scene.role in str(error)
    assert error.grant is None
    line = one_line(scene.cli("ensure", "perm-a"))
    assert "permission denied" in line and "workspace-tool init" in line

    # 2. Allowed to create schemas, but not the vector extension (not a trusted extension): the same advice.
    scene.admin(f"GRANT CREATE ON DATABASE {scene.database} TO {scene.role}")
    error = scene.ensure("perm-a")
    assert error.detail == 'permission denied to create extension "vector"'
    assert "have a superuser" in str(error) and "workspace-tool init" in str(error)

    # 3. A superuser ran init; the role may not use the registry it made: GRANT USAGE on it.
    assert scene.cli("init", url=scene.admin_url).exit_code == 0
    scene.admin(f"REVOKE CREATE ON DATABASE {scene.database} FROM {scene.role}")
    error = scene.ensure("perm-a")
    assert error.detail == "permission denied for schema project_registry"
    assert f"GRANT USAGE ON SCHEMA project_registry TO {scene.role}" in str(error)
    assert one_line(scene.cli("ensure", "perm-a")) == f"Error: {error}"
    assert error.grant is not None
    scene.admin(error.grant)

    # 4. The registry is usable, the extension's schema is not (its search_path would skip it silently).
    error = scene.ensure("perm-a")
    assert error.grant == f"GRANT USAGE ON SCHEMA workspace_extensions TO {scene.role}"
    assert f"run {error.grant}" in str(error) and "vector extension" in str(error)
    scene.admin(error.grant)

    # 5. Both usable, but the role may not create the project's schema: GRANT CREATE on the database.
    error = scene.ensure("perm-a")
    assert str(error) == (
        f"permission denied for database {scene.database}: role {scene.role} may not create schemas in "
        f"database {scene.database} (to create project_perm_a); run GRANT CREATE ON DATABASE {scene.database} "
        f"TO {scene.role}; nothing was changed"
    )
    assert one_line(scene.cli("ensure", "perm-a")) == f"Error: {error}"
    assert error.grant is not None
    scene.admin(error.grant)

    # Every piece of advice followed: it works.
    result = scene.cli("ensure", "perm-a")
    assert result.exit_code == 0, result.output
    assert scene.state()[1] == ["perm-a"]


def test_a_schema_another_role_owns(scene: Scene) -> None:
    assert scene.cli("ensure", "owned", url=scene.admin_url).exit_code == 0
    scene.admin(
        f"GRANT USAGE ON SCHEMA project_registry, workspace_extensions TO {scene.role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA project_registry TO {scene.role}",
        # behind head: the role would have to migrate it
        "UPDATE project_owned.alembic_version SET version_num = '0003_indexing_jobs'",
    )
    error = scene.ensure("owned")
    assert "project_owned" in error.detail
    assert "run as the role that owns" in str(error)


def test_no_connect_privilege(scene: Scene) -> None:
    scene.admin(f"REVOKE CONNECT ON DATABASE {scene.database} FROM PUBLIC")
    grant = f"GRANT CONNECT ON DATABASE {scene.database} TO {scene.role}"
    assert scene.ensure("perm-c").grant == grant
    line = one_line(scene.cli("status", "perm-c"))
    assert f"run {grant}" in line
    assert scene.ensure_async("perm-c").grant == grant  # asyncpg keeps the DETAIL that tells it from CREATE


def test_async_manager_names_the_grant(scene: Scene) -> None:
    assert scene.cli("init", url=scene.admin_url).exit_code == 0
    error = scene.ensure_async("perm-b")
    assert error.grant is not None and error.grant.startswith("GRANT USAGE ON SCHEMA project_registry")
    scene.admin(error.grant, f"GRANT USAGE ON SCHEMA workspace_extensions TO {scene.role}")
    error = scene.ensure_async("perm-b")
    assert error.grant == f"GRANT CREATE ON DATABASE {scene.database} TO {scene.role}"
