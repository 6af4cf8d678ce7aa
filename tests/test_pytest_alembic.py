"""pytest-alembic's built-in tests on the project's chain (issue 13): single head, upgrade base -> head,
every revision up and down, the models match the DDL at head, and each downgrade undoes its upgrade.

pytest-alembic hands env.py its engine in ``config.attributes["connection"]`` (Alembic's cookbook), and
``-x schema=`` names the project schema: a scratch one, dropped after each test. The engine's connections
start with that schema on their search_path, so what pytest-alembic reflects itself (the before/after
comparisons of ``downgrade_leaves_no_trace``, ``table_at_revision``) sees the project's tables.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.config import Config
from pytest_alembic import Config as PytestAlembicConfig
from pytest_alembic import MigrationContext, runner
from pytest_alembic.plugin.error import AlembicTestFailure
from pytest_alembic.plugin.fixtures import alembic_runner  # noqa: F401 - the fixture the built-ins take
from pytest_alembic.tests import (  # noqa: F401 - collected here as this module's tests
    test_model_definitions_match_ddl,
    test_single_head_revision,
    test_up_down_consistency,
    test_upgrade,
)
from pytest_alembic.tests.experimental import test_downgrade_leaves_no_trace
from sqlalchemy.engine import URL
from support.chains import ALEMBIC_INI, ChainBuilder

from workspace_tool import WorkspaceManager

SCHEMA = "project_pytest_alembic"


def _drop_scratch(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))


@pytest.fixture
def alembic_config() -> Config:
    return Config(str(ALEMBIC_INI), cmd_opts=argparse.Namespace(x=[f"schema={SCHEMA}"]))


@pytest.fixture
def alembic_engine(session_engine: sa.Engine, database_url: URL) -> Iterator[sa.Engine]:
    extension_schema = WorkspaceManager(session_engine, ALEMBIC_INI).bootstrap()  # `workspace-tool init`
    _drop_scratch(session_engine)
    engine = sa.create_engine(
        database_url,
        poolclass=sa.pool.NullPool,
        connect_args={"options": f"-c search_path={SCHEMA},{extension_schema}"},
    )
    yield engine
    engine.dispose()
    _drop_scratch(session_engine)


def test_a_data_migration_can_be_tested_in_the_project_schema(
    alembic_runner: MigrationContext,  # noqa: F811
    alembic_engine: sa.Engine,
) -> None:
    """What a user writes next to the built-ins: rows put in before a revision survive it."""
    alembic_runner.migrate_up_before("0004_alter_existing")
    alembic_runner.insert_into("repositories", {"path": "/src/app", "name": "app"})
    alembic_runner.migrate_up_one()
    assert alembic_runner.current == "0004_alter_existing"
    assert alembic_runner.table_at_revision("repositories").c.name.type.length == 255  # type: ignore[attr-defined]
    with alembic_engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT path, name FROM {SCHEMA}.repositories")).all()
    assert [tuple(r) for r in rows] == [("/src/app", "app")]


# ------------------------------------------------------ the built-ins catch real faults
def _run_builtin(test: Callable[[MigrationContext], None], ini: Path, engine: sa.Engine) -> None:
    config = Config(str(ini), cmd_opts=argparse.Namespace(x=[f"schema={SCHEMA}"]))
    with runner(config=PytestAlembicConfig(alembic_config=config), engine=engine) as migration_context:
        test(migration_context)


def test_models_that_differ_from_the_chain_fail_the_model_test(
    chain_builder: ChainBuilder, alembic_engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain_builder.copy_main_chain()
    (tmp_path / "models_plus_one.py").write_text(
        "import sqlalchemy as sa\n"
        "from migrations.models import metadata as head\n\n"
        "metadata = sa.MetaData()\n"
        "for table in head.sorted_tables:\n"
        "    table.to_metadata(metadata)\n"
        'metadata.tables["repositories"].append_column(sa.Column("default_branch", sa.String(100)))\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ini = chain_builder.ini
    ini.write_text(ini.read_text().replace("migrations.models:metadata", "models_plus_one:metadata"))
    with pytest.raises(AlembicTestFailure, match="out of sync") as failure:
        _run_builtin(test_model_definitions_match_ddl, ini, alembic_engine)
    assert "default_branch" in "\n".join(failure.value.format_context())


def test_a_downgrade_that_leaves_an_index_fails_the_no_trace_test(
    chain_builder: ChainBuilder, alembic_engine: sa.Engine
) -> None:
    chain_builder.add(
        "a1", "op.create_table('notes', sa.Column('id', sa.Integer, primary_key=True))", "op.drop_table('notes')"
    )
    chain_builder.add("a2", "op.create_index('ix_notes_id', 'notes', ['id'])", "pass")  # forgets the index
    with pytest.raises(AlembicTestFailure, match=r"does not\s+precisely undo"):
        _run_builtin(test_downgrade_leaves_no_trace, chain_builder.ini, alembic_engine)
