"""A password in the database URL never reaches the user: not on stdout or stderr, not in a JSON report,
not in an exception's str/repr/traceback chain, not in a log record.

The shared test server trusts every login (the password is carried but not checked), which exercises
every path a password-bearing URL travels; a private server requiring scram-sha-256 exercises real
password logins, right and wrong.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from conftest import ALEMBIC_INI, ChainBuilder
from pgprivate import PASSWORD, PASSWORD_USER, PrivateServer
from sqlalchemy.ext.asyncio import create_async_engine

from workspace_tool import DatabaseUnavailable, ProjectWorkspaceManager, WorkspaceError, WorkspaceManager, cache
from workspace_tool.cli import main
from workspace_tool.urls import redact, redact_text, url_secrets

SECRET = "Zq9-s3cr3t-Pw"
ODD_SECRET = "p@ss:w/rd%Zq9 x"  # needs percent-encoding in a URL


def leaks(text: str, *secrets: str) -> list[str]:
    found = []
    for secret in secrets or (SECRET, ODD_SECRET, quote(ODD_SECRET, safe=""), PASSWORD):
        if secret in text:
            found.append(secret)
    return found


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner(env=env).invoke(main, list(args), catch_exceptions=False)


def assert_clean(result: Result, *, exit_code: int | None = None) -> Result:
    text = result.stdout + result.stderr
    assert not leaks(text), text
    assert "Traceback" not in text
    if exit_code is not None:
        assert result.exit_code == exit_code, text
    return result


def assert_clean_traceback(*args: str) -> None:
    """With --traceback the whole chain is shown: it must be clean too."""
    result = cli(*args)
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert not leaks(result.output), result.output


@pytest.fixture
def secret_url(database_url: sa.URL, engine: sa.Engine) -> str:
    """The session's database, reached with a password in the URL (the shared server ignores it)."""
    return database_url.set(password=SECRET).render_as_string(hide_password=False)


def failing_chain(builder: ChainBuilder) -> Path:
    builder.add("r1", "op.create_table('t1', sa.Column('id', sa.Integer, primary_key=True))")
    builder.add("r2", "op.execute('SELECT 1/0')")
    return builder.ini


def test_every_cli_command_and_error(secret_url: str, engine: sa.Engine, chain_builder: ChainBuilder) -> None:
    base = ["--database-url", secret_url, "-c", str(ALEMBIC_INI)]
    # successes
    assert_clean(cli(*base, "init"), exit_code=0)
    for command in (
        ["ensure", "alpha", "beta"],
        ["ensure", "--json", "alpha"],
        ["status"],
        ["status", "--json"],
        ["status", "--json", "alpha"],
        ["list"],
        ["list", "--json"],
        ["upgrade", "--all", "--json"],
        ["upgrade", "--all"],
        ["drop", "beta", "--yes"],
        ["lint"],
    ):
        assert_clean(cli(*base, *command), exit_code=0)
    # through the environment instead of the option
    assert_clean(cli("-c", str(ALEMBIC_INI), "status", env={"WORKSPACE_TOOL_DATABASE_URL": secret_url}), exit_code=0)

    # errors
    assert_clean(cli(*base, "ensure", "Bad!"), exit_code=1)
    assert_clean(cli(*base, "ensure", "alpha", "--owner-role", "Bad Role"), exit_code=1)
    assert_clean(cli(*base, "drop", "alpha"), exit_code=2)
    bad = ["--database-url", secret_url, "-c", str(failing_chain(chain_builder))]
    failed = assert_clean(cli(*bad, "ensure", "gamma"), exit_code=1)
    assert "division by zero" in failed.stderr
    assert_clean(cli(*bad, "upgrade", "--all", "--json"), exit_code=1)  # alpha can't reach r2's head
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE project_alpha.alembic_version SET version_num = 'zz_unknown'"))
    cache._READY.clear()
    assert_clean(cli(*base, "ensure", "alpha"), exit_code=1)
    assert_clean(cli(*base, "upgrade", "--all", "--json"), exit_code=1)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE project_registry.workspace_registry_version SET version_num = 'zz_newer'"))
    cache._BOOTSTRAPPED.clear()
    assert_clean(cli(*base, "ensure", "delta"), exit_code=1)
    assert_clean_traceback(*base, "--traceback", "ensure", "delta")  # even the full traceback


UNREACHABLE = [
    f"postgresql://app:{SECRET}@127.0.0.1:1/app",
    f"postgresql+psycopg2://app:{SECRET}@127.0.0.1:1/app?sslmode=disable",
    f"postgres://app:{SECRET}@127.0.0.1:1/app",
    f"postgresql://app:{quote(ODD_SECRET, safe='')}@127.0.0.1:1/app",
    f"postgresql://app:{SECRET}@/app?host=/nonexistent-dir",
    f"postgresql://app:{SECRET}@127.0.0.1:notaport/app",
    f"postgresql://app:{SECRET}@127.0.0.1:99999/app",
    f"postgresql://app:{SECRET}@[::1/app",
    f"app:{SECRET}@127.0.0.1:1/app",
    f"mysql://app:{SECRET}@127.0.0.1/app",
    f"postgresql://app:{SECRET}@no-such-host.invalid/app",
    f"postgresql://app:Zq9@{SECRET}@127.0.0.1:1/app",  # an unencoded '@' in the password
]


@pytest.mark.parametrize("url", UNREACHABLE)
def test_bad_and_unreachable_urls(url: str) -> None:
    for command in (["ensure", "x"], ["ensure", "--json", "x"], ["status", "--json"], ["upgrade", "--all", "--json"]):
        result = assert_clean(cli("--database-url", url, "-c", str(ALEMBIC_INI), *command), exit_code=1)
        [line] = result.stderr.splitlines()
        assert line.startswith("Error: ")
    assert_clean_traceback("--database-url", url, "-c", str(ALEMBIC_INI), "--traceback", "ensure", "x")


def test_api_exceptions_and_logs_hold_no_password(
    secret_url: str, chain_builder: ChainBuilder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("sqlalchemy.engine", "sqlalchemy.pool", "alembic", "workspace_tool"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    errors: list[BaseException] = []
    try:
        engine = sa.create_engine(secret_url)
        WorkspaceManager(engine, ALEMBIC_INI).ensure("logged")  # a success, fully logged
        for work in (
            lambda: WorkspaceManager(engine, ALEMBIC_INI).ensure("Not Valid"),
            lambda: WorkspaceManager(engine, failing_chain(chain_builder)).ensure("fails"),
            lambda: WorkspaceManager(
                sa.create_engine(f"postgresql+psycopg2://app:{SECRET}@127.0.0.1:1/app"), ALEMBIC_INI
            ).ensure("x"),
            lambda: WorkspaceManager(
                sa.create_engine(f"postgresql+psycopg2://app:{quote(ODD_SECRET, safe='')}@127.0.0.1:1/app"),
                ALEMBIC_INI,
            ).status(),
        ):
            with pytest.raises(WorkspaceError) as info:
                work()
            errors.append(info.value)
        engine.dispose()
    finally:
        for name in ("sqlalchemy.engine", "sqlalchemy.pool", "alembic", "workspace_tool"):
            logging.getLogger(name).setLevel(logging.NOTSET)
    for error in errors:
        shown = str(error) + repr(error) + "".join(traceback.format_exception(error))  # with its cause chain
        assert not leaks(shown), shown
    assert isinstance(errors[2], DatabaseUnavailable)
    assert caplog.records, "nothing was logged: the check would prove nothing"
    assert not leaks(caplog.text)


def test_async_api_holds_no_password() -> None:
    async def run() -> BaseException:
        engine = create_async_engine(f"postgresql+asyncpg://app:{SECRET}@127.0.0.1:1/app")
        try:
            with pytest.raises(WorkspaceError) as info:
                await ProjectWorkspaceManager(engine, ALEMBIC_INI).ensure_workspace_exists("x")
            return info.value
        finally:
            await engine.dispose()

    error = asyncio.run(run())
    assert isinstance(error, DatabaseUnavailable)
    assert not leaks(str(error) + repr(error) + "".join(traceback.format_exception(error)))


# --------------------------------------------------------- real password logins
@pytest.fixture(scope="module")
def password_server() -> Iterator[PrivateServer]:
    server = PrivateServer()
    yield server
    server.stop()


def test_wrong_password(password_server: PrivateServer) -> None:
    url = password_server.url_for(PASSWORD_USER, SECRET)  # not the role's password
    for command in (["ensure", "x"], ["status", "--json"], ["upgrade", "--all", "--json"], ["init"]):
        result = assert_clean(cli("--database-url", url, "-c", str(ALEMBIC_INI), *command), exit_code=1)
        [line] = result.stderr.splitlines()
        assert line.startswith("Error: database connection failed")
        assert f'password authentication failed for user "{PASSWORD_USER}"' in line
        assert "URL is right" in line  # says what to check
    with pytest.raises(DatabaseUnavailable) as info:
        WorkspaceManager(sa.create_engine(url), ALEMBIC_INI).ensure("x")
    assert not leaks(str(info.value) + "".join(traceback.format_exception(info.value)))
    # nothing was written: the login never happened
    admin = sa.create_engine(password_server.url, poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regnamespace('project_registry')")).scalar() is None
    admin.dispose()


def test_right_password_paths(password_server: PrivateServer, chain_builder: ChainBuilder) -> None:
    url = password_server.url_for(PASSWORD_USER, PASSWORD)
    base = ["--database-url", url, "-c", str(ALEMBIC_INI)]
    for command in (["ensure", "--json", "pw-a"], ["status", "--json"], ["list", "--json"], ["upgrade", "--all"]):
        assert_clean(cli(*base, *command), exit_code=0)
    bad = ["--database-url", url, "-c", str(failing_chain(chain_builder))]
    assert_clean(cli(*bad, "ensure", "pw-b"), exit_code=1)
    assert_clean_traceback(*bad, "--traceback", "ensure", "pw-b")
    assert_clean(cli(*bad, "upgrade", "--all", "--json"), exit_code=1)


# ------------------------------------------------------------------- redaction
def test_redaction_helpers() -> None:
    assert SECRET not in redact(f"postgresql://app:{SECRET}@db/app")
    assert url_secrets(f"postgresql://app:Zq9@{SECRET}@h/app")[0] == f"Zq9@{SECRET}"
    assert SECRET in url_secrets(f"postgresql://app:Zq9@{SECRET}@h/app")
    assert ODD_SECRET in url_secrets(f"postgresql://app:{quote(ODD_SECRET, safe='')}@h/app")
    assert url_secrets("postgresql://app@h/app") == []
    for text in (f"dsn password={SECRET} host=x", f"postgresql://u:{SECRET}@h/d", f"PASSWORD = '{SECRET}'"):
        assert SECRET not in redact_text(text)
