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
from pgprivate import PASSWORD, PASSWORD_USER, PrivateServer
from sqlalchemy.ext.asyncio import create_async_engine
from support.chains import ALEMBIC_INI, ChainBuilder

from workspace_tool import DatabaseUnavailable, ProjectWorkspaceManager, WorkspaceError, WorkspaceManager, drift, fleet
from workspace_tool.authoring import create_revision
from workspace_tool.chain import Chain
from workspace_tool.cli import main
from workspace_tool.managers import cache
from workspace_tool.urls import redact, redact_text, url_secrets
from workspace_tool.verification import verify_fast_path

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
    assert_clean(cli(*base, "drop", "alpha"), exit_code=1)  # no --yes and no terminal
    bad = ["--database-url", secret_url, "-c", str(failing_chain(chain_builder))]
    failed = assert_clean(cli(*bad, "ensure", "gamma"), exit_code=1)
    assert "division by zero" in failed.stderr
    assert_clean(cli(*bad, "upgrade", "--all", "--json"), exit_code=1)  # alpha can't reach r2's head
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE project_alpha.alembic_version SET version_num = 'zz_unknown'"))
    cache.clear()
    assert_clean(cli(*base, "ensure", "alpha"), exit_code=1)
    assert_clean(cli(*base, "upgrade", "--all", "--json"), exit_code=1)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE project_registry.workspace_registry_version SET version_num = 'zz_newer'"))
    cache.clear()
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


# ------------------------------------------- an unencoded '@' in the password (issue 9, item 16)
AT_URLS = [
    ("postgresql://alice:ab@xy@127.0.0.1:1/db", ("ab", "xy")),  # short parts: scrubbed where they stand alone
    (f"postgresql://app:Zq9@{SECRET}@127.0.0.1:1/app", ("Zq9", SECRET)),
]


def assert_no_part(text: str, parts: tuple[str, ...]) -> None:
    for part in parts:
        assert f'"{part}' not in text and f"{part}@" not in text and f":{part}" not in text, text
    assert SECRET not in text


@pytest.mark.parametrize(("url", "parts"), AT_URLS)
def test_password_with_an_unencoded_at_through_the_cli(url: str, parts: tuple[str, ...]) -> None:
    for command in (["ensure", "x"], ["status", "--json"], ["upgrade", "--all", "--json"], ["init"]):
        result = cli("--database-url", url, "-c", str(ALEMBIC_INI), *command)
        assert result.exit_code == 1
        [line] = result.stderr.splitlines()
        assert line == (
            "Error: not a database URL (it has more than one '@': write an '@' in the user name or password as "
            "%40): expected postgresql://user@host:port/dbname, with :password after the user if needed"
        )
    result = cli("--database-url", url, "-c", str(ALEMBIC_INI), "--traceback", "ensure", "x")
    assert "Traceback (most recent call last)" in result.stderr
    assert_no_part(result.output, parts)


@pytest.mark.parametrize(("url", "parts"), AT_URLS)
def test_password_with_an_unencoded_at_through_the_library(url: str, parts: tuple[str, ...]) -> None:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://"))
    with pytest.raises(WorkspaceError, match="%40") as info:
        WorkspaceManager(engine, ALEMBIC_INI)
    assert_no_part(str(info.value), parts)
    assert_no_part(redact(url) + redact(engine.url), parts)
    # the fleet takes the caller's engine as it is: libpq then looks the rest of the password up as a host
    with pytest.raises(DatabaseUnavailable) as failed:
        fleet.upgrade(engine, Chain.load(ALEMBIC_INI))
    shown = str(failed.value) + repr(failed.value)  # (its __cause__ is the driver's own exception)
    assert "could not translate host name" in shown and "database" in shown and "***@127.0.0.1" in shown
    assert_no_part(shown, parts)


# -------------------------------------------- every translated error scrubs the engine's password
def test_every_operation_on_a_callers_engine_scrubs_its_password() -> None:
    """The rest of a password holding an '@' reaches the driver's message as a host name; each operation
    that takes an engine scrubs it (none may drop the URL's secrets when translating)."""
    engine = sa.create_engine(f"postgresql+psycopg2://app:Zq9@{SECRET}@127.0.0.1:1/app")
    chain = Chain.load(ALEMBIC_INI)
    for work in (
        lambda: fleet.upgrade(engine, chain),
        lambda: fleet.sql(engine, chain),
        lambda: drift.check(engine, chain),
        lambda: verify_fast_path(engine, chain),
        lambda: create_revision("never written", config=ALEMBIC_INI, autogenerate=True, engine=engine),
    ):
        with pytest.raises(DatabaseUnavailable) as info:
            work()
        shown = str(info.value) + repr(info.value)
        assert "could not translate host name" in shown
        assert SECRET not in shown, shown
    engine.dispose()
