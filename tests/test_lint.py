"""`workspace-tool lint`: a static check that no revision reaches outside its project schema."""

from __future__ import annotations

import re
from pathlib import Path

import sqlalchemy as sa
from support.chains import ALEMBIC_INI, ChainBuilder
from support.cli import lint

from workspace_tool import WorkspaceManager
from workspace_tool.chain.lint import check_chain, check_source, lint_chain

CREATE_T = "op.create_table('t', sa.Column('id', sa.Integer, primary_key=True))"


def test_main_chain_is_clean() -> None:
    """The project's own chain passes: 0004's squawk findings (a column type change, a rename, two
    indexes built without CONCURRENTLY) are acknowledged in that revision, and counted."""
    result = lint(ALEMBIC_INI)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "Checked 4 revisions (schema references; squawk 2." in result.stderr
    assert "no findings; 4 squawk finding(s) acknowledged by workspace_squawk_ignore" in result.stderr
    checked, findings = check_chain(ALEMBIC_INI)
    assert (checked, findings) == (4, [])
    run = lint_chain(ALEMBIC_INI).squawk_run
    assert run is not None and not run.violations and not run.unchecked
    assert sorted((Path(v.revision_path).name, v.rule) for v in run.acknowledged) == [
        ("0004_alter_existing.py", "changing-column-type"),
        ("0004_alter_existing.py", "renaming-column"),
        ("0004_alter_existing.py", "require-concurrent-index-creation"),
        ("0004_alter_existing.py", "require-concurrent-index-creation"),
    ]


def test_main_chain_without_its_acknowledgment(chain_builder: ChainBuilder) -> None:
    """What squawk says about the project's own chain when nobody has acknowledged it."""
    chain_builder.copy_main_chain()
    revision = chain_builder.versions / "0004_alter_existing.py"
    revision.write_text(re.sub(r"(?m)^workspace_squawk_ignore = .*$", "", revision.read_text()))
    result = lint(chain_builder.ini)
    assert result.exit_code == 1
    rules = [line.split(": squawk ")[1].split(":")[0] for line in result.stdout.splitlines()]
    assert rules == [
        "changing-column-type",
        "renaming-column",
        "require-concurrent-index-creation",
        "require-concurrent-index-creation",
    ]
    assert all(line.startswith(f"{revision}: squawk ") for line in result.stdout.splitlines())


def test_clean_tiny_chain(chain_builder: ChainBuilder) -> None:
    chain_builder.add("r1", CREATE_T)
    chain_builder.add(
        "r2",
        """
        op.add_column('t', sa.Column('name', sa.Text))
        op.execute("UPDATE t SET name = 'public.x' WHERE id > 0")  # a value, not a reference
        op.execute(sa.text("CREATE INDEX ix_t_name ON t (name)"))
        op.create_foreign_key('fk', 't', 't', ['id'], ['id'], referent_schema=None)
        """,
    )
    result = lint(chain_builder.ini, "--no-squawk")  # squawk has things to say here: test_lint_squawk.py
    assert result.exit_code == 0, result.output


# Each case: a revision body and what its finding must say. One finding per case.
BAD_REVISIONS = [
    ("op.add_column('t', sa.Column('x', sa.Text), schema='public')", "add_column(..., schema='public')", 4),
    ("op.alter_column('t', 'id', nullable=True, schema='project_other')", "ignores the translate map", 4),
    ("op.drop_column('t', 'id', schema='project_other')", "alembic #555", 4),
    ("op.create_table('u', sa.Column('id', sa.Integer), schema='project_other')", "names a schema", 4),
    ("op.create_index('ix', 'u', ['id'], schema='public')", "create_index(..., schema='public')", 4),
    (
        "op.create_foreign_key('fk', 't', 'repositories', ['id'], ['id'], referent_schema='public')",
        "referent_schema='public'",
        4,
    ),
    ("op.execute('INSERT INTO project_other.t VALUES (1)')", "names schema 'project_other'", 4),
    ('op.execute(\'DELETE FROM "project_other"."t"\')', "names schema 'project_other'", 4),
    ("op.execute(sa.text('SELECT * FROM public.repositories'))", "names schema 'public'", 4),
    ("op.execute(f'UPDATE project_registry.workspace_config SET status = {1!r}')", "'project_registry'", 4),
    ("op.get_bind().exec_driver_sql('TRUNCATE project_x.t')", "'project_x'", 4),
    ("op.execute('SET search_path TO public')", "changes the search_path", 4),
    (
        "op.create_table('u', sa.Column('r', sa.Integer, sa.ForeignKey('public.repositories.id')))",
        "ForeignKey('public.repositories.id') references another schema (public)",
        4,
    ),
    ("SCHEMA = 'public'\nop.drop_column('t', 'id', schema=SCHEMA)", "schema=an expression (SCHEMA)", 5),
]


def test_each_escape_is_reported_with_file_and_line(chain_builder: ChainBuilder) -> None:
    chain_builder.add("r1", CREATE_T)
    for i, (body, _, _) in enumerate(BAD_REVISIONS):
        chain_builder.add(f"bad{i:02d}", body)
    result = lint(chain_builder.ini, "--no-squawk")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert len(lines) == len(BAD_REVISIONS), result.stdout
    assert f"{len(BAD_REVISIONS)} finding(s)" in result.stderr
    for i, (_, message, _) in enumerate(BAD_REVISIONS):
        [line] = [line for line in lines if f"bad{i:02d}.py:" in line]
        path, lineno, text = line.split(":", 2)
        assert Path(path).name == f"bad{i:02d}.py"
        source = (chain_builder.versions / f"bad{i:02d}.py").read_text().splitlines()
        # the line named is the offending line of the revision
        assert any(word in source[int(lineno) - 1] for word in ("op.", "sa.")), (line, source[int(lineno) - 1])
        assert message in text, line


def test_json_output(chain_builder: ChainBuilder) -> None:
    chain_builder.add("r1", "op.add_column('t', sa.Column('x', sa.Text), schema='public')")
    result = lint(chain_builder.ini, "--json")
    assert result.exit_code == 1
    import json

    report = json.loads(result.stdout)
    assert report["revisions"] == 1
    [finding] = report["findings"]
    assert finding["path"].endswith("r1.py") and finding["line"] > 1


def test_check_source_api() -> None:
    findings = check_source("from alembic import op\nop.drop_column('t', 'c', schema='public')\n", "x.py")
    assert str(findings[0]).startswith("x.py:2: drop_column(..., schema='public')")
    assert check_source("def (:\n", "broken.py")[0].message.startswith("cannot parse")
    assert check_source("op.create_table('t', schema=None)") == []


def test_missing_config_is_a_one_line_error(tmp_path: Path) -> None:
    result = lint(tmp_path / "alembic.ini")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: alembic config not found") and len(result.stderr.splitlines()) == 1


def test_search_path_during_a_migration_holds_no_user_tables(engine: sa.Engine, chain_builder: ChainBuilder) -> None:
    """What lint can't see at run time: the search_path a revision runs under is the project schema plus
    only the extension's schema, which holds no tables; `public` is not on it."""
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS public.repositories (id int)"))
    chain_builder.add(
        "r1",
        """
        op.execute("CREATE TABLE seen AS SELECT current_setting('search_path') AS path, "
                   "(SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                   " WHERE n.nspname = ANY (current_schemas(false)) AND c.relkind = 'r' "
                   " AND n.nspname <> current_schema()) AS foreign_tables")
        op.execute("CREATE TABLE repositories (id int)")
        """,
    )
    mgr = WorkspaceManager(engine, chain_builder.ini)
    schema = mgr.ensure("probe")
    with engine.connect() as conn:
        path, foreign_tables = conn.execute(sa.text(f"SELECT path, foreign_tables FROM {schema}.seen")).one()
        public_rows = conn.execute(sa.text("SELECT count(*) FROM public.repositories")).scalar()
        in_project = conn.execute(sa.text(f"SELECT to_regclass('{schema}.repositories') IS NOT NULL")).scalar()
    assert "public" not in path and schema in path
    assert foreign_tables == 0
    assert in_project and public_rows == 0
