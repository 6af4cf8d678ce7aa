"""A broken chain or configuration is one line that names the file (and line) to fix, from the CLI and
as a ConfigurationError from the library, with nothing written; an unreachable host or a bad port says
to check the server and the URL."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from support.chains import ALEMBIC_INI, ROOT, ChainBuilder
from support.cli import assert_one_line_error, run_cli
from support.db import database_state

import workspace_tool
from workspace_tool import (
    ConfigurationError,
    DatabaseUnavailable,
    ProjectWorkspaceManager,
    WorkspaceError,
    WorkspaceManager,
    errors,
    fleet,
)
from workspace_tool.authoring import create_revision
from workspace_tool.chain import Chain
from workspace_tool.chain.lint import revision_files

CREATE_T1 = "op.create_table('t1', sa.Column('id', sa.Integer, primary_key=True))"


def broken_revision(builder: ChainBuilder, bad: str) -> int:
    """A chain whose second revision holds ``bad`` at module level; the line ``bad`` starts on."""
    builder.add("r1", CREATE_T1)
    builder.add("r2", "pass", extra=bad)
    lines = (builder.versions / "r2.py").read_text().splitlines()
    return lines.index(bad.splitlines()[0]) + 1


BROKEN = [
    ("def helper()\n    return 1\n", "SyntaxError: expected ':'"),
    ("import workspace_tool_no_such_module\n", "ModuleNotFoundError: No module named 'workspace_tool_no_such_module'"),
    ("VALUE = 1 / 0\n", "ZeroDivisionError: division by zero"),
]


@pytest.mark.parametrize(("bad", "error"), BROKEN)
def test_a_revision_that_does_not_load(
    engine: sa.Engine,
    url_string: str,
    chain_builder: ChainBuilder,
    monkeypatch: pytest.MonkeyPatch,
    bad: str,
    error: str,
) -> None:
    line = broken_revision(chain_builder, bad)
    monkeypatch.chdir(chain_builder.root)  # the file is named as the user would type it
    expected = f"cannot load revision migrations/versions/r2.py:{line}: {error}"
    before = database_state(engine)
    base = ["--database-url", url_string, "-c", "alembic.ini"]
    for command in (
        ["ensure", "demo"],
        ["status"],
        ["upgrade", "--all"],
        ["downgrade", "--all", "--to", "base"],
        ["check"],
        ["verify-fast-path"],
        ["lint"],
        ["revision", "-m", "next"],
    ):
        assert assert_one_line_error(run_cli(*base, *command)) == f"Error: {expected}", command
    assert sorted(p.name for p in chain_builder.versions.glob("*.py")) == ["r1.py", "r2.py"]

    Chain.forget(chain_builder.ini)
    for load in (
        lambda: Chain.load(chain_builder.ini),
        lambda: WorkspaceManager(engine, chain_builder.ini),
        lambda: ProjectWorkspaceManager(create_async_engine("postgresql+asyncpg://app@127.0.0.1:1/app"), "alembic.ini"),
        lambda: revision_files(chain_builder.ini),
        lambda: create_revision("next", config=chain_builder.ini),
    ):
        with pytest.raises(ConfigurationError) as info:
            load()
        assert str(info.value) == expected
    assert database_state(engine) == before


def test_a_revision_outside_the_working_directory_is_named_by_its_path(
    url_string: str, chain_builder: ChainBuilder
) -> None:
    line = broken_revision(chain_builder, BROKEN[0][0])
    result = run_cli("--database-url", url_string, "-c", str(chain_builder.ini), "ensure", "demo")
    path = chain_builder.versions / "r2.py"
    assert assert_one_line_error(result) == f"Error: cannot load revision {path}:{line}: SyntaxError: expected ':'"


def ini_with(builder: ChainBuilder, script_location: str | None) -> Path:
    lines = [
        line
        for line in builder.ini.read_text().splitlines()
        if not line.startswith("script_location") or script_location is not None
    ]
    text = "\n".join(lines) + "\n"
    if script_location is not None:
        text = text.replace(next(x for x in lines if x.startswith("script_location")), script_location)
    builder.ini.write_text(text)
    return builder.ini


def test_no_script_location(engine: sa.Engine, url_string: str, chain_builder: ChainBuilder) -> None:
    ini = ini_with(chain_builder.add("r1", CREATE_T1), None)
    before = database_state(engine)
    expected = (
        f"{ini} has no script_location in its [alembic] section: set it to the directory of the revision chain "
        "(the one holding env.py and versions/), e.g. script_location = %(here)s/migrations"
    )
    for command in (["ensure", "demo"], ["lint"], ["upgrade", "--all"]):
        line = assert_one_line_error(run_cli("--database-url", url_string, "-c", str(ini), *command))
        assert line == f"Error: {expected}"
    with pytest.raises(ConfigurationError) as info:
        WorkspaceManager(engine, ini)
    assert str(info.value) == expected
    assert database_state(engine) == before


def test_script_location_that_does_not_exist(engine: sa.Engine, url_string: str, chain_builder: ChainBuilder) -> None:
    ini = ini_with(chain_builder.add("r1", CREATE_T1), "script_location = %(here)s/no_such_dir")
    missing = chain_builder.root / "no_such_dir"
    before = database_state(engine)
    line = assert_one_line_error(run_cli("--database-url", url_string, "-c", str(ini), "ensure", "demo"))
    assert line == (
        f"Error: script_location in {ini} is {missing}, which does not exist: set it to the directory of the "
        "revision chain (the one holding env.py and versions/)"
    )
    assert "'init' command" not in line  # Alembic's advice, which reads like `workspace-tool init`
    with pytest.raises(ConfigurationError, match="which does not exist"):
        Chain.load(ini)
    assert database_state(engine) == before


def test_an_ini_without_an_alembic_section(chain_builder: ChainBuilder) -> None:
    chain_builder.ini.write_text("[loggers]\nkeys = root\n")
    line = assert_one_line_error(run_cli("-c", str(chain_builder.ini), "lint"))
    assert line.startswith(f"Error: {chain_builder.ini} has no script_location (it has no [alembic] section)")
    chain_builder.ini.write_text("not an ini file\n")
    line = assert_one_line_error(run_cli("-c", str(chain_builder.ini), "lint"))
    assert line.startswith(f"Error: cannot read {chain_builder.ini} as an alembic.ini")


def test_an_ini_that_is_not_utf8_text(engine: sa.Engine, url_string: str, chain_builder: ChainBuilder) -> None:
    """Alembic reads alembic.ini as UTF-8: a file saved in another encoding (or a binary one) is one line
    naming it, not a traceback, and nothing is written."""
    chain_builder.add("r1", CREATE_T1)
    ini = chain_builder.ini
    ini.write_bytes(ini.read_bytes() + "# créé\n".encode("latin-1"))
    before = database_state(engine)
    for command in (["lint"], ["ensure", "demo"], ["upgrade", "--all"], ["history"]):
        line = assert_one_line_error(run_cli("--database-url", url_string, "-c", str(ini), *command))
        assert line.startswith(f"Error: cannot read {ini} as an alembic.ini: it is not UTF-8 text"), line
    with pytest.raises(ConfigurationError, match="not UTF-8 text"):
        Chain.load(ini)
    assert database_state(engine) == before


# ---------------------------------------------------------------- unreachable servers
HINT = "check that the server is up and the URL is right: --database-url or $WORKSPACE_TOOL_DATABASE_URL"


def test_unknown_host(engine: sa.Engine) -> None:
    url = "postgresql+psycopg2://app@no-such-host.invalid/app"
    line = assert_one_line_error(run_cli("--database-url", url, "-c", str(ALEMBIC_INI), "ensure", "demo"))
    assert line.startswith("Error: database connection failed: ") and "no-such-host.invalid" in line
    assert line.endswith(f"({HINT})")
    for work in (
        lambda: WorkspaceManager(sa.create_engine(url), ALEMBIC_INI).ensure("demo"),
        lambda: fleet.upgrade(sa.create_engine(url), Chain.load(ALEMBIC_INI)),
    ):
        with pytest.raises(DatabaseUnavailable) as info:
            work()
        assert HINT in str(info.value)


def test_a_port_out_of_range() -> None:
    url = "postgresql+psycopg2://app@127.0.0.1:99999/app"
    expected = "not a database URL (its port 99999 is not between 1 and 65535)"
    for command in (["ensure", "demo"], ["status"], ["upgrade", "--all"]):
        line = assert_one_line_error(run_cli("--database-url", url, "-c", str(ALEMBIC_INI), *command))
        assert line.startswith(f"Error: {expected}")
    with pytest.raises(ConfigurationError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        WorkspaceManager(sa.create_engine(url), ALEMBIC_INI)

    async def run() -> None:
        engine = create_async_engine("postgresql+asyncpg://app@127.0.0.1:99999/app")
        try:
            with pytest.raises(ConfigurationError, match="its port 99999"):  # was a bare OverflowError
                await ProjectWorkspaceManager(engine, ALEMBIC_INI).ensure_workspace_exists("demo")
        finally:
            await engine.dispose()

    asyncio.run(run())
    # a caller's engine handed straight to the fleet gets past the URL check: the driver's error says what to do
    with pytest.raises(DatabaseUnavailable) as info:
        fleet.upgrade(sa.create_engine(url), Chain.load(ALEMBIC_INI))
    assert "invalid port number" in str(info.value) and HINT in str(info.value)


# ------------------------------------------------------------------------ the error tree
def test_every_error_is_exported_and_documented() -> None:
    documented = (ROOT / "docs" / "reference" / "errors.md").read_text()
    raised = [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, WorkspaceError) and cls.__module__ == errors.__name__
    ]
    assert len(raised) > 10
    for cls in raised:
        assert getattr(workspace_tool, cls.__name__) is cls
        assert cls.__name__ in workspace_tool.__all__
        assert f"`{cls.__name__}`" in documented, f"{cls.__name__} is not in docs/reference/errors.md's table"
