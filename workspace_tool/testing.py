"""pytest plugin: a fresh project schema per test, on a real PostgreSQL, dropped afterwards.

pytest loads it by itself wherever workspace-tool is installed (a ``pytest11`` entry point named
``workspace_tool.testing``): it only adds options and fixtures, and imports nothing but pytest and the
standard library until a fixture is used (a configured URL is checked at start, by SQLAlchemy's parser).
``-p no:workspace_tool.testing`` turns it off; ``-p workspace_tool.testing`` or ``pytest_plugins =
["workspace_tool.testing"]`` load it when plugin autoloading is off (PYTEST_DISABLE_PLUGIN_AUTOLOAD), and
are harmless otherwise (see the README, "Testing your application").

Fixtures (all namespaced ``workspace_*``):

- ``workspace_server_url`` (session): the server, from ``--workspace-url`` / ``$WORKSPACE_TOOL_TEST_DATABASE_URL``
  / the ``workspace_url`` ini option, else the embedded PostgreSQL (the ``[embedded]`` extra);
- ``workspace_database_url`` (session): a database created on that server for this session (one per
  pytest-xdist worker), dropped at the end;
- ``workspace_engine``, ``workspace_manager``, ``workspace_async_manager`` (session) on that database;
- ``workspace_project`` (function): a freshly provisioned project, dropped after the test, failed or not;
- ``workspace_project_factory`` (function): ``make(name=None)`` for several projects in one test.

Nothing here touches a database or imports SQLAlchemy until a fixture is used.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine
    from sqlalchemy.engine import URL
    from sqlalchemy.orm import Session

    from workspace_tool.managers.async_manager import ProjectWorkspaceManager
    from workspace_tool.managers.sync_manager import WorkspaceManager

URL_ENV = "WORKSPACE_TOOL_TEST_DATABASE_URL"
CONFIG_ENV = "WORKSPACE_TOOL_CONFIG"  # the library's own (workspace_tool.chain.CONFIG_ENV)
DATABASE_PREFIX = "workspace_test"
# With no server configured and without the embedded extra, what to do instead of installing it.
NAME_A_SERVER = f"or name a test server: --workspace-url URL, ${URL_ENV} or workspace_url in the ini file"


# ------------------------------------------------------------------ options
@dataclass(frozen=True)
class Setting:
    """One option's value and where it came from (named in error messages)."""

    value: str
    source: str
    base: Path | None = None  # what a relative path is relative to: the ini file's directory, else the cwd


@dataclass(frozen=True)
class Settings:
    url: Setting | None  # None: the embedded server
    config: Setting
    embedded_dir: Path | None  # None: a temporary data directory, stopped and deleted when pytest exits


_SETTINGS = pytest.StashKey[Settings]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("workspace-tool", "workspace-tool: a fresh project schema per test")
    group.addoption(
        "--workspace-url",
        metavar="URL",
        help=f"PostgreSQL server to test on; a database is created on it for the session and dropped after "
        f"(default: ${URL_ENV}, the workspace_url ini option, else the embedded server)",
    )
    group.addoption(
        "--workspace-config",
        metavar="PATH",
        help=f"alembic.ini of the project chain (default: ${CONFIG_ENV}, workspace_config, <rootdir>/alembic.ini)",
    )
    group.addoption(
        "--workspace-embedded-dir",
        metavar="DIR",
        help="data directory of the embedded server, reused across runs and left running "
        "(default: a temporary one, stopped and deleted when pytest exits)",
    )
    parser.addini("workspace_url", "PostgreSQL server to test on (see --workspace-url)", default="")
    parser.addini("workspace_config", "alembic.ini of the project chain, relative to this file", default="")
    parser.addini("workspace_embedded_dir", "embedded server data directory, relative to this file", default="")


def _setting(config: pytest.Config, name: str, env: str | None) -> Setting | None:
    """Command line, then environment, then ini file; None when none is set."""
    option = config.getoption(name)
    if option:
        return Setting(str(option), "--" + name.replace("_", "-"))
    if env and os.environ.get(env):
        return Setting(os.environ[env], "$" + env)
    value = str(config.getini(name) or "")
    if value:
        inipath = config.inipath
        return Setting(value, f"{name} in {inipath.name if inipath else 'the ini file'}", inipath and inipath.parent)
    return None


def _path(setting: Setting) -> Path:
    path = Path(setting.value).expanduser()
    return (setting.base / path if setting.base else path).absolute()


def pytest_configure(config: pytest.Config) -> None:
    """Read and check the options (no database is touched): a bad one stops the run with one line."""
    url = _setting(config, "workspace_url", URL_ENV)
    if url is not None:
        from workspace_tool.errors import WorkspaceError
        from workspace_tool.urls import parse

        try:
            parse(url.value)
        except WorkspaceError as exc:
            raise pytest.UsageError(f"{url.source}: {exc}") from None
    config_setting = _setting(config, "workspace_config", CONFIG_ENV)
    if config_setting is None:
        config_setting = Setting(str(config.rootpath / "alembic.ini"), "<rootdir>/alembic.ini")
    else:
        path = _path(config_setting)
        if not path.is_file():
            raise pytest.UsageError(f"{config_setting.source}: alembic config not found: {path}")
        config_setting = Setting(str(path), config_setting.source)
    embedded = _setting(config, "workspace_embedded_dir", None)
    config.stash[_SETTINGS] = Settings(
        url=url,
        config=config_setting,
        embedded_dir=_path(embedded) if embedded else None,
    )


def _settings(request: pytest.FixtureRequest) -> Settings:
    return request.config.stash[_SETTINGS]


@contextlib.contextmanager
def _test_errors() -> Iterator[None]:
    """A WorkspaceError in a fixture: the test errors with its one-line message, no traceback."""
    from workspace_tool.errors import WorkspaceError

    try:
        yield
    except WorkspaceError as exc:
        raise pytest.fail.Exception(str(exc), pytrace=False) from None


def _config_path(settings: Settings) -> str:
    if not Path(settings.config.value).is_file():
        from workspace_tool.errors import ConfigurationError

        raise ConfigurationError(
            f"alembic config not found: {settings.config.value} ({settings.config.source}); set workspace_config "
            "in pytest.ini / pyproject.toml, or pass --workspace-config PATH"
        )
    return settings.config.value


# ------------------------------------------------------------------ database
@contextlib.contextmanager
def fresh_database(
    server: URL, label: str, *, source: str = "the server URL", prefix: str = DATABASE_PREFIX
) -> Iterator[URL]:
    """Create a database named ``<prefix>_<label>_<random>`` on ``server``, yield its URL, and drop it
    (closing its connections first) when the block ends. ``source`` names the URL in errors."""
    import sqlalchemy as sa

    from workspace_tool.dberrors import first_line
    from workspace_tool.errors import DatabaseUnavailable
    from workspace_tool.urls import redact, redact_text, url_secrets

    name = f"{prefix}_{label}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.DBAPIError as exc:
        detail = redact_text(first_line(exc), *url_secrets(server))
        raise DatabaseUnavailable(
            f"could not create a test database on {redact(server)} ({source}): {detail}; check that the server "
            "is up and the role may CREATE DATABASE"
        ) from None
    try:
        yield server.set(database=name)
    finally:
        with admin.connect() as conn:
            conn.execute(
                sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"), {"d": name}
            )
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def _worker_label(config: pytest.Config) -> str:
    """pytest-xdist's worker id (gw0, gw1...), or 'main' without xdist."""
    workerinput = getattr(config, "workerinput", None)
    worker = str(workerinput["workerid"]) if workerinput else "main"
    return re.sub(r"[^a-z0-9]+", "_", worker.lower())


@pytest.fixture(scope="session")
def workspace_server_url(request: pytest.FixtureRequest) -> URL:
    """The PostgreSQL server (its URL, psycopg2 driver): the configured URL, else the embedded server.

    The embedded server runs in ``workspace_embedded_dir`` (reused, left running) or in a new temporary
    directory (stopped and deleted when pytest exits). Override this fixture to bring your own server."""
    from workspace_tool import embedded
    from workspace_tool.urls import sync_url

    settings = _settings(request)
    if settings.url is not None:
        return sync_url(settings.url.value)
    with _test_errors():
        if settings.embedded_dir is not None:
            return sync_url(embedded.start(settings.embedded_dir, keep_running=True, otherwise=NAME_A_SERVER))
        # Not under pytest's basetemp: as root the server runs as another user, and every new pytest
        # process makes /tmp/pytest-of-<user> private again (mode 0700), cutting that user off.
        return sync_url(embedded.start_temporary(otherwise=NAME_A_SERVER))


@pytest.fixture(scope="session")
def workspace_database_url(request: pytest.FixtureRequest, workspace_server_url: URL) -> Iterator[URL]:
    """A database created on the server for this session (per xdist worker), dropped at the end."""
    url = _settings(request).url
    source = url.source if url is not None else "the embedded server"
    with _test_errors(), fresh_database(workspace_server_url, _worker_label(request.config), source=source) as database:
        yield database


@pytest.fixture(scope="session")
def workspace_engine(workspace_database_url: URL) -> Iterator[Engine]:
    """A synchronous Engine (psycopg2) on the session's database."""
    import sqlalchemy as sa

    engine = sa.create_engine(workspace_database_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def workspace_manager(request: pytest.FixtureRequest, workspace_engine: Engine) -> Iterator[WorkspaceManager]:
    """A WorkspaceManager on the session's database and the configured chain. With a warm pool configured
    (``workspace_pool_size`` in its alembic.ini), the pool is filled once here and refilled in the
    background: each test's project is then a spare renamed (about a millisecond) when one is ready."""
    from workspace_tool import spares
    from workspace_tool.managers.sync_manager import WorkspaceManager

    with _test_errors():
        manager = WorkspaceManager(workspace_engine, _config_path(_settings(request)), refill=True)
        if manager.refiller is not None:
            spares.fill(workspace_engine, manager.chain, jobs=1)
    yield manager
    manager.close()


@pytest.fixture(scope="session")
def workspace_async_manager(request: pytest.FixtureRequest, workspace_database_url: URL) -> ProjectWorkspaceManager:
    """The async manager (asyncpg) on the session's database. Its engine has no pool (NullPool), so it
    works from any event loop: pytest-asyncio's loop per test, anyio's, or ``asyncio.run``."""
    try:
        import asyncpg  # noqa: F401
        import greenlet  # noqa: F401
    except ImportError as exc:
        raise pytest.fail.Exception(
            f"workspace_async_manager needs {exc.name}: pip install 'workspace-tool[async]'", pytrace=False
        ) from None
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    from workspace_tool.managers.async_manager import ProjectWorkspaceManager
    from workspace_tool.urls import async_url

    engine = create_async_engine(async_url(workspace_database_url), poolclass=NullPool)
    with _test_errors():
        return ProjectWorkspaceManager(engine, _config_path(_settings(request)))


# ------------------------------------------------------------------ projects
@dataclass(frozen=True)
class WorkspaceProject:
    """A project provisioned for one test: its id, its schema, and the manager that made it."""

    id: str
    schema: str
    manager: WorkspaceManager

    def connect(self) -> contextlib.AbstractContextManager[Connection]:
        """``with workspace_project.connect() as conn:`` a Connection on the project's schema."""
        return self.manager.connect(self.id)

    def session(self, **session_options: Any) -> contextlib.AbstractContextManager[Session]:
        """``with workspace_project.session() as s:`` an ORM Session on the project's schema."""
        return self.manager.session(self.id, **session_options)


def unique_project_id(label: str) -> str:
    """A valid project id, new every call, readable from ``label`` (a test name): ``test_search[a-1]``
    gives ``search-a-1-<8 hex digits>``."""
    from workspace_tool.naming import MAX_PROJECT_ID_LENGTH

    suffix = uuid.uuid4().hex[:8]
    words = re.findall(r"[a-z0-9]+", label.lower())
    if words[:1] == ["test"]:
        words = words[1:]
    stem = "-".join(words)[: MAX_PROJECT_ID_LENGTH - len(suffix) - 1].strip("-")
    return f"{stem}-{suffix}" if stem else suffix


ProjectFactory = Callable[..., WorkspaceProject]


@pytest.fixture
def workspace_project_factory(
    request: pytest.FixtureRequest, workspace_manager: WorkspaceManager
) -> Iterator[ProjectFactory]:
    """``make(name=None)`` provisions a new project (named after ``name`` or the test, made unique) at the
    chain's head; every project made is dropped after the test, whether it passed or not."""
    made: list[str] = []

    def make(name: str | None = None) -> WorkspaceProject:
        project_id = unique_project_id(name or request.node.name)
        made.append(project_id)
        with _test_errors():
            schema = workspace_manager.ensure(project_id)
        return WorkspaceProject(project_id, schema, workspace_manager)

    yield make
    with _test_errors():
        for project_id in reversed(made):
            workspace_manager.drop(project_id)


@pytest.fixture
def workspace_project(workspace_project_factory: ProjectFactory) -> WorkspaceProject:
    """A project provisioned for this test at the chain's head (compiled SQL: milliseconds; a spare of the
    warm pool where one is configured), dropped after."""
    return workspace_project_factory()
