"""The models describe exactly the schema the chain builds at head."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.migration import MigrationContext
from pgvector.sqlalchemy import Vector
from support.chains import ALEMBIC_INI

from migrations.models import Base, CodeChunk, metadata
from workspace_tool import WorkspaceManager
from workspace_tool.authoring import compare_schema
from workspace_tool.chain.autogenerate import compare_server_default
from workspace_tool.schema import catalog
from workspace_tool.sql import search_path_sql


def _copy(change: Callable[[sa.MetaData], Any]) -> sa.MetaData:
    copied = sa.MetaData()
    for table in metadata.sorted_tables:
        table.to_metadata(copied)
    change(copied)
    return copied


def _kinds(diffs: list[Any]) -> list[str]:
    """('add_column', ...) -> 'add_column'; a list of modify_* tuples -> their kinds."""
    kinds: list[str] = []
    for diff in diffs:
        kinds += [d[0] for d in diff] if isinstance(diff, list) else [diff[0]]
    return kinds


def test_metadata_is_the_declarative_base_s() -> None:
    assert metadata is Base.metadata
    assert set(metadata.tables) == {
        "repositories",
        "code_files",
        "change_events",
        "embedding_metadata",
        "code_chunks",
        "indexing_jobs",
    }
    assert all(table.schema is None for table in metadata.tables.values())
    assert isinstance(CodeChunk.__table__.c.embedding.type, Vector)
    assert CodeChunk.__table__.c.embedding.type.dim == 768


def test_autogenerate_finds_no_difference_at_head(manager: WorkspaceManager) -> None:
    schema = manager.ensure("models-head")
    extension_schema = manager.bootstrap()
    with manager.engine.connect() as conn:
        assert compare_schema(conn, schema, extension_schema, config=ALEMBIC_INI) == []


def test_models_build_the_same_catalog_as_the_chain(manager: WorkspaceManager) -> None:
    """Stricter than autogenerate (which ignores index options, predicates and CHECKs): create_all from
    the models gives, object for object, the catalog the chain gives."""
    chain_schema = manager.ensure("from-chain")
    extension_schema = manager.bootstrap()
    models_schema = "project_from_models"
    with manager.engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {models_schema}"))
        conn.execute(sa.text(search_path_sql(models_schema, extension_schema)))
        metadata.create_all(conn.execution_options(schema_translate_map={None: models_schema}))
    with manager.engine.connect() as conn:
        from_chain = catalog.snapshot(conn, chain_schema, include_version=False)
        from_models = catalog.snapshot(conn, models_schema, include_version=False)
    from_chain["relations"].pop("alembic_version")
    from_chain["indexes"].pop("alembic_version_pkc")
    for name in [c for c in from_chain["constraints"] if c.startswith("alembic_version.")]:
        del from_chain["constraints"][name]
    assert catalog.diff(_not_null_by_column(from_chain), _not_null_by_column(from_models)) == []
    hnsw = from_models["indexes"]["ix_code_chunks_embedding_hnsw"]["definition"]
    assert "USING hnsw (embedding " in hnsw
    assert "vector_cosine_ops) WITH (m='16', ef_construction='64')" in hnsw
    assert "WHERE" in from_models["indexes"]["ix_indexing_jobs_active"]["definition"]
    assert "created_at DESC" in from_models["indexes"]["ix_indexing_jobs_created_at"]["definition"]


def _not_null_by_column(snapshot: dict[str, Any]) -> dict[str, Any]:
    """PostgreSQL 18 records NOT NULL as constraints named after the column at creation time; a renamed
    column (0004: change_events.file_path -> path) keeps the old name. Key them by what they constrain."""
    constraints = {}
    for key, constraint in snapshot["constraints"].items():
        if constraint["type"] == "n":
            key = f"{key.split('.')[0]}.{constraint['definition']}"
        constraints[key] = constraint
    return {**snapshot, "constraints": constraints}


def _drop_index(name: str) -> Callable[[sa.MetaData], None]:
    def change(md: sa.MetaData) -> None:
        for table in md.tables.values():
            for index in list(table.indexes):
                if index.name == name:
                    table.indexes.remove(index)

    return change


def _set_default(table: str, column: str, default: Any) -> Callable[[sa.MetaData], None]:
    def change(md: sa.MetaData) -> None:
        md.tables[table].c[column].server_default = None if default is None else sa.DefaultClause(default)

    return change


def _set_type(table: str, column: str, type_: Any) -> Callable[[sa.MetaData], None]:
    def change(md: sa.MetaData) -> None:
        md.tables[table].c[column].type = type_

    return change


def _add_column(md: sa.MetaData) -> None:
    md.tables["code_files"].append_column(sa.Column("encoding", sa.String(20)))


REAL_DIFFERENCES: list[tuple[str, Callable[[sa.MetaData], None], str]] = [
    ("string default", _set_default("code_files", "language", "other"), "modify_default"),
    ("removed default", _set_default("code_files", "language", None), "modify_default"),
    ("quoted default", _set_default("indexing_jobs", "status", "running"), "modify_default"),
    ("number default", _set_default("embedding_metadata", "dimensions", sa.text("384")), "modify_default"),
    ("volatile default", _set_default("repositories", "created_at", sa.text("clock_timestamp()")), "modify_default"),
    ("uuid default", _set_default("repositories", "id", sa.text("uuidv7()")), "modify_default"),
    ("boolean default", _set_default("repositories", "is_active", sa.false()), "modify_default"),
    ("vector dimension", _set_type("code_chunks", "embedding", Vector(384)), "modify_type"),
    ("varchar length", _set_type("repositories", "name", sa.String(100)), "modify_type"),
    ("new column", _add_column, "add_column"),
    ("missing index", _drop_index("ix_code_files_content_hash"), "remove_index"),
]


def test_real_differences_are_reported(manager: WorkspaceManager) -> None:
    schema = manager.ensure("models-diff")
    extension_schema = manager.bootstrap()
    with manager.engine.connect() as conn:
        for label, change, kind in REAL_DIFFERENCES:
            assert _kinds(compare_schema(conn, schema, extension_schema, _copy(change))) == [kind], label


@pytest.mark.parametrize(
    ("column", "default", "differs"),
    [
        ("language", "unknown", False),  # 'unknown'::character varying in the catalog
        ("language", sa.text("'unknown'::character varying"), False),
        ("language", "unknown ", True),
        ("language", sa.text("'unknown'::text"), True),
    ],
)
def test_server_defaults_compare_as_postgresql_stores_them(
    manager: WorkspaceManager, column: str, default: Any, differs: bool
) -> None:
    schema = manager.ensure("models-defaults")
    extension_schema = manager.bootstrap()
    md = _copy(_set_default("code_files", column, default))
    with manager.engine.connect() as conn, conn.begin():
        conn.execute(sa.text(search_path_sql(schema, extension_schema)))
        inspected = conn.execute(
            sa.text(
                "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d JOIN pg_attribute a "
                "ON a.attrelid = d.adrelid AND a.attnum = d.adnum WHERE d.adrelid = 'code_files'::regclass "
                "AND a.attname = :c"
            ),
            {"c": column},
        ).scalar()
        assert inspected == "'unknown'::character varying"
        context = MigrationContext.configure(conn)
        metadata_column = md.tables["code_files"].c[column]
        assert isinstance(metadata_column.server_default, sa.DefaultClause)
        rendered = metadata_column.server_default.arg
        rendered = rendered if isinstance(rendered, str) else str(rendered)
        result = compare_server_default(context, metadata_column, metadata_column, inspected, None, rendered)
        assert result is differs
