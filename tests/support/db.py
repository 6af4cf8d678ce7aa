"""The test database as a test sees it: resetting it between tests, counting statements, reading schemas,
catalogs, registry rows and backends."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL

from workspace_tool.managers import cache
from workspace_tool.naming import is_project_schema
from workspace_tool.registry.inventory import read_versions
from workspace_tool.schema.catalog import snapshot

EMBEDDED_TEST_DIR = Path(os.environ.get("WORKSPACE_TOOL_TEST_PGDATA", "/tmp/workspace-tool-test-pgdata"))


def reset_database(engine: sa.Engine) -> None:
    """Drop every project schema, the registry, the warm pool's spares and quarantined copies (`drop
    --retain`); forget the process caches."""
    with engine.begin() as conn:
        schemas = (
            conn.execute(
                sa.text(
                    "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'project\\_%' OR nspname LIKE 'public_twin%' "
                    "OR nspname LIKE 'workspace\\_spare\\_%' OR nspname LIKE 'dropped\\_%'"
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
    """Schemas, registry rows and roles (but the roles tests make): what a bad command must leave as it was."""
    with engine.connect() as conn:
        schemas = conn.execute(sa.text("SELECT nspname FROM pg_namespace ORDER BY 1")).scalars().all()
        has_registry = conn.execute(sa.text("SELECT to_regclass('project_registry.workspace_config')")).scalar()
        rows = (
            [tuple(r) for r in conn.execute(sa.text("SELECT * FROM project_registry.workspace_config ORDER BY 1"))]
            if has_registry
            else []
        )
        # roles are the cluster's: those other tests make meanwhile (all named wst_...) are not this one's
        roles = (
            conn.execute(sa.text("SELECT rolname FROM pg_roles WHERE rolname NOT LIKE 'wst\\_%' ORDER BY 1"))
            .scalars()
            .all()
        )
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
