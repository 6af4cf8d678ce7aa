"""The fast path (the chain compiled once, replayed per schema) builds exactly what Alembic online builds;
revisions that can't be compiled run online, and every output says which path ran."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from support.chains import ALEMBIC_INI, ChainBuilder
from support.db import columns, schema_tables, schema_version

from workspace_tool import WorkspaceManager
from workspace_tool.chain import Chain
from workspace_tool.chain.plan import compiled_statements
from workspace_tool.cli import main
from workspace_tool.flavor import Flavor
from workspace_tool.registry import bootstrap
from workspace_tool.schema.catalog import diff, snapshot
from workspace_tool.schema.migrate import Migration, Sending, migrate
from workspace_tool.schema.operation import DOWNGRADE
from workspace_tool.verification import SCRATCH_PREFIX, verify_fast_path

ITEMS = """
op.create_table(
    "items",
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("kind", sa.String(20), nullable=False),
)
op.execute("INSERT INTO items (kind) VALUES ('seed')")
"""
# Reads data and branches on it: it can only run online.
BRANCHING = """
bind = op.get_bind()
seeded = bind.execute(sa.text("SELECT count(*) FROM items WHERE kind = 'seed'")).scalar()
if seeded:
    op.add_column("items", sa.Column("seeded", sa.Boolean, nullable=False, server_default=sa.true()))
else:
    op.add_column("items", sa.Column("empty", sa.Boolean))
"""
AFTER = 'op.create_index("ix_items_kind", "items", ["kind"])'


def manager_for(engine: sa.Engine, ini: Path) -> Iterator[WorkspaceManager]:
    mgr = WorkspaceManager(engine, ini)
    yield mgr
    mgr.close()


def registry_path(engine: sa.Engine, project_id: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT last_path FROM project_registry.workspace_config WHERE project_id = :p"), {"p": project_id}
        ).scalar()


def cli(url: str, ini: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--database-url", url, "-c", str(ini), *args])
    return result.exit_code, result.output


@pytest.fixture
def initialized(engine: sa.Engine) -> None:
    """The registry and the vector extension, which verify-fast-path needs and never creates (`init`)."""
    with engine.connect() as conn:
        bootstrap(conn)


# ------------------------------------------------------------------- the proof
def test_every_range_of_the_main_chain_is_identical_both_ways(engine: sa.Engine, initialized: None) -> None:
    chain = Chain.load(ALEMBIC_INI)
    report = verify_fast_path(engine, chain)

    assert report.identical, [(c.label, c.differences) for c in report.differing]
    n = len(chain.revisions)
    kinds = [c.kind for c in report.checks]
    assert kinds.count("fresh") == n
    assert kinds.count("upgrade") == kinds.count("downgrade") == n * (n + 1) // 2
    assert {c.fast_path for c in report.checks} == {"fast"}
    labels = {c.label for c in report.checks}
    assert f"(none) -> {chain.head}" in labels
    assert f"{chain.head} -> base" in labels and f"base -> {chain.head}" in labels
    # nothing is left behind: no scratch schema, no registry row
    with engine.connect() as conn:
        leftovers = conn.execute(
            sa.text("SELECT count(*) FROM pg_namespace WHERE nspname LIKE :p"), {"p": SCRATCH_PREFIX + "%"}
        ).scalar()
        registry = conn.execute(sa.text("SELECT to_regclass('project_registry.workspace_config')")).scalar()
        rows = conn.execute(sa.text(f"SELECT count(*) FROM {registry}")).scalar() if registry else 0
    assert leftovers == 0 and rows == 0


def test_the_snapshot_sees_hnsw_options_defaults_and_the_version(engine: sa.Engine, manager: WorkspaceManager) -> None:
    schema = manager.ensure("snap")
    with engine.connect() as conn:
        snap = snapshot(conn, schema)
    hnsw = snap["indexes"]["ix_code_chunks_embedding_hnsw"]["definition"]
    assert "USING hnsw" in hnsw and "m='16'" in hnsw and "ef_construction='64'" in hnsw
    assert snap["relations"]["code_files"]["columns"][6]["default"] == "'unknown'::character varying"
    assert snap["alembic_version"] == [manager.head]


@pytest.mark.slow
def test_verify_fast_path_command_prints_identical_per_range(
    url_string: str, engine: sa.Engine, initialized: None
) -> None:
    code, output = cli(url_string, ALEMBIC_INI, "verify-fast-path")
    assert code == 0, output
    lines = [line for line in output.splitlines() if "->" in line]
    assert len(lines) == 24 and all(line.split()[-1] == "identical" for line in lines)
    assert "All 24 ranges identical." in output

    code, output = cli(url_string, ALEMBIC_INI, "verify-fast-path", "--json")
    data = json.loads(output)
    assert code == 0 and data["identical"] is True and len(data["ranges"]) == 24


def test_the_verification_report_names_the_chain_it_proved(
    chain_builder: ChainBuilder, url_string: str, engine: sa.Engine, initialized: None
) -> None:
    chain_builder.add("r1", ITEMS, 'op.drop_table("items")')
    revision = chain_builder.versions / "r1.py"

    def fingerprint() -> str:
        code, output = cli(url_string, chain_builder.ini, "verify-fast-path", "--json")
        assert code == 0, output
        value: str = json.loads(output)["fingerprint"]
        return value

    first = fingerprint()
    assert len(first) == 16 and fingerprint() == first
    revision.write_text(revision.read_text() + "\n# reviewed\n")
    assert fingerprint() == first  # the chain is loaded once per process...
    Chain.forget(chain_builder.ini)
    assert fingerprint() != first  # ...and read again when told to


def test_a_revision_whose_compiled_sql_differs_is_reported_and_exits_1(
    chain_builder: ChainBuilder, url_string: str, engine: sa.Engine, initialized: None
) -> None:
    # The mode check is hidden from the detector (no call syntax on is_offline_mode), so this revision
    # compiles, but its SQL differs from what it does online: the proof must catch it.
    chain_builder.add(
        "r1",
        'op.create_table("items", sa.Column("id", sa.Integer, primary_key=True), '
        'sa.Column("note", sa.Text, nullable=OFFLINE()))',
        'op.drop_table("items")',
        extra="from alembic import context\nOFFLINE = context.is_offline_mode\n",
    )
    code, output = cli(url_string, chain_builder.ini, "verify-fast-path")
    assert code == 1
    assert "(none) -> r1" in output and "relations.items.columns.note.not_null: expected True, found False" in output
    assert "differ" in output


# ----------------------------------------------------- ranges that end or start at base
def test_compiled_ranges_keep_the_version_table_like_alembic_online() -> None:
    chain = Chain.load(ALEMBIC_INI)
    down = chain.plan(chain.head, None).sql or ""
    up = chain.plan(None, chain.head).sql or ""
    assert "DROP TABLE alembic_version" not in down and "DELETE FROM alembic_version" in down
    assert up.startswith("CREATE TABLE IF NOT EXISTS alembic_version (")
    # what Alembic < 1.17 rendered at the end of a downgrade to base
    old = ["DROP TABLE code_files;\n\n", "DELETE FROM alembic_version;\n\n", "DROP TABLE alembic_version;\n\n"]
    assert compiled_statements(old, "r1", None) == ("DROP TABLE code_files;", "DELETE FROM alembic_version;")
    assert compiled_statements(old, None, "r1") == tuple(chunk.strip() for chunk in old)


def test_a_schema_downgraded_to_base_online_is_provisioned_again_by_the_fast_path(
    engine: sa.Engine, manager: WorkspaceManager
) -> None:
    schema = manager.ensure("again")
    with engine.connect() as conn:  # plain `alembic downgrade base` leaves an empty alembic_version
        migrate(
            conn,
            Sending(manager.chain, Flavor(manager.bootstrap()), online=True),
            Migration("again", schema, None, DOWNGRADE),
        )
    assert schema_tables(engine, schema) == {"alembic_version"}
    manager.invalidate()

    result = manager.ensure_detailed("again")

    assert (result.path, result.from_revision, result.to_revision) == ("fast", None, manager.head)
    assert schema_version(engine, schema) == manager.head


def test_forced_online_and_fast_provisioning_give_the_same_schema(engine: sa.Engine, manager: WorkspaceManager) -> None:
    extension_schema = manager.bootstrap()
    results = {}
    with engine.connect() as conn:
        for project_id, online in (("by-alembic", True), ("by-replay", False)):
            schema = f"project_{project_id.replace('-', '_')}"
            how = Sending(manager.chain, Flavor(extension_schema), online=online)
            results[online] = migrate(conn, how, Migration(project_id, schema, manager.head))
        assert diff(snapshot(conn, "project_by_alembic"), snapshot(conn, "project_by_replay")) == []
    assert results[True].path == "online" and results[False].path == "fast"
    assert registry_path(engine, "by-alembic") == "online"


# ----------------------------------------------------------- revisions that run online
def test_a_revision_that_reads_data_runs_online_and_branches_right(
    chain_builder: ChainBuilder, engine: sa.Engine, url_string: str
) -> None:
    chain_builder.add("r1", ITEMS, 'op.drop_table("items")')
    chain_builder.add("r2", BRANCHING, 'op.drop_column("items", "seeded")')
    chain_builder.add("r3", AFTER, 'op.drop_index("ix_items_kind", table_name="items")')
    chain = Chain.load(chain_builder.ini)
    plan = chain.plan(None, "r3")
    assert [s.online for s in plan.steps] == [False, True, False] and plan.path == "mixed"

    for mgr in manager_for(engine, chain_builder.ini):
        result = mgr.ensure_detailed("branchy")
        assert (result.action, result.path) == ("created", "mixed")
        assert columns(engine, result.schema, "items") == ["id", "kind", "seeded"]
        assert schema_version(engine, result.schema) == "r3"
        assert registry_path(engine, "branchy") == "mixed"

    code, output = cli(url_string, chain_builder.ini, "ensure", "branchy-cli")
    assert code == 0, output
    row = output.splitlines()[1].split()
    assert row[:3] == ["branchy-cli", "project_branchy_cli", "create"] and row[-1] == "mixed"
    # the online and the fast path agree on this chain too
    report = verify_fast_path(engine, chain)
    assert report.identical, [(c.label, c.differences) for c in report.differing]
    assert {c.fast_path for c in report.checks} == {"fast", "mixed", "online"}


def test_a_revision_can_opt_out_with_workspace_online(chain_builder: ChainBuilder, engine: sa.Engine) -> None:
    chain_builder.add("r1", ITEMS, 'op.drop_table("items")', extra="workspace_online = True\n")
    for mgr in manager_for(engine, chain_builder.ini):
        result = mgr.ensure_detailed("optout")
        assert (result.action, result.path) == ("created", "online")
        assert schema_tables(engine, result.schema) == {"items", "alembic_version"}
        assert registry_path(engine, "optout") == "online"
        status = mgr.status(["optout"])[0]
        assert (status.state, status.last_path) == ("at-head", "online")


def test_a_revision_that_cannot_render_offline_falls_back_online(
    chain_builder: ChainBuilder, engine: sa.Engine
) -> None:
    # JSONB has no literal renderer: compiling raises, the step runs online and the row is inserted.
    chain_builder.add(
        "r1",
        """
        from sqlalchemy.dialects import postgresql
        settings = op.create_table(
            "settings", sa.Column("key", sa.Text, primary_key=True), sa.Column("value", postgresql.JSONB)
        )
        op.bulk_insert(settings, [{"key": "limits", "value": {"max_files": 10}}])
        """,
        'op.drop_table("settings")',
    )
    chain_builder.add(
        "r2", 'op.add_column("settings", sa.Column("note", sa.Text))', 'op.drop_column("settings", "note")'
    )
    chain = Chain.load(chain_builder.ini)
    assert [s.online for s in chain.plan(None, "r2").steps] == [True, False]

    for mgr in manager_for(engine, chain_builder.ini):
        result = mgr.ensure_detailed("seeded")
        assert (result.action, result.path) == ("created", "mixed")
        with engine.connect() as conn:
            value = conn.execute(sa.text("SELECT value FROM project_seeded.settings WHERE key = 'limits'")).scalar()
        assert value == {"max_files": 10}
        assert columns(engine, result.schema, "settings") == ["key", "value", "note"]


def test_the_fast_path_can_be_turned_off_for_a_whole_chain(chain_builder: ChainBuilder, engine: sa.Engine) -> None:
    chain_builder.add("r1", ITEMS, 'op.drop_table("items")')
    chain_builder.add("r2", AFTER, 'op.drop_index("ix_items_kind", table_name="items")')
    ini = chain_builder.ini
    ini.write_text(ini.read_text().replace("[alembic]\n", "[alembic]\nworkspace_fast_path = false\n", 1))
    for mgr in manager_for(engine, ini):
        assert not mgr.chain.fast_path_enabled
        result = mgr.ensure_detailed("slow")
        assert (result.action, result.path) == ("created", "online")
        assert schema_version(engine, result.schema) == "r2"


@pytest.mark.parametrize("online", [True, False])
def test_a_downgrade_through_an_online_revision_gives_the_right_schema(
    chain_builder: ChainBuilder, engine: sa.Engine, online: bool
) -> None:
    chain_builder.add("r1", ITEMS, 'op.drop_table("items")')
    chain_builder.add("r2", BRANCHING, 'op.drop_column("items", "seeded")')
    chain_builder.add("r3", AFTER, 'op.drop_index("ix_items_kind", table_name="items")')
    for mgr in manager_for(engine, chain_builder.ini):
        schema = mgr.ensure("down")
        with engine.connect() as conn:
            how = Sending(mgr.chain, Flavor(mgr.bootstrap()), online=online)
            result = migrate(conn, how, Migration("down", schema, "r1", DOWNGRADE))
        assert (result.action, result.path) == ("downgraded", "online" if online else "mixed")
        assert columns(engine, schema, "items") == ["id", "kind"]
        assert schema_version(engine, schema) == "r1"
