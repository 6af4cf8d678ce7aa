"""Read commands write nothing: `status`, `list`, `check` and `verify-fast-path` on a database where nothing
was provisioned yet, and as a read-only role (CONNECT, USAGE on the schemas, SELECT on the tables)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from support.chains import ALEMBIC_INI

from workspace_tool import ProjectWorkspaceManager, WorkspaceManager, drift, fleet
from workspace_tool.chain import Chain
from workspace_tool.cli import main
from workspace_tool.cli.render import NO_REGISTRY
from workspace_tool.errors import ConfigurationError
from workspace_tool.urls import async_url
from workspace_tool.verification import verify_fast_path

READER_PASSWORD = "Read-0nly-pw"


def cli(url: URL, *args: str) -> Result:
    database_url = url.render_as_string(hide_password=False)
    return CliRunner().invoke(main, ["--database-url", database_url, "-c", str(ALEMBIC_INI), *args])


def database_state(url: URL) -> tuple[list[str], list[str], list[tuple[str, int]]]:
    """Schemas, extensions, and the row count of each registry table."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        schemas = conn.execute(
            sa.text("SELECT nspname FROM pg_namespace WHERE nspname !~ '^(pg_|information_schema)' ORDER BY 1")
        )
        extensions = conn.execute(sa.text("SELECT extname FROM pg_extension ORDER BY 1"))
        tables = conn.execute(
            sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'project_registry' ORDER BY 1")
        ).scalars()
        counts = [(t, conn.execute(sa.text(f"SELECT count(*) FROM project_registry.{t}")).scalar_one()) for t in tables]
        state = (list(schemas.scalars()), list(extensions.scalars()), counts)
    engine.dispose()
    return state


def one_line_error(result: Result, *fragments: str) -> str:
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr
    return result.stderr


# ---------------------------------------------------------------- a fresh database
def test_read_commands_on_a_fresh_database_say_so_and_write_nothing(new_database: URL) -> None:
    before = database_state(new_database)

    for args in (["status"], ["list"], ["check"]):
        result = cli(new_database, *args)
        assert (result.exit_code, result.stdout, result.stderr) == (0, "", NO_REGISTRY + "\n"), args
    one_line_error(
        cli(new_database, "status", "some-project"),
        "no project some-project",
        "no registry yet in this database: nothing has been provisioned",
    )
    assert json.loads(cli(new_database, "status", "--json").stdout)["total"] == 0
    assert json.loads(cli(new_database, "check", "--json").stdout) == {
        "head": Chain.load(ALEMBIC_INI).head,
        "ok": True,
        "checked": 0,
        "failing": 0,
        "gone": 0,
        "schemas": [],
        "spares": [],
    }
    one_line_error(cli(new_database, "check", "some-project"), "no project some-project")
    one_line_error(cli(new_database, "verify-fast-path"), "vector extension is not installed", "workspace-tool init")

    engine = sa.create_engine(new_database, poolclass=sa.pool.NullPool)
    async_engine = create_async_engine(async_url(new_database), poolclass=sa.pool.NullPool)
    try:
        manager = WorkspaceManager(engine, ALEMBIC_INI)
        assert (manager.status(), manager.projects(), manager.has_registry()) == ([], [], False)
        report = drift.check(engine, manager.chain)
        assert (report.schemas, report.registry) == ([], False)
        assert asyncio.run(ProjectWorkspaceManager(async_engine, ALEMBIC_INI).status()) == []
    finally:
        engine.dispose()
        asyncio.run(async_engine.dispose())
    assert database_state(new_database) == before


def test_verify_fast_path_needs_the_extension_not_the_registry(new_database: URL) -> None:
    engine = sa.create_engine(new_database, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:  # what `workspace-tool init` installs, without the registry
            conn.execute(sa.text("CREATE SCHEMA workspace_extensions"))
            conn.execute(sa.text("CREATE EXTENSION vector WITH SCHEMA workspace_extensions"))
        before = database_state(new_database)
        chain = Chain.load(ALEMBIC_INI)
        report = verify_fast_path(engine, chain, cases=[(None, chain.head, True), (chain.head, None, False)])
        assert report.identical
    finally:
        engine.dispose()
    assert database_state(new_database) == before  # no registry


# ---------------------------------------------------------------- a read-only role
@pytest.fixture
def reader(engine: sa.Engine, database_url: URL) -> Iterator[Callable[[], URL]]:
    """A login role; calling the fixture grants it what a monitoring role gets (CONNECT, USAGE on every
    schema of the tool, SELECT on their tables: on those to come through the migrating role's default
    privileges, which `check` expects projects to have) and returns its URL. Dropped at the end."""
    role = f"wst_reader_{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD '{READER_PASSWORD}'"))

    def grant() -> URL:
        with engine.begin() as conn:
            conn.execute(sa.text(f"ALTER DEFAULT PRIVILEGES GRANT USAGE ON SCHEMAS TO {role}"))
            conn.execute(sa.text(f"ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO {role}"))
            schemas = conn.execute(
                sa.text(
                    "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'project\\_%' "
                    "OR nspname = 'workspace_extensions'"
                )
            ).scalars()
            for schema in schemas:
                conn.execute(sa.text(f'GRANT USAGE ON SCHEMA "{schema}" TO {role}'))
                conn.execute(sa.text(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO {role}'))
        return database_url.set(username=role, password=READER_PASSWORD)

    yield grant
    with engine.begin() as conn:
        conn.execute(sa.text(f"ALTER DEFAULT PRIVILEGES REVOKE ALL ON SCHEMAS FROM {role}"))
        conn.execute(sa.text(f"ALTER DEFAULT PRIVILEGES REVOKE ALL ON TABLES FROM {role}"))
        conn.execute(sa.text(f"DROP OWNED BY {role}"))
        conn.execute(sa.text(f"DROP ROLE {role}"))


def test_status_and_check_work_for_a_read_only_role(
    engine: sa.Engine, database_url: URL, reader: Callable[[], URL]
) -> None:
    chain = Chain.load(ALEMBIC_INI)
    url = reader()
    assert fleet.provision(engine, chain, ["ro-a", "ro-b"]).ok  # a migrating run: it stores the reference
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE project_ro_b.code_files ADD COLUMN by_hand integer"))
    with engine.begin() as conn:  # only this chain's reference (other tests store theirs)
        conn.execute(
            sa.text("DELETE FROM project_registry.reference_catalog WHERE key_parts->>'chain' <> :chain"),
            {"chain": chain.fingerprint},
        )
    before = database_state(database_url)

    status = cli(url, "status")
    assert status.exit_code == 0 and status.stdout.startswith(f"2 project(s); head is {chain.head}\n"), status.output
    named = cli(url, "status", "ro-a", "--json")
    assert [(s["project_id"], s["state"]) for s in json.loads(named.stdout)] == [("ro-a", "at-head")]
    check = cli(url, "check")
    assert check.exit_code == 1, check.output
    assert check.stdout == "1 schema(s), at-head: unexpected relations.code_files.columns.by_hand (project_ro_b)\n"
    one_line_error(cli(url, "verify-fast-path"), "may not create schemas in database", "GRANT CREATE ON DATABASE")

    with engine.begin() as conn:  # no reference stored for this chain: check says what to run
        conn.execute(sa.text("DELETE FROM project_registry.reference_catalog"))
    one_line_error(cli(url, "check"), "can't build one", "run `workspace-tool init`")
    admin = cli(database_url, "check")  # a role that may create schemas builds it, and stores nothing
    assert admin.exit_code == 1 and admin.stdout == check.stdout
    assert database_state(database_url)[2] == [
        *[row for row in before[2] if row[0] == "pool_releases"],
        ("reference_catalog", 0),
        ("spare_schemas", 0),
        ("workspace_config", 2),
    ] + [row for row in before[2] if row[0] == "workspace_registry_version"]

    assert cli(database_url, "init").exit_code == 0  # stores it again
    assert cli(url, "check").stdout == check.stdout
    assert database_state(database_url) == before


def test_status_and_check_on_an_engine_with_a_pool_of_one_connection(engine: sa.Engine, database_url: URL) -> None:
    chain = Chain.load(ALEMBIC_INI)
    assert fleet.provision(engine, chain, ["pool-a", "pool-b"]).ok
    small = sa.create_engine(database_url, pool_size=1, max_overflow=0, pool_timeout=2)
    try:
        manager = WorkspaceManager(small, ALEMBIC_INI)
        assert [s.state for s in manager.status()] == ["at-head", "at-head"]
        assert drift.check(small, chain).ok  # everything on its one connection
        with pytest.raises(ConfigurationError, match="use fewer jobs"):  # as a fleet run says
            drift.check(small, chain, jobs=4)
    finally:
        small.dispose()
