"""A new schema is built by the chain's plan from base with its history collapsed where that provably changes
nothing (chain/fresh.py): a column's type set where its table is created instead of by a later ALTER (a
table rewrite), and the version row inserted at the target instead of moved revision by revision. Only for a
plan of plain DDL on the tables it creates; anything else is built with its whole history."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from support.chains import ALEMBIC_INI, ChainBuilder
from support.db import StatementCounter, catalog, schema_version

from workspace_tool import WorkspaceManager
from workspace_tool.chain import Chain
from workspace_tool.chain.fresh import collapsed
from workspace_tool.flavor import Flavor
from workspace_tool.schema.catalog import diff
from workspace_tool.schema.migrate import Migration, Sending, migrate

PARENT = """
op.create_table(
    "parents",
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("note", sa.Text),
)
op.create_table(
    "children",
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("parent_id", sa.Integer, sa.ForeignKey("parents.id"), nullable=False),
)
"""
RETYPE_NAME = 'op.alter_column("parents", "name", type_=sa.String(100))'
RETYPE_NOTE = 'op.alter_column("parents", "note", type_=sa.String(20))'
ADD_ROW = "op.execute(\"INSERT INTO parents (id, name) VALUES (1, 'kept')\")"
INDEX_NAME = 'op.create_index("ix_parents_name", "parents", ["name"])'


def _online_catalog(engine: sa.Engine, manager: WorkspaceManager, project_id: str) -> dict[str, object]:
    """The catalog of a schema built through Alembic online, revision by revision: the reference."""
    schema = manager.chain.namespace.schema_for(project_id)
    with engine.connect() as conn:
        how = Sending(manager.chain, Flavor(manager.bootstrap()), online=True)
        migrate(conn, how, Migration(project_id, schema, manager.head))
    return catalog(engine, schema)


def _ensured(engine: sa.Engine, manager: WorkspaceManager, project_id: str) -> tuple[str, str]:
    """A first ensure of ``project_id``: its schema and everything it sent, as one text."""
    with StatementCounter(engine) as counter:
        result = manager.ensure_detailed(project_id)
    assert (result.action, result.path) == ("created", "fast")
    return result.schema, "\n".join(counter.statements)


def test_a_new_schema_gets_its_final_column_types_and_one_version_row_and_equals_the_online_build(
    engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    chain_builder.add("p1", PARENT).add("p2", RETYPE_NAME).add("p3", RETYPE_NOTE)
    manager = WorkspaceManager(engine, chain_builder.ini)
    try:
        schema, sent = _ensured(engine, manager, "fresh")
        assert "ALTER COLUMN" not in sent  # no table rewritten after it was created
        assert "UPDATE alembic_version" not in sent
        assert sent.count("INSERT INTO alembic_version") == 1 and "VALUES ('p3')" in sent
        assert schema_version(engine, schema) == "p3"
        assert diff(_online_catalog(engine, manager, "reference"), catalog(engine, schema)) == []
    finally:
        manager.close()


def test_a_chain_that_writes_rows_is_built_with_its_whole_history(
    engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    chain_builder.add("p1", PARENT).add("p2", ADD_ROW).add("p3", RETYPE_NAME)
    manager = WorkspaceManager(engine, chain_builder.ini)
    try:
        schema, sent = _ensured(engine, manager, "rows")
        assert "ALTER COLUMN name TYPE" in sent  # the row is converted by the ALTER, as revision p3 says
        assert "UPDATE alembic_version SET version_num='p3'" in sent
        with engine.connect() as conn:
            assert conn.execute(sa.text(f"SELECT name FROM {schema}.parents")).scalars().all() == ["kept"]
        assert diff(_online_catalog(engine, manager, "reference"), catalog(engine, schema)) == []
    finally:
        manager.close()


def test_a_table_changed_between_its_creation_and_the_alter_keeps_the_alter(
    engine: sa.Engine, chain_builder: ChainBuilder
) -> None:
    chain_builder.add("p1", PARENT).add("p2", INDEX_NAME).add("p3", RETYPE_NAME)
    manager = WorkspaceManager(engine, chain_builder.ini)
    try:
        schema, sent = _ensured(engine, manager, "indexed")
        assert "ALTER COLUMN name TYPE" in sent  # the index on it is rebuilt by the ALTER: not folded
        assert "UPDATE alembic_version" not in sent  # still plain DDL: the version row is inserted once
        assert diff(_online_catalog(engine, manager, "reference"), catalog(engine, schema)) == []
    finally:
        manager.close()


def test_the_main_chain_builds_a_new_schema_without_rewriting_a_table(engine: sa.Engine) -> None:
    manager = WorkspaceManager(engine, ALEMBIC_INI)
    try:
        schema, sent = _ensured(engine, manager, "main")
        assert "ALTER COLUMN name TYPE" not in sent and "name VARCHAR(255) NOT NULL" in sent
        assert "UPDATE alembic_version" not in sent
        assert schema_version(engine, schema) == manager.head
        assert diff(_online_catalog(engine, manager, "reference"), catalog(engine, schema)) == []
    finally:
        manager.close()


def test_the_range_from_base_keeps_its_history_for_a_schema_that_exists(chain_builder: ChainBuilder) -> None:
    chain_builder.add("p1", PARENT).add("p2", RETYPE_NAME)
    chain = Chain.load(chain_builder.ini)  # plan(None, ...): an existing schema at base (an empty alembic_version)
    assert "ALTER TABLE parents ALTER COLUMN name TYPE VARCHAR(100);" in (chain.plan(None, "p2").sql or "")
    assert "ALTER TABLE parents ALTER COLUMN name TYPE" not in (chain.fresh_plan("p2").sql or "")


CREATE_ITEMS = "CREATE TABLE items (\n    id SERIAL NOT NULL, \n    name TEXT NOT NULL, \n    PRIMARY KEY (id)\n);"
VERSION_TABLE = "CREATE TABLE IF NOT EXISTS alembic_version (\n    version_num VARCHAR(32) NOT NULL\n);"


@pytest.mark.parametrize(
    ("statements", "why"),
    [
        ((CREATE_ITEMS, "ALTER TABLE items ALTER COLUMN id TYPE BIGINT;"), "a serial column: its default and sequence"),
        ((CREATE_ITEMS, "ALTER TABLE items ALTER COLUMN name TYPE VARCHAR(9) USING left(name, 9);"), "USING"),
        ((CREATE_ITEMS, "ALTER TABLE items ALTER COLUMN name TYPE INTEGER;"), "no assignment cast: the ALTER fails"),
        (
            (
                CREATE_ITEMS.replace("name TEXT NOT NULL", "name TEXT DEFAULT 'x' NOT NULL"),
                "ALTER TABLE items ALTER COLUMN name TYPE VARCHAR(9);",
            ),
            "a default, converted by the ALTER",
        ),
        (
            (
                CREATE_ITEMS,
                "CREATE TABLE tags (\n    name TEXT REFERENCES items (name)\n);",
                "ALTER TABLE items ALTER COLUMN name TYPE VARCHAR(9);",
            ),
            "a foreign key on the column",
        ),
        (
            (
                CREATE_ITEMS,
                "INSERT INTO items (name) VALUES ('a');",
                "ALTER TABLE items ALTER COLUMN name TYPE VARCHAR(9);",
            ),
            "a row",
        ),
        (("SELECT 1;", CREATE_ITEMS, "ALTER TABLE items ALTER COLUMN name TYPE VARCHAR(9);"), "not plain DDL"),
    ],
)
def test_an_alter_that_could_build_another_schema_is_kept(statements: tuple[str, ...], why: str) -> None:
    assert collapsed((VERSION_TABLE, *statements), "r1") == (VERSION_TABLE, *statements), why


def test_version_rows_are_collapsed_only_when_nothing_can_read_them() -> None:
    insert = "INSERT INTO alembic_version (version_num) VALUES ('r1') RETURNING alembic_version.version_num;"
    update = "UPDATE alembic_version SET version_num='r2' WHERE alembic_version.version_num = 'r1';"
    plain = (VERSION_TABLE, CREATE_ITEMS, insert, "CREATE INDEX ix_name ON items (name);", update)
    assert collapsed(plain, "r2") == (
        VERSION_TABLE,
        CREATE_ITEMS,
        "INSERT INTO alembic_version (version_num) VALUES ('r2');",
        "CREATE INDEX ix_name ON items (name);",
    )
    reads = "CREATE TABLE seen (\n    v VARCHAR(32) REFERENCES alembic_version (version_num)\n);"
    assert collapsed((*plain[:3], reads, *plain[3:]), "r2") == (*plain[:3], reads, *plain[3:])
    assert collapsed(plain, "r3") == plain  # the UPDATEs don't end at the target
    # ADD COLUMN evaluates a non-volatile default once, at once: a function that could read the version row
    evaluated = "ALTER TABLE items ADD COLUMN seen TEXT DEFAULT current_version() NOT NULL;"
    assert collapsed((*plain[:3], evaluated, *plain[3:]), "r2") == (*plain[:3], evaluated, *plain[3:])
