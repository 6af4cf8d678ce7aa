"""Least privilege: `ensure --owner-role ROLE` grants a per-project role its own schema and nothing else.

Roles are cluster-wide, so every test uses fresh role names and drops them (and their grants) at the end.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import create_async_engine
from support.chains import ALEMBIC_INI, ChainBuilder

from workspace_tool import ProjectWorkspaceManager, WorkspaceManager
from workspace_tool.cli import main
from workspace_tool.errors import InvalidRoleName
from workspace_tool.urls import async_url

INSERT_REPO = "INSERT INTO {s}.repositories (path, name) VALUES ('/src', 'src') RETURNING id"


@pytest.fixture
def role_names(engine: sa.Engine) -> Iterator[Callable[[], str]]:
    """Unique role names; each is dropped at the end with everything granted to it."""
    made: list[str] = []

    def make() -> str:
        name = f"wst_role_{uuid.uuid4().hex[:10]}"
        made.append(name)
        return name

    yield make
    with engine.begin() as conn:
        for name in made:
            if conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": name}).scalar():
                conn.execute(sa.text(f'DROP OWNED BY "{name}"'))
                conn.execute(sa.text(f'DROP ROLE "{name}"'))


def as_role(engine: sa.Engine, role: str, sql: str) -> object:
    """Run one statement with the privileges of ``role`` (SET ROLE), rolled back afterwards."""
    with engine.connect() as conn, conn.begin() as tx:
        conn.execute(sa.text(f'SET LOCAL ROLE "{role}"'))
        try:
            result = conn.execute(sa.text(sql))
            return result.scalar() if result.returns_rows else None
        finally:
            tx.rollback()


def denied(engine: sa.Engine, role: str, sql: str) -> str:
    with pytest.raises(ProgrammingError) as info:
        as_role(engine, role, sql)
    assert info.value.orig.pgcode == "42501", info.value  # type: ignore[union-attr]  # insufficient_privilege
    return str(info.value.orig).splitlines()[0]


def test_role_uses_its_schema_and_nothing_else(manager: WorkspaceManager, role_names: Callable[[], str]) -> None:
    role_a, role_b = role_names(), role_names()
    schema_a = manager.ensure("owned-a", owner_role=role_a)
    schema_b = manager.ensure("owned-b", owner_role=role_b)
    with manager.engine.connect() as conn:
        can_login = conn.execute(sa.text("SELECT rolcanlogin FROM pg_roles WHERE rolname = :r"), {"r": role_a}).scalar()
    assert can_login is False  # created NOLOGIN

    # its own schema: insert, select, update, delete; a table with a sequence-free uuid key and one with FKs
    assert as_role(manager.engine, role_a, INSERT_REPO.format(s=schema_a)) is not None
    assert as_role(manager.engine, role_a, f"SELECT count(*) FROM {schema_a}.repositories") == 0
    as_role(manager.engine, role_a, f"UPDATE {schema_a}.code_files SET language = 'x'")
    as_role(manager.engine, role_a, f"DELETE FROM {schema_a}.code_chunks")
    assert as_role(manager.engine, role_a, f"SELECT version_num FROM {schema_a}.alembic_version") == manager.head

    # not its migration history, not DDL in its schema
    denied(manager.engine, role_a, f"UPDATE {schema_a}.alembic_version SET version_num = 'x'")
    denied(manager.engine, role_a, f"CREATE TABLE {schema_a}.sneaky (id int)")
    denied(manager.engine, role_a, f"DROP TABLE {schema_a}.repositories")
    # not another project's schema
    denied(manager.engine, role_a, f"SELECT count(*) FROM {schema_b}.repositories")
    denied(manager.engine, role_a, INSERT_REPO.format(s=schema_b))
    denied(manager.engine, role_b, f"SELECT count(*) FROM {schema_a}.repositories")
    # not the registry
    denied(manager.engine, role_a, "SELECT count(*) FROM project_registry.workspace_config")
    denied(
        manager.engine,
        role_a,
        "INSERT INTO project_registry.workspace_config (project_id, schema_name) VALUES ('x', 'project_x')",
    )
    denied(manager.engine, role_a, "DELETE FROM project_registry.workspace_config")


def test_grants_cover_tables_added_by_later_revisions(
    engine: sa.Engine, chain_builder: ChainBuilder, tmp_path: Path, role_names: Callable[[], str]
) -> None:
    role = role_names()
    chain_builder.add("r1", "op.create_table('t1', sa.Column('id', sa.Integer, primary_key=True))")
    schema = WorkspaceManager(engine, chain_builder.ini).ensure("grows", owner_role=role)
    as_role(engine, role, f"INSERT INTO {schema}.t1 VALUES (1)")

    longer = ChainBuilder(tmp_path / "longer")
    longer.add("r1", "op.create_table('t1', sa.Column('id', sa.Integer, primary_key=True))")
    longer.add("r2", "op.create_table('t2', sa.Column('id', sa.Integer, sa.Identity(), primary_key=True))")
    result = WorkspaceManager(engine, longer.ini).ensure_detailed("grows")  # no role named this time
    assert result.action == "upgraded"
    # t2 (and its identity sequence) came after the grant: default privileges cover them
    assert as_role(engine, role, f"INSERT INTO {schema}.t2 DEFAULT VALUES RETURNING id") == 1


def test_existing_role_and_existing_schema(manager: WorkspaceManager, role_names: Callable[[], str]) -> None:
    role = role_names()
    with manager.engine.begin() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))  # made by the DBA: left as it is
    schema = manager.ensure("later")  # provisioned without a role first
    denied(manager.engine, role, f"SELECT 1 FROM {schema}.repositories")
    result = manager.ensure_detailed("later", owner_role=role)  # cached schema: the grant still happens
    assert result.action == "current"
    assert as_role(manager.engine, role, f"SELECT count(*) FROM {schema}.repositories") == 0
    assert manager.ensure_detailed("later", owner_role=role).action == "cached"  # granted once per process
    with manager.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT rolcanlogin FROM pg_roles WHERE rolname = :r"), {"r": role}).scalar()


def test_grant_is_in_the_provisioning_transaction(
    engine: sa.Engine, chain_builder: ChainBuilder, role_names: Callable[[], str]
) -> None:
    """A failing revision rolls back the schema and the role it would have created."""
    role = role_names()
    chain_builder.add("r1", "op.create_table('t1', sa.Column('id', sa.Integer, primary_key=True))")
    chain_builder.add("r2", "op.execute('SELECT 1/0')")
    with pytest.raises(Exception, match="division by zero"):
        WorkspaceManager(engine, chain_builder.ini).ensure("broken", owner_role=role)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM pg_roles WHERE rolname = :r"), {"r": role}).scalar() == 0
        assert conn.execute(sa.text("SELECT to_regnamespace('project_broken')")).scalar() is None


def test_cli_owner_role(engine: sa.Engine, url_string: str, role_names: Callable[[], str]) -> None:
    role = role_names()
    result = CliRunner().invoke(
        main,
        ["--database-url", url_string, "-c", str(ALEMBIC_INI), "ensure", "cli-owned", "--owner-role", role],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert as_role(engine, role, "SELECT count(*) FROM project_cli_owned.repositories") == 0


BAD_ROLES = ["", "Admin", "pg_monitor", "public", "a;b", 'x"y', "1abc", "a" * 64, "rôle", "has space", "postgres"]


@pytest.mark.parametrize("role", BAD_ROLES)
def test_bad_role_names_are_rejected_before_any_sql(
    manager: WorkspaceManager, count_statements: Callable[[], object], url_string: str, role: str
) -> None:
    with count_statements() as statements:  # type: ignore[attr-defined]
        with pytest.raises(InvalidRoleName) as info:
            manager.ensure("fine", owner_role=role)
        assert statements.count == 0
    assert "\n" not in str(info.value) and "invalid owner role" in str(info.value)
    result = CliRunner().invoke(
        main,
        ["--database-url", url_string, "-c", str(ALEMBIC_INI), "ensure", "fine", "--owner-role", role],
        catch_exceptions=False,
    )
    assert result.exit_code == 1 and result.stderr.startswith("Error: invalid owner role")
    assert len(result.stderr.splitlines()) == 1
    with manager.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regnamespace('project_fine')")).scalar() is None


def test_async_owner_role(database_url: sa.URL, engine: sa.Engine, role_names: Callable[[], str]) -> None:
    role = role_names()

    async def run() -> str:
        aengine = create_async_engine(async_url(database_url))
        try:
            return await ProjectWorkspaceManager(aengine, ALEMBIC_INI).ensure_workspace_exists(
                "async-owned", owner_role=role
            )
        finally:
            await aengine.dispose()

    schema = asyncio.run(run())
    assert as_role(engine, role, INSERT_REPO.format(s=schema)) is not None
    denied(engine, role, "SELECT 1 FROM project_registry.workspace_config")
