"""`check`'s drift detection: each project schema against the head model built from the chain."""

from __future__ import annotations

import sqlalchemy as sa
from conftest import ALEMBIC_INI

from workspace_tool import drift, fleet
from workspace_tool.chain import Chain

IDS = ["d1", "d2", "d3", "d4"]


def test_schemas_built_by_the_chain_match_and_a_hand_made_column_is_drift(engine: sa.Engine) -> None:
    chain = Chain.load(ALEMBIC_INI)
    fleet.provision(engine, chain, IDS, jobs=2)
    assert drift.check(engine, chain).ok

    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE project_d2.code_files ADD COLUMN added_by_hand integer"))
        conn.execute(sa.text("DROP INDEX project_d3.ix_code_files_content_hash"))
    report = drift.check(engine, chain)

    assert not report.ok
    assert {s.project_id: s.problems for s in report.failing} == {
        "d2": ["unexpected relations.code_files.columns.added_by_hand"],
        "d3": ["missing indexes.ix_code_files_content_hash"],
    }
    with engine.connect() as conn:  # the reference schema was rolled back
        leftovers = conn.execute(sa.text("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'workspace_drift%'"))
        assert leftovers.scalar() == 0


def test_check_reports_schemas_behind_missing_orphaned_or_failed(engine: sa.Engine) -> None:
    chain = Chain.load(ALEMBIC_INI)
    fleet.provision(engine, chain, IDS, jobs=2)
    fleet.downgrade(engine, chain, ["d1"], target="0003_indexing_jobs")
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA project_d2 CASCADE"))
        conn.execute(sa.text("DELETE FROM project_registry.workspace_config WHERE project_id = 'd3'"))

    problems = {s.project_id: s.problems for s in drift.check(engine, chain).failing}

    assert problems == {
        "d1": ["at revision 0003_indexing_jobs, head is 0004_alter_existing"],
        "d2": ["registered, but the schema does not exist"],
        "d3": ["not in the registry (orphan)"],
    }
    # downgrade and upgrade back: the same catalog as a freshly built schema
    fleet.upgrade(engine, chain, ["d1"])
    assert drift.check(engine, chain, ["d1", "d4"]).ok
