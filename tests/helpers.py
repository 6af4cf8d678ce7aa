"""What the tests share, beside the fixtures of conftest.py: paths, the example chain's revisions, reading
the database's state, building tiny chains, running the CLI and Alembic, and sessions held on advisory locks.
A test module imports them from here (``from helpers import ...``), never from another test module."""

from __future__ import annotations

import atexit
import math
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from click.testing import CliRunner, Result
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from migrations.models import CodeChunk, CodeFile, Repository
from workspace_tool.chain import Chain
from workspace_tool.chain.index import CACHE_ENV
from workspace_tool.cli import main
from workspace_tool.fleet.reader import read_versions
from workspace_tool.managers import cache
from workspace_tool.naming import is_project_schema
from workspace_tool.schema.catalog import snapshot

# The graph records (workspace_tool/chain/index.py) of the run's many temporary chains go to a directory of
# the run's own (its subprocesses too), not the user's cache.
if CACHE_ENV not in os.environ:
    os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="wst-test-chains-")
    atexit.register(shutil.rmtree, os.environ[CACHE_ENV], True)

# -------------------------------------------------------- paths and the example application's chain
ROOT = Path(__file__).resolve().parents[1]
ALEMBIC_INI = ROOT / "alembic.ini"
EMBEDDED_TEST_DIR = Path(os.environ.get("WORKSPACE_TOOL_TEST_PGDATA", "/tmp/workspace-tool-test-pgdata"))
CLI = [sys.executable, "-c", "from workspace_tool.cli import main; main()"]  # as the workspace-tool script
ALEMBIC = str(Path(sys.executable).with_name("alembic"))
MAIN_REVISIONS = Chain.load(ALEMBIC_INI).revisions
HEAD = MAIN_REVISIONS[-1]
TABLES = {
    "alembic_version",
    "repositories",
    "code_files",
    "code_chunks",
    "change_events",
    "embedding_metadata",
    "indexing_jobs",
}


# ------------------------------------------------------------------- the database as a test sees it
def reset_database(engine: sa.Engine) -> None:
    """Drop every project schema, the registry and the warm pool's spares; forget the process caches."""
    with engine.begin() as conn:
        schemas = (
            conn.execute(
                sa.text(
                    "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'project\\_%' OR nspname LIKE 'public_twin%' "
                    "OR nspname LIKE 'workspace\\_spare\\_%'"
                )
            )
            .scalars()
            .all()
        )
        conn.execute(sa.text("DROP TABLE IF EXISTS public.repositories, public.code_files CASCADE"))
    # A few schemas per transaction: each DROP ... CASCADE locks every object of its schema until the commit,
    # and the server's lock table (shared by the test run's workers) holds 64 per connection by default.
    for start in range(0, len(schemas), 10):
        with engine.begin() as conn:
            for schema in schemas[start : start + 10]:
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    cache.clear()


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


def schema_tables(engine: sa.Engine, schema: str) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(sa.text("SELECT tablename FROM pg_tables WHERE schemaname = :s"), {"s": schema}).scalars()
        )


def schema_version(engine: sa.Engine, schema: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(sa.text(f'SELECT version_num FROM "{schema}".alembic_version')).scalar()


def schema_exists(engine: sa.Engine, schema: str) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.execute(
                sa.text("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :s)"), {"s": schema}
            ).scalar()
        )


def columns(engine: sa.Engine, schema: str, table: str) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = :s "
                    "AND table_name = :t ORDER BY ordinal_position"
                ),
                {"s": schema, "t": table},
            ).scalars()
        )


def catalog(engine: sa.Engine, schema: str) -> dict[str, Any]:
    with engine.connect() as conn:
        return snapshot(conn, schema)


def registry_row(engine: sa.Engine, project_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT * FROM project_registry.workspace_config WHERE project_id = :p"), {"p": project_id}
        ).first()
    return None if row is None else dict(row._mapping)


def registry_state(engine: sa.Engine, project_id: str) -> Any:
    """The row's (revision, status, last_error)."""
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT revision, status, last_error FROM project_registry.workspace_config WHERE project_id = :p"),
            {"p": project_id},
        ).one()


def assert_consistent(engine: sa.Engine) -> dict[str, str | None]:
    """Every project schema has a registry row naming its revision, and every row has its schema.
    Returns schema -> revision."""
    with engine.connect() as conn:
        names = conn.execute(sa.text("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'project\\_%'")).scalars()
        schemas = sorted(n for n in names if is_project_schema(n))
        versions = read_versions(conn, schemas)
        rows = (
            {
                r.schema_name: r.revision
                for r in conn.execute(sa.text("SELECT schema_name, revision FROM project_registry.workspace_config"))
            }
            if conn.execute(sa.text("SELECT to_regclass('project_registry.workspace_config')")).scalar()
            else {}
        )
    assert set(rows) == set(schemas), (
        f"schemas without rows: {set(schemas) - set(rows)}; rows without schemas: {set(rows) - set(schemas)}"
    )
    for schema in schemas:
        assert versions.get(schema) == rows[schema], (schema, versions.get(schema), rows[schema])
    return {s: versions.get(s) for s in schemas}


def database_state(engine: sa.Engine) -> tuple[list[str], list[tuple[Any, ...]], list[str]]:
    """Schemas, registry rows and roles: what a bad command must leave as it was."""
    with engine.connect() as conn:
        schemas = conn.execute(sa.text("SELECT nspname FROM pg_namespace ORDER BY 1")).scalars().all()
        has_registry = conn.execute(sa.text("SELECT to_regclass('project_registry.workspace_config')")).scalar()
        rows = (
            [tuple(r) for r in conn.execute(sa.text("SELECT * FROM project_registry.workspace_config ORDER BY 1"))]
            if has_registry
            else []
        )
        roles = conn.execute(sa.text("SELECT rolname FROM pg_roles ORDER BY 1")).scalars().all()
    return list(schemas), rows, list(roles)


def bootstrap_state(url: URL) -> tuple[int, list[str], list[str]]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        extensions = conn.execute(sa.text("SELECT count(*) FROM pg_extension WHERE extname = 'vector'")).scalar()
        versions = list(
            conn.execute(sa.text("SELECT version_num FROM project_registry.workspace_registry_version")).scalars()
        )
        projects = list(
            conn.execute(sa.text("SELECT project_id FROM project_registry.workspace_config ORDER BY 1")).scalars()
        )
    engine.dispose()
    return int(extensions or 0), versions, projects


def backends(engine: sa.Engine) -> int:
    """Client connections to the test database other than the one asking."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                )
            ).scalar_one()
        )


# ----------------------------------------------------------------- what a test puts in the database
def make_schema_by_hand(engine: sa.Engine, schema: str, *tables: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
        for table in tables:
            conn.execute(sa.text(f"CREATE TABLE {schema}.{table} (id int PRIMARY KEY, note text)"))
            conn.execute(sa.text(f"INSERT INTO {schema}.{table} VALUES (1, 'kept')"))


def add_rows(engine: sa.Engine, project_id: str, *names: str) -> None:
    with engine.begin() as conn:
        for name in names:
            conn.execute(sa.text(f'INSERT INTO "project_{project_id}".items (name) VALUES (:n)'), {"n": name})


PUBLIC_TWINS = """
CREATE TABLE public.repositories (id serial PRIMARY KEY, name integer, owner text NOT NULL, path varchar(7));
CREATE TABLE public.code_files (id bigint PRIMARY KEY, language text DEFAULT 'cobol', blob bytea,
                                content_hash text);
INSERT INTO public.repositories (name, owner, path) VALUES (1, 'alice', '/a'), (2, 'bob', NULL);
INSERT INTO public.code_files VALUES (10, 'fortran', '\\x00ff'::bytea, 'h1'), (11, NULL, NULL, NULL);
"""


def make_public_twins(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(PUBLIC_TWINS)


def public_state(engine: sa.Engine) -> dict[str, Any]:
    """The public schema's catalog and the exact text of every row of the twins."""
    with engine.connect() as conn:
        rows = {
            table: conn.execute(sa.text(f"SELECT t::text FROM public.{table} t ORDER BY id")).scalars().all()
            for table in ("repositories", "code_files")
        }
        from workspace_tool.schema.catalog import snapshot

        return {"catalog": snapshot(conn, "public", include_version=False), "rows": rows}


# -------------------------------------------------------------------------------------- tiny chains
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


def with_options(ini: Path, **options: str) -> Path:
    """Set workspace_* options in an alembic.ini's [alembic] section; returns the path."""
    text = ini.read_text()
    for name, value in options.items():
        text = re.sub(rf"(?m)^{name} = .*\n", "", text)
        text = text.replace("[alembic]\n", f"[alembic]\n{name} = {value}\n", 1)
    ini.write_text(text)
    Chain.forget(ini)
    return ini


def truncated_chain(root: Path, upto: str) -> Path:
    """A copy of the main chain holding only the revisions up to ``upto``; returns its alembic.ini."""
    builder = ChainBuilder(root)
    for rev in MAIN_REVISIONS[: MAIN_REVISIONS.index(upto) + 1]:
        shutil.copy(ROOT / "migrations" / "versions" / f"{rev}.py", builder.versions / f"{rev}.py")
    return builder.ini


# A revision creating items (id, name), and one adding a unique index on items.name (it fails where names repeat).
ITEMS = """
op.create_table(
    "items",
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
)
"""
UNIQUE = 'op.create_index("ux_items_name", "items", ["name"], unique=True)'


# ---------------------------------------------------------------------- running the CLI and Alembic
def run_cli(*args: str) -> Result:
    """``workspace-tool ARGS`` in this process (an exception the CLI doesn't handle fails the test)."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def assert_one_line_error(result: Result, *fragments: str) -> str:
    """A user error as the CLI must show it: exit 1, nothing on stdout, one `Error: ` line holding the
    fragments, no traceback. Returns the line."""
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def lint(ini: Path, *extra: str) -> Result:
    """``workspace-tool -c INI lint EXTRA``."""
    return CliRunner().invoke(main, ["-c", str(ini), "lint", *extra], catch_exceptions=False)


def psql(url: URL, script: str) -> subprocess.CompletedProcess[str]:
    """psql (the embedded server's) running ``script`` on the database at ``url``, stopping at the first error."""
    from workspace_tool import embedded

    uri = url.set(drivername="postgresql").render_as_string(hide_password=False)
    return subprocess.run(
        [str(embedded.client_bin_dir() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", uri, "-f", "-"],
        input=script,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def run_alembic(
    url: URL, *args: str, ini: Path = ALEMBIC_INI, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The alembic command on ``ini`` with WORKSPACE_TOOL_DATABASE_URL set to ``url`` (and ``env`` besides)."""
    env = {**os.environ, "WORKSPACE_TOOL_DATABASE_URL": url.render_as_string(hide_password=False), **(env or {})}
    return subprocess.run(
        [ALEMBIC, "-c", str(ini), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


# ----------------------------------------------------------------- chunks with embeddings, nearest first
DIMS = 768
NEAREST = 5


def vectors() -> tuple[list[float], list[tuple[int, list[float]]]]:
    """A query vector and 40 chunks at cosine distances increasing with their index (shuffled)."""
    query = [0.0] * DIMS
    query[0] = 1.0
    chunks = []
    for i in range(40):
        angle = math.radians(2 + 2 * i)
        v = [0.0] * DIMS
        v[0], v[i + 1] = math.cos(angle), math.sin(angle)
        chunks.append((i, v))
    random.Random(6).shuffle(chunks)
    return query, chunks


def add_chunks(orm_session: Session | Any) -> None:
    repo = Repository(path="/repo", name="repo")
    code_file = CodeFile(repository=repo, path="/repo/a.py", relative_path="a.py")
    _, chunks = vectors()
    orm_session.add_all(
        [CodeChunk(code_file=code_file, content=f"chunk {i}", embedding=v, token_count=i) for i, v in chunks]
    )


def nearest_statement() -> sa.Select[CodeChunk]:
    query, _ = vectors()
    return sa.select(CodeChunk).order_by(CodeChunk.embedding.cosine_distance(query)).limit(NEAREST)


# ------------------------------------------------------------------ ensure from several processes
def _process_worker(url: str, ini: str, project_id: str, barrier: Any, out: Any) -> None:
    from sqlalchemy.pool import NullPool

    from workspace_tool import WorkspaceManager as Manager

    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        mgr = Manager(engine, ini)
        barrier.wait()
        result = mgr.ensure_detailed(project_id)
        out.put((project_id, result.schema, None, str(result.action)))
    except Exception as exc:  # reported to the parent, which asserts there is none
        out.put((project_id, None, f"{type(exc).__name__}: {exc}", None))
    finally:
        engine.dispose()


def ensure_in_processes(
    url: str, project_ids: list[str], ini: Path = ALEMBIC_INI, *, actions: list[str] | None = None
) -> list[tuple[str, str | None, str | None]]:
    """``ensure`` of each id in its own spawned process, all released together: sorted (project id, schema,
    error) per process; what each ensure did is appended to ``actions`` when given."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(project_ids))
    out = ctx.Queue()
    procs = [ctx.Process(target=_process_worker, args=(url, str(ini), p, barrier, out)) for p in project_ids]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    if actions is not None:
        actions.extend(sorted(str(r[3]) for r in results))
    return sorted(((r[0], r[1], r[2]) for r in results), key=lambda r: (r[0], str(r[1])))


# -------------------------------------------------- concurrency: sessions blocked on advisory locks
WAIT = 30.0  # seconds: generous bounds on waits that normally take milliseconds
GATE = 774_211  # advisory lock key the "slow" revision waits on


class Gate:
    """Holds the advisory lock; ``wait_for(n)`` returns once n backends are blocked on it."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.conn = engine.connect()
        self.conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": GATE})
        self.conn.commit()

    def waiting(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(  # type: ignore[arg-type]
                    sa.text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                        "AND objid = :k AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                    ),
                    {"k": GATE},
                ).scalar()
            )

    def wait_for(self, n: int, limit: float = 60.0) -> int:
        deadline = time.monotonic() + limit
        seen = self.waiting()
        while seen < n and time.monotonic() < deadline:
            time.sleep(0.02)
            seen = self.waiting()
        return seen

    def open(self) -> None:
        self.conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": GATE})
        self.conn.commit()
        self.conn.close()


class Victim(threading.Thread):
    """Runs ``work`` and keeps what it raised."""

    def __init__(self, work: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self.work = work
        self.error: BaseException | None = None
        self.result: object = None

    def run(self) -> None:
        try:
            self.result = self.work()
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self.join(WAIT)
        assert not self.is_alive()


def waiting_on_advisory(admin: sa.Connection, count: int = 1, *victims: Victim) -> list[int]:
    """Pids of sessions in this database blocked on an advisory lock; waits until there are ``count``."""
    deadline = time.monotonic() + WAIT
    while True:
        admin.execute(sa.text("SELECT pg_stat_clear_snapshot()"))  # inside a transaction it is cached
        pids = list(
            admin.execute(
                sa.text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND wait_event_type = 'Lock' AND wait_event = 'advisory' ORDER BY pid"
                )
            ).scalars()
        )
        if len(pids) >= count:
            return pids
        assert time.monotonic() < deadline, f"only {len(pids)} sessions blocked, expected {count}"
        for victim in victims:
            assert victim.is_alive(), f"finished before blocking: {victim.error!r}"
        time.sleep(0.01)


# ------------------------------------------------------------------------ Citus (tests marked citus)
# Session settings as if the role's default were schema-based sharding on (psycopg2: libpq options).
SHARDING_ON = {"options": "-c citus.enable_schema_based_sharding=on"}
SCRATCH_SCHEMAS = r"^(workspace_drift_|workspace_verify_|project_autogen_)"  # reference, verify, autogenerate


def reset_citus(engine: sa.Engine) -> None:
    """On a Citus coordinator: drop every project schema (wherever it lives) and any scratch schema left,
    empty the registry, forget the process caches."""
    with engine.begin() as conn:
        schemas = conn.execute(
            sa.text("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'project\\_%' OR nspname ~ :scratch"),
            {"scratch": SCRATCH_SCHEMAS},
        ).scalars()
        for schema in [s for s in schemas if s != "project_registry"]:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        if conn.execute(sa.text("SELECT to_regclass('project_registry.workspace_config')")).scalar():
            conn.execute(sa.text("DELETE FROM project_registry.workspace_config"))
    cache.clear()


def tenant_schemas(engine: sa.Engine) -> set[str]:
    """The schemas Citus has made tenant schemas (each lives whole on one worker)."""
    with engine.connect() as conn:
        return set(
            conn.execute(
                sa.text("SELECT n.nspname FROM pg_dist_schema s JOIN pg_namespace n ON n.oid = s.schemaid")
            ).scalars()
        )


def on_all_nodes(engine: sa.Engine, sql: str) -> dict[str, str]:
    """'host:port' of every node (coordinator included) -> what ``sql`` (one value) returned there."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT d.nodename || ':' || d.nodeport, r.result FROM run_command_on_all_nodes(:sql) r "
                "JOIN pg_dist_node d ON d.nodeid = r.nodeid"
            ),
            {"sql": sql},
        ).all()
    return {str(r[0]): str(r[1]) for r in rows}


def scratch_leftovers(engine: sa.Engine) -> dict[str, str]:
    """Scratch schemas (reference, verify-fast-path, autogenerate) found on any node: nothing, node by node."""
    found = on_all_nodes(
        engine,
        f"SELECT coalesce(string_agg(nspname, ','), '') FROM pg_namespace WHERE nspname ~ '{SCRATCH_SCHEMAS}'",
    )
    return {node: names for node, names in found.items() if names}
