"""A revision whose own Python code raises (issue 18): one line naming the revision and the exception,
wherever a plan runs (ensure's careful path, the fleet, scratch schemas for the head model of `check`, the
warm pool's spares); the fleet's JSON report is still written; nothing changes revision and no scratch
schema or spare is left; ``--traceback`` shows the rest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from support.chains import ITEMS, ChainBuilder
from support.cli import assert_one_line_error
from support.db import registry_state, schema_version

from workspace_tool import WorkspaceManager, fleet
from workspace_tool.chain import Chain
from workspace_tool.cli import main
from workspace_tool.errors import MigrationFailed

IDS = ["r1", "r2", "r3"]
BOOM = 'raise RuntimeError("boom")'
# Raises only where workspace-tool builds the head model of `check` (a scratch schema, rolled back): the
# projects reach head, the model can't be built.
BOOM_IN_SCRATCH = """
from alembic import context
if context.config.attributes.get("schema", "").startswith("workspace_drift_"):
    raise RuntimeError("boom in a scratch schema")
"""


def cli(url: str, ini: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--database-url", url, "-c", str(ini), *args])


def leftovers(engine: sa.Engine) -> list[str]:
    """Scratch schemas of the head model, and spares: none must be left behind."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'workspace\\_drift\\_%' "
                    "OR nspname LIKE 'workspace\\_spare\\_%'"
                )
            ).scalars()
        )


@pytest.fixture
def raising(engine: sa.Engine, chain_builder: ChainBuilder) -> Path:
    """Three projects at a1; a2 raises RuntimeError("boom") in upgrade()."""
    chain_builder.add("a1", ITEMS, 'op.drop_table("items")')
    assert fleet.provision(engine, Chain.load(chain_builder.ini), IDS, jobs=2).ok
    chain_builder.add("a2", BOOM)
    Chain.forget(chain_builder.ini)
    return chain_builder.ini


def test_upgrade_all_json_reports_each_schema_failed_in_one_line_and_writes_its_report(
    engine: sa.Engine, url_string: str, raising: Path
) -> None:
    result = cli(url_string, raising, "upgrade", "--all", "--json", "--jobs", "2")

    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    expected = "revision a2 raised RuntimeError: boom (at "
    assert [r["status"] for r in report["results"]] == ["failed"] * 3
    for r in report["results"]:
        assert expected in r["error"] and "a2.py:16, in upgrade)" in r["error"], r["error"]
    lines = result.stderr.splitlines()  # progress (each failure in a line of its own), the head model not stored
    assert not any(line.startswith((" ", "Traceback")) for line in lines), result.stderr
    failures = [line for line in lines if " failed: " in line and "WARNING" not in line]
    assert len(failures) == 3 and all(expected in line for line in failures)
    [warning] = [line for line in lines if "WARNING" in line]
    assert "could not store the reference catalog for `check`: building the head model" in warning
    assert expected in warning
    assert [schema_version(engine, f"project_{p}") for p in IDS] == ["a1"] * 3
    revision, status, error = registry_state(engine, "r2")
    assert (revision, status) == ("a1", "failed") and expected in error
    assert leftovers(engine) == []


def test_ensure_names_the_revision_in_one_line_and_traceback_shows_the_rest(
    engine: sa.Engine, url_string: str, raising: Path
) -> None:
    result = cli(url_string, raising, "ensure", "fresh")
    line = assert_one_line_error(result, "project_fresh", "revision a2 raised RuntimeError: boom (at ")
    assert "failed and was rolled back" in line
    shown = cli(url_string, raising, "--traceback", "ensure", "fresh")
    assert shown.exit_code == 1 and 'raise RuntimeError("boom")' in shown.stderr and "Traceback" in shown.stderr
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regnamespace('project_fresh')")).scalar() is None
    with pytest.raises(MigrationFailed, match="revision a2 raised RuntimeError: boom") as info:
        WorkspaceManager(engine, raising).ensure("r1")
    assert info.value.schema == "project_r1" and schema_version(engine, "project_r1") == "a1"


def test_pool_fill_says_it_in_one_line_and_leaves_no_spare(engine: sa.Engine, url_string: str, raising: Path) -> None:
    result = cli(url_string, raising, "pool", "fill", "--size", "2")

    assert_one_line_error(result, "revision a2 raised RuntimeError: boom (at ")
    assert leftovers(engine) == []
    shown = cli(url_string, raising, "--traceback", "pool", "fill", "--size", "2")
    assert 'raise RuntimeError("boom")' in shown.stderr and leftovers(engine) == []


def test_the_head_model_for_check_that_cant_be_built_is_one_line_and_leaves_no_scratch_schema(
    engine: sa.Engine, url_string: str, chain_builder: ChainBuilder
) -> None:
    chain_builder.add("a1", ITEMS, 'op.drop_table("items")')
    chain_builder.add("a2", BOOM_IN_SCRATCH, extra="workspace_online = True\n")

    provided = fleet.provision(engine, Chain.load(chain_builder.ini), ["p1", "p2"], jobs=2)  # stores no model
    assert provided.ok and leftovers(engine) == []

    result = cli(url_string, chain_builder.ini, "check")

    line = assert_one_line_error(result, "revision a2 raised RuntimeError: boom in a scratch schema (at ")
    assert "head model" in line
    assert leftovers(engine) == []
    init = cli(url_string, chain_builder.ini, "init")
    assert_one_line_error(init, "revision a2 raised RuntimeError: boom in a scratch schema")
    assert leftovers(engine) == []
