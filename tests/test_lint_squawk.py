"""`workspace-tool lint` runs squawk over each revision's compiled SQL (no database needed)."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest
from click.testing import Result
from support.chains import ChainBuilder
from support.cli import lint

from workspace_tool.chain import Chain, squawk
from workspace_tool.chain.lint import lint_chain
from workspace_tool.errors import ConfigurationError

CREATE_T = "op.create_table('t', sa.Column('id', sa.Integer, primary_key=True), sa.Column('name', sa.Text))"
ADD_INDEX = "op.create_index('ix_t_name', 't', ['name'])"
CHANGE_TYPE = "op.alter_column('t', 'name', type_=sa.String(100), existing_type=sa.Text())"
INDEX_MESSAGE = "During normal index creation, table updates are blocked, but reads are still allowed."


def set_options(chain: ChainBuilder, **options: str) -> None:
    """Add options to the [alembic] section of the chain's alembic.ini."""
    lines = "".join(f"{key} = {value}\n" for key, value in options.items())
    chain.ini.write_text(chain.ini.read_text().replace("[alembic]\n", f"[alembic]\n{lines}", 1))


def squawk_lines(result: Result) -> list[str]:
    return [line for line in result.stdout.splitlines() if ": squawk " in line]


@pytest.fixture
def in_chain(chain_builder: ChainBuilder, monkeypatch: pytest.MonkeyPatch) -> ChainBuilder:
    """Run from the chain's folder, so findings name migrations/versions/<file> as in a project."""
    monkeypatch.chdir(chain_builder.root)
    return chain_builder


def test_index_without_concurrently_is_reported(in_chain: ChainBuilder) -> None:
    in_chain.add("r1", CREATE_T).add("r2", ADD_INDEX)
    result = lint(Path("alembic.ini"))
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines() == [
        f"migrations/versions/r2.py: squawk require-concurrent-index-creation: {INDEX_MESSAGE} "
        "[CREATE INDEX ix_t_name ON t (name)]"
    ]
    assert "1 finding(s)" in result.stderr and "squawk 2." in result.stderr


def test_column_type_change_is_reported(in_chain: ChainBuilder) -> None:
    in_chain.add("r1", CREATE_T).add("r2", CHANGE_TYPE)
    result = lint(Path("alembic.ini"))
    assert result.exit_code == 1, result.output
    [line] = result.stdout.splitlines()
    assert line.startswith("migrations/versions/r2.py: squawk changing-column-type: Changing a column type requires")
    assert line.endswith("[ALTER TABLE t ALTER COLUMN name TYPE VARCHAR(100)]")


def test_findings_beside_schema_findings_and_in_json(in_chain: ChainBuilder) -> None:
    escape = "op.add_column('t', sa.Column('x', sa.Text), schema='public')"
    in_chain.add("r1", CREATE_T).add("r2", f"{CHANGE_TYPE}\n{escape}")
    result = lint(Path("alembic.ini"))
    assert result.exit_code == 1
    assert [re.sub(r":\d+:", ":N:", line.split(" ", 1)[0]) for line in result.stdout.splitlines()] == [
        "migrations/versions/r2.py:N:",  # the schema check, then squawk, revision by revision
        "migrations/versions/r2.py:",
    ]
    report = json.loads(lint(Path("alembic.ini"), "--json").stdout)
    schema_finding, squawk_finding = report["findings"]
    assert schema_finding["source"] == "schema" and schema_finding["rule"] is None and schema_finding["line"] > 0
    assert squawk_finding == {
        "path": "migrations/versions/r2.py",
        "line": None,
        "message": squawk_finding["message"],
        "source": "squawk",
        "rule": "changing-column-type",
        "sql": "ALTER TABLE t ALTER COLUMN name TYPE VARCHAR(100)",
        "excerpt": "ALTER TABLE t ALTER COLUMN name TYPE VARCHAR(100)",
    }
    assert report["squawk"]["version"].startswith("2.")
    assert "prefer-robust-stmts" in report["squawk"]["excluded"]


def test_default_rules_spare_plain_new_tables(in_chain: ChainBuilder) -> None:
    """int columns, varchar, serial, IF NOT EXISTS, timeouts: off by default, so a new table is clean."""
    in_chain.add(
        "r1",
        "op.create_table('u', sa.Column('id', sa.Integer, primary_key=True), sa.Column('code', sa.String(8)),"
        " sa.Column('at', sa.DateTime), sa.Column('n', sa.SmallInteger))\n" + CREATE_T,
    )
    in_chain.add("r2", "op.add_column('t', sa.Column('size', sa.Integer))")
    result = lint(Path("alembic.ini"))
    assert result.exit_code == 0, result.output
    assert "no findings" in result.stderr


def test_excluded_and_included_rules_from_alembic_ini(in_chain: ChainBuilder) -> None:
    in_chain.add("r1", CREATE_T).add("r2", ADD_INDEX)
    set_options(in_chain, workspace_squawk_exclude="require-concurrent-index-creation")
    result = lint(Path("alembic.ini"))
    assert result.exit_code == 0, result.output
    assert result.stdout == ""

    # one per line, as alembic.ini continues a value; excluding wins over including
    set_options(in_chain, workspace_squawk_include="prefer-bigint-over-int\n    require-concurrent-index-creation")
    result = lint(Path("alembic.ini"))
    assert result.exit_code == 1
    assert [line.split(" ")[:3] for line in result.stdout.splitlines()] == [
        ["migrations/versions/r1.py:", "squawk", "prefer-bigint-over-int:"]
    ]


def test_a_long_statement_is_shown_around_the_line_squawk_points_at(in_chain: ChainBuilder) -> None:
    columns = ", ".join(f"sa.Column('c{i}', sa.Text)" for i in range(8))
    in_chain.add(
        "r1",
        f"op.create_table('wide', sa.Column('id', sa.BigInteger, primary_key=True), {columns},"
        " sa.Column('code', sa.String(8)))",
    )
    set_options(in_chain, workspace_squawk_include="prefer-text-field")
    result = lint(Path("alembic.ini"))
    [line] = result.stdout.splitlines()
    assert line.startswith("migrations/versions/r1.py: squawk prefer-text-field: ")
    assert line.endswith("[CREATE TABLE wide ( … code VARCHAR(8),]")
    [finding] = json.loads(lint(Path("alembic.ini"), "--json").stdout)["findings"]
    assert finding["sql"].startswith("CREATE TABLE wide (\n") and "c7 TEXT" in finding["sql"]


def test_a_revision_acknowledges_its_own_findings(in_chain: ChainBuilder) -> None:
    in_chain.add("r1", CREATE_T)
    in_chain.add("r2", f"{CHANGE_TYPE}\n{ADD_INDEX}", extra="workspace_squawk_ignore = ['changing-column-type']")
    in_chain.add("r3", "op.alter_column('t', 'name', type_=sa.Text(), existing_type=sa.String(100))")
    result = lint(Path("alembic.ini"))
    assert result.exit_code == 1
    assert [line.split(":")[0] + ":" + line.split(":")[1] for line in squawk_lines(result)] == [
        "migrations/versions/r2.py: squawk require-concurrent-index-creation",  # not acknowledged
        "migrations/versions/r3.py: squawk changing-column-type",  # acknowledged in r2 only
    ]
    assert "1 squawk finding(s) acknowledged by workspace_squawk_ignore" in result.stderr
    [acknowledged] = json.loads(lint(Path("alembic.ini"), "--json").stdout)["squawk"]["acknowledged"]
    assert (acknowledged["path"], acknowledged["rule"]) == ("migrations/versions/r2.py", "changing-column-type")


def test_transaction_mistakes_are_reported(in_chain: ChainBuilder) -> None:
    """Every revision runs inside its schema's transaction: CONCURRENTLY fails there, COMMIT ends it."""
    in_chain.add("r1", CREATE_T)
    in_chain.add("r2", "op.execute('CREATE INDEX CONCURRENTLY ix_t_name ON t (name)')")
    in_chain.add("r3", "op.execute('COMMIT')")
    result = lint(Path("alembic.ini"))
    rules = [tuple(line.split(" ")[0:3]) for line in squawk_lines(result)]
    assert ("migrations/versions/r2.py:", "squawk", "ban-concurrent-index-creation-in-transaction:") in rules
    assert ("migrations/versions/r3.py:", "squawk", "transaction-nesting:") in rules
    assert result.exit_code == 1


def test_revisions_without_compiled_sql_are_listed_not_checked(in_chain: ChainBuilder) -> None:
    in_chain.add("r1", CREATE_T)
    in_chain.add("r2", ADD_INDEX, extra="workspace_online = True")
    in_chain.add("r3", "raise RuntimeError('needs the data')")
    result = lint(Path("alembic.ini"))
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "migrations/versions/r2.py: not checked by squawk: runs online" in result.stderr
    assert "migrations/versions/r3.py: not checked by squawk: cannot be rendered offline (needs the data)" in (
        result.stderr
    )
    assert "2 revision(s) not checked by squawk" in result.stderr
    unchecked = json.loads(lint(Path("alembic.ini"), "--json").stdout)["squawk"]["unchecked"]
    assert [u["path"] for u in unchecked] == ["migrations/versions/r2.py", "migrations/versions/r3.py"]


def test_a_chain_without_the_fast_path_is_checked_too(in_chain: ChainBuilder) -> None:
    """workspace_fast_path = false runs every revision online, but each one's SQL is still what Alembic
    renders from the same ops: squawk checks it."""
    in_chain.add("r1", CREATE_T).add("r2", ADD_INDEX)
    set_options(in_chain, workspace_fast_path="false")
    result = lint(Path("alembic.ini"))
    assert result.exit_code == 1
    assert [line.split(" ")[:3] for line in result.stdout.splitlines()] == [
        ["migrations/versions/r2.py:", "squawk", "require-concurrent-index-creation:"]
    ]


def test_no_squawk_runs_the_schema_check_alone(in_chain: ChainBuilder) -> None:
    in_chain.add("r1", CREATE_T).add("r2", ADD_INDEX)
    result = lint(Path("alembic.ini"), "--no-squawk")
    assert result.exit_code == 0, result.output
    assert "squawk not run" in result.stderr
    assert json.loads(lint(Path("alembic.ini"), "--no-squawk", "--json").stdout)["squawk"] is None


def test_an_unknown_rule_name_is_a_one_line_error(in_chain: ChainBuilder) -> None:
    in_chain.add("r1", CREATE_T)
    set_options(in_chain, workspace_squawk_exclude="require-concurent-index-creation")
    result = lint(Path("alembic.ini"))
    assert result.exit_code == 1
    assert result.stdout == ""
    [error] = result.stderr.splitlines()
    assert error.startswith("Error: squawk refused to run: invalid value 'require-concurent-index-creation'")
    assert "workspace_squawk_exclude" in error


def test_a_malformed_acknowledgment_is_a_one_line_error(in_chain: ChainBuilder) -> None:
    in_chain.add("r1", CREATE_T, extra="workspace_squawk_ignore = 'changing-column-type'")
    result = lint(Path("alembic.ini"))
    assert result.exit_code == 1
    [error] = result.stderr.splitlines()
    assert "r1.py:" in error and "workspace_squawk_ignore must be a literal list of squawk rule names" in error


def test_without_squawk_installed_lint_says_what_to_do(in_chain: ChainBuilder, monkeypatch: pytest.MonkeyPatch) -> None:
    in_chain.add("r1", CREATE_T)
    monkeypatch.setattr(squawk, "find_binary", lambda: None)
    result = lint(Path("alembic.ini"))
    assert result.exit_code == 1
    [error] = result.stderr.splitlines()
    assert "squawk is not installed" in error and "pip install 'workspace-tool[squawk]'" in error
    assert "--no-squawk" in error
    assert lint(Path("alembic.ini"), "--no-squawk").exit_code == 0


def test_the_binary_is_the_wheels_and_its_version_is_checked(tmp_path: Path) -> None:
    binary = squawk.find_binary()
    assert binary is not None and Path(binary).name == "squawk"
    assert squawk.binary_version(binary).startswith("2.")
    old = tmp_path / "squawk"
    old.write_text("#!/bin/sh\necho 'squawk 1.5.0'\n")
    old.chmod(old.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(ConfigurationError, match=r"squawk 1\.5\.0 .* is not supported: .*squawk-cli>=2\.70,<3"):
        squawk.binary_version(str(old))


def test_statements_of_alembics_offline_output(chain_builder: ChainBuilder) -> None:
    chain_builder.add("r1", CREATE_T).add("r2", """op.execute("UPDATE t SET note = 'a\\n\\nb;' WHERE id = 1")""")
    chain = Chain(chain_builder.ini)
    assert squawk.statements(chain.compile_statements(None, "r1")) == [
        "CREATE TABLE t (\n    id SERIAL NOT NULL, \n    name TEXT, \n    PRIMARY KEY (id)\n)"
    ]
    assert squawk.statements(chain.compile_statements("r1", "r2")) == ["UPDATE t SET note = 'a\n\nb;' WHERE id = 1"]


def test_lint_chain_api(chain_builder: ChainBuilder) -> None:
    chain_builder.add("r1", CREATE_T).add("r2", ADD_INDEX)
    report = lint_chain(chain_builder.ini)
    [finding] = report.findings
    assert (finding.source, finding.rule, finding.line) == ("squawk", "require-concurrent-index-creation", None)
    assert finding.path == str(chain_builder.versions / "r2.py")  # outside the working directory: absolute
    assert lint_chain(chain_builder.ini, use_squawk=False).findings == []
