"""Bad input and bad configuration: one-line errors naming the rule, exit 1, nothing sent or written.

Every adversarial project id is rejected by the API before a single statement is sent (a statement
counter and a pool-checkout counter on the engine stay at zero) and by the CLI with ``Error: ...`` on
one line, exit 1, and the database unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from support.chains import ALEMBIC_INI, ChainBuilder
from support.cli import assert_one_line_error, run_cli
from support.db import StatementCounter, database_state

from workspace_tool import (
    ConfigurationError,
    DatabaseUnavailable,
    InvalidProjectId,
    ProjectWorkspaceManager,
    RegistryError,
    UnknownRevision,
    WorkspaceManager,
)
from workspace_tool.managers import cache
from workspace_tool.urls import async_url

# (project id, what the error must say about the rule it breaks)
ADVERSARIAL_IDS: list[tuple[str, str]] = [
    ("", "it is empty"),
    (" ", "character ' '"),
    ("   ", "character ' '"),
    (" padded", "character ' '"),
    ("padded ", "character ' '"),
    ("two words", "character ' '"),
    ("tab\tid", "character '\\t'"),
    ("new\nline", "character '\\n'"),
    ("carriage\rreturn", "character '\\r'"),
    ("nul\x00byte", "character '\\x00'"),
    ("bell\x07", "character '\\x07'"),
    ("esc\x1b[31m", "character '\\x1b'"),
    ("line\u2028sep", "character '\\u2028'"),
    ("next\x85line", "character '\\x85'"),
    ("x'; DROP SCHEMA public CASCADE; --", "starts or ends with a hyphen"),
    ("x' OR '1'='1", 'character "\'"'),
    ("a;b", "character ';'"),
    ('"quoted"', "character '\"'"),
    ("back\\slash", "character '\\\\'"),
    ("x/*comment*/", "character '/'"),
    ("x--comment", "two hyphens in a row"),
    ("a--b", "two hyphens in a row"),
    ("--", "starts or ends with a hyphen"),
    ("-", "starts or ends with a hyphen"),
    ("-leading", "starts or ends with a hyphen"),
    ("trailing-", "starts or ends with a hyphen"),
    ("Project", "character 'P'"),
    ("ALLCAPS", "character 'A'"),
    ("mixedCase", "character 'C'"),
    ("\u0430bc", "character '\u0430'"),  # Cyrillic a
    ("\uff41\uff42\uff43", "character '\uff41'"),  # fullwidth abc
    ("proj\u2010x", "character '\u2010'"),  # Unicode hyphen
    ("proj\u2013x", "character '\u2013'"),  # en dash
    ("zero\u200bwidth", "character '\\u200b'"),  # zero-width space
    ("caf\u00e9", "character '\u00e9'"),
    ("\u0661\u0662\u0663", "character '\u0661'"),  # Arabic-Indic digits
    ("pg_catalog", "character '_'"),
    ("pg_toast", "character '_'"),
    ("information_schema", "character '_'"),
    ("under_score", "character '_'"),
    ("public.repositories", "character '.'"),
    ("project_x", "character '_'"),
    ("x%", "character '%'"),
    ("$1", "character '$'"),
    ("a" * 51, "51 characters long, more than 50"),
    ("a" * 200, "200 characters long, more than 50"),
    ("ab-" * 17, "51 characters long, more than 50"),
    ("registry", "reserved"),
]

# Not strings at all: the API rejects them too.
NON_STRINGS: list[tuple[Any, str]] = [(None, "NoneType"), (42, "int"), (b"bytes", "bytes"), (["a"], "list")]


def test_the_table_is_big_enough() -> None:
    assert len(ADVERSARIAL_IDS) >= 30
    assert len({pid for pid, _ in ADVERSARIAL_IDS}) == len(ADVERSARIAL_IDS)


class CheckoutCounter:
    """Counts connections taken from the engine's pool (raw ones included)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.count = 0

    def __enter__(self) -> CheckoutCounter:
        sa.event.listen(self.engine, "checkout", self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self.engine, "checkout", self._record)

    def _record(self, *args: object) -> None:
        self.count += 1


def _assert_rule(error: BaseException, rule: str) -> None:
    message = str(error)
    assert "\n" not in message and "\r" not in message
    assert rule in message
    assert "^[a-z0-9]+(-[a-z0-9]+)*$" in message


@pytest.mark.parametrize(("project_id", "rule"), ADVERSARIAL_IDS)
def test_api_rejects_before_any_sql(
    manager: WorkspaceManager, count_statements: Any, project_id: str, rule: str
) -> None:
    with count_statements() as statements, CheckoutCounter(manager.engine) as checkouts:
        for call in (
            lambda: manager.ensure(project_id),
            lambda: manager.ensure(project_id, verify=True),
            lambda: manager.ensure_detailed(project_id),
            lambda: manager.drop(project_id),
            lambda: manager.status([project_id]),
        ):
            with pytest.raises(InvalidProjectId) as info:
                call()
            _assert_rule(info.value, rule)
            assert isinstance(info.value, ValueError)
    assert statements.count == 0
    assert checkouts.count == 0


@pytest.mark.parametrize(("value", "type_name"), NON_STRINGS)
def test_api_rejects_non_strings(manager: WorkspaceManager, count_statements: Any, value: Any, type_name: str) -> None:
    with count_statements() as statements, pytest.raises(InvalidProjectId, match=f"it is a {type_name}"):
        manager.ensure(value)
    assert statements.count == 0


def test_async_api_rejects_before_any_sql(database_url: sa.URL, engine: sa.Engine) -> None:
    async def run() -> tuple[int, list[str]]:
        aengine = create_async_engine(async_url(database_url))
        counter = StatementCounter(aengine.sync_engine)
        messages = []
        try:
            amgr = ProjectWorkspaceManager(aengine, ALEMBIC_INI)
            with counter, CheckoutCounter(aengine.sync_engine) as checkouts:
                for project_id, _ in ADVERSARIAL_IDS:
                    with pytest.raises(InvalidProjectId) as info:
                        await amgr.ensure_workspace_exists(project_id)
                    messages.append(str(info.value))
                    with pytest.raises(InvalidProjectId):
                        await amgr.drop_workspace(project_id)
            return counter.count + checkouts.count, messages
        finally:
            await aengine.dispose()

    sent, messages = asyncio.run(run())
    assert sent == 0
    for (_, rule), message in zip(ADVERSARIAL_IDS, messages, strict=True):
        assert rule in message and "\n" not in message


# ------------------------------------------------------------------------ CLI


@pytest.fixture
def prepared(manager: WorkspaceManager) -> Iterator[WorkspaceManager]:
    """A database with the registry and one project, so 'unchanged' has something to compare."""
    manager.ensure("kept")
    yield manager


def test_cli_rejects_every_adversarial_id(prepared: WorkspaceManager, url_string: str) -> None:
    before = database_state(prepared.engine)
    for project_id, rule in ADVERSARIAL_IDS:
        # "--" ends the options, so ids like "-x" and "--" reach the command as arguments
        for command in (
            ["ensure", "--", "kept", project_id],
            ["ensure", "--json", "--", project_id],
            ["status", "--", project_id],
        ):
            result = run_cli("--database-url", url_string, "-c", str(ALEMBIC_INI), *command)
            line = assert_one_line_error(result, "invalid project id")
            assert rule.replace("\\\\", "\\") in line or rule in line, line
        result = run_cli("--database-url", url_string, "-c", str(ALEMBIC_INI), "drop", "--yes", "--", project_id)
        assert_one_line_error(result, "invalid project id")
    assert database_state(prepared.engine) == before


def test_cli_rejects_ids_without_touching_the_database() -> None:
    """Against a URL nothing listens on, the id error wins: no connection was even attempted."""
    url = "postgresql://nobody:secret@127.0.0.1:1/nothing"
    for project_id, rule in ADVERSARIAL_IDS[:10]:
        result = run_cli("--database-url", url, "-c", str(ALEMBIC_INI), "ensure", "--", project_id)
        assert_one_line_error(result, "invalid project id", rule)


# ---------------------------------------------------------- bad configuration
def test_unreachable_database(engine: sa.Engine) -> None:
    for url in ("postgresql://app@127.0.0.1:1/app", "postgresql://app@/app?host=/nonexistent-socket-dir"):
        line = assert_one_line_error(run_cli("--database-url", url, "-c", str(ALEMBIC_INI), "ensure", "demo"))
        assert "database connection failed" in line
        assert "--database-url" in line  # says what to do
    with pytest.raises(DatabaseUnavailable) as info:
        WorkspaceManager(sa.create_engine("postgresql+psycopg2://app@127.0.0.1:1/app"), ALEMBIC_INI).ensure("demo")
    assert "\n" not in str(info.value)


def test_not_a_database_url() -> None:
    for url in ("not a url", "mysql://app@localhost/app", "sqlite:///x.db"):
        line = assert_one_line_error(run_cli("--database-url", url, "-c", str(ALEMBIC_INI), "ensure", "demo"))
        assert "URL" in line or "PostgreSQL" in line


def test_missing_alembic_ini(engine: sa.Engine, url_string: str, tmp_path: Path) -> None:
    before = database_state(engine)
    missing = tmp_path / "nowhere" / "alembic.ini"
    line = assert_one_line_error(run_cli("--database-url", url_string, "-c", str(missing), "ensure", "demo"))
    assert "alembic config not found" in line and "--config" in line
    with pytest.raises(ConfigurationError, match="alembic config not found"):
        WorkspaceManager(engine, missing)
    assert database_state(engine) == before


def test_chain_with_two_heads(engine: sa.Engine, url_string: str, chain_builder: ChainBuilder) -> None:
    chain_builder.add("r1", "op.create_table('a', sa.Column('id', sa.Integer, primary_key=True))")
    chain_builder.add("r2a", "op.create_table('b', sa.Column('id', sa.Integer, primary_key=True))", down_revision="r1")
    chain_builder.add("r2b", "op.create_table('c', sa.Column('id', sa.Integer, primary_key=True))", down_revision="r1")
    before = database_state(engine)
    line = assert_one_line_error(run_cli("--database-url", url_string, "-c", str(chain_builder.ini), "ensure", "demo"))
    assert "2 heads" in line and "alembic merge heads" in line
    with pytest.raises(ConfigurationError, match="2 heads"):
        WorkspaceManager(engine, chain_builder.ini)
    assert database_state(engine) == before


def test_registry_written_by_a_newer_tool(prepared: WorkspaceManager, url_string: str) -> None:
    with prepared.engine.begin() as conn:
        conn.execute(sa.text("UPDATE project_registry.workspace_registry_version SET version_num = 'r9999_future'"))
    cache.clear()
    before = database_state(prepared.engine)
    line = assert_one_line_error(run_cli("--database-url", url_string, "-c", str(ALEMBIC_INI), "ensure", "fresh"))
    assert "newer workspace-tool" in line and "upgrade workspace-tool" in line
    for command in (["status"], ["list"], ["init"], ["drop", "kept", "--yes"]):
        cache.clear()
        assert_one_line_error(run_cli("--database-url", url_string, "-c", str(ALEMBIC_INI), *command), "newer")
    cache.clear()
    mgr = WorkspaceManager(prepared.engine, ALEMBIC_INI)
    with pytest.raises(RegistryError, match="newer workspace-tool"):
        mgr.ensure("fresh")
    assert database_state(prepared.engine) == before


def test_schema_at_an_unknown_revision(prepared: WorkspaceManager, url_string: str) -> None:
    with prepared.engine.begin() as conn:
        conn.execute(sa.text("UPDATE project_kept.alembic_version SET version_num = 'f00d_from_the_future'"))
    cache.clear()
    before = database_state(prepared.engine)
    line = assert_one_line_error(run_cli("--database-url", url_string, "-c", str(ALEMBIC_INI), "ensure", "kept"))
    assert "'f00d_from_the_future'" in line and "deploy the code that wrote it" in line
    with pytest.raises(UnknownRevision, match="nothing was changed"):
        WorkspaceManager(prepared.engine, ALEMBIC_INI).ensure("kept")
    assert database_state(prepared.engine) == before
