"""The core CLI commands (issue #2, section 8): init, ensure, list, drop; their exact output on stdout and
stderr and their exit codes; user errors as one line; no password in any output."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from sqlalchemy.engine import URL
from support.chains import ALEMBIC_INI, HEAD, MAIN_REVISIONS, ChainBuilder, truncated_chain
from support.data import make_schema_by_hand
from support.db import database_state, registry_row, schema_exists, schema_tables, schema_version

from workspace_tool.chain import Chain
from workspace_tool.cli import main
from workspace_tool.managers import cache

WORKSPACE_TOOL = str(Path(sys.executable).with_name("workspace-tool"))
SECRET = "Sup3rS3cretPw"
ID_RULE = "a project id is 1-50 characters of a-z and 0-9 in groups joined by single hyphens (^[a-z0-9]+(-[a-z0-9]+)*$)"

Cli = Callable[..., Result]


@pytest.fixture
def cli(engine: sa.Engine, url_string: str, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """Invoke ``workspace-tool --database-url URL -c alembic.ini ARGS`` as a new process would: with
    empty process caches and no URL or config from the environment."""
    for name in ("WORKSPACE_TOOL_DATABASE_URL", "DATABASE_URL", "WORKSPACE_TOOL_CONFIG"):
        monkeypatch.delenv(name, raising=False)

    def invoke(*args: str, url: str | None = url_string, config: Path | None = ALEMBIC_INI) -> Result:
        cache.clear()
        prefix = (["--database-url", url] if url else []) + (["-c", str(config)] if config else [])
        return CliRunner().invoke(main, [*prefix, *args], prog_name="workspace-tool")

    return invoke


def durations(stdout: str) -> list[str]:
    return re.findall(r"  (\d+\.\d)  ", stdout)


# ---------------------------------------------------------------------------------- init
def test_init_creates_registry_and_says_where(cli: Cli, engine: sa.Engine, database_url: URL) -> None:
    result = cli("init")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr == (
        "Registry ready in project_registry; vector extension in schema workspace_extensions; "
        f"database {database_url.render_as_string(hide_password=True)}\n"
    )
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass('project_registry.workspace_config')")).scalar() is not None
    assert cli("init").exit_code == 0  # idempotent


# -------------------------------------------------------------------------------- ensure
def test_ensure_prints_action_revision_duration_and_path(cli: Cli, engine: sa.Engine) -> None:
    result = cli("ensure", "demo", "other-one")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    first, second = durations(result.stdout)
    assert result.stdout == "\n".join(
        [
            "PROJECT ID  SCHEMA             ACTION  TO REVISION          DURATION MS  PATH",
            f"demo        project_demo       create  {HEAD}  {first:<11}  fast",
            f"other-one   project_other_one  create  {HEAD}  {second:<11}  fast",
            "",
        ]
    )
    assert float(first) > 0 and float(second) > 0
    assert schema_version(engine, "project_demo") == HEAD
    assert schema_version(engine, "project_other_one") == HEAD

    again = cli("ensure", "demo")
    assert again.exit_code == 0
    (duration,) = durations(again.stdout)
    assert again.stdout.splitlines()[1] == f"demo        project_demo  current  {HEAD}  {duration:<11}  none"


def test_ensure_json(cli: Cli, engine: sa.Engine) -> None:
    result = cli("ensure", "--json", "json-demo")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert len(data) == 1
    duration = data[0].pop("duration_ms")
    assert isinstance(duration, float) and duration > 0
    assert data == [
        {
            "project_id": "json-demo",
            "schema": "project_json_demo",
            "action": "create",
            "from_revision": None,
            "to_revision": HEAD,
            "path": "fast",
        }
    ]
    assert registry_row(engine, "json-demo")["last_duration_ms"] == round(duration, 3)  # type: ignore[index]


def test_ensure_refuses_a_hand_made_schema_unless_adopt(cli: Cli, engine: sa.Engine) -> None:
    make_schema_by_hand(engine, "project_legacy", "invoices")

    refused = cli("ensure", "legacy")

    assert refused.exit_code == 1 and refused.stdout == ""
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("Error: schema project_legacy already exists and holds 1 relation(s) (invoices)")
    assert "`workspace-tool ensure legacy --adopt`" in line
    assert schema_tables(engine, "project_legacy") == {"invoices"} and registry_row(engine, "legacy") is None

    adopted = cli("ensure", "legacy", "--adopt", "--json")

    assert adopted.exit_code == 0, adopted.output
    assert json.loads(adopted.stdout)[0]["action"] == "adopt"  # the registry's word, as LAST ACTION shows it
    assert schema_version(engine, "project_legacy") == HEAD
    row = registry_row(engine, "legacy")
    assert row is not None and row["last_action"] == "adopt"


def test_ensure_refuses_adopt_with_no_upgrade(cli: Cli, engine: sa.Engine) -> None:
    """--adopt runs the chain into a hand-made schema, which --no-upgrade forbids: the two together are a
    usage error before anything runs (named one after the other, or through the fleet runner)."""
    make_schema_by_hand(engine, "project_legacy", "invoices")
    before = database_state(engine)
    for extra in ([], ["--jobs", "1"]):
        refused = cli("ensure", "legacy", "new-one", "--adopt", "--no-upgrade", *extra)
        assert refused.exit_code == 2 and refused.stdout == "", (extra, refused.stdout, refused.stderr)
        assert refused.stderr.splitlines()[-1] == (
            "Error: --adopt runs the chain into an existing schema, which --no-upgrade forbids: pass one of them"
        )
    assert database_state(engine) == before


def test_ensure_checks_every_id_before_any_sql(cli: Cli, engine: sa.Engine) -> None:
    result = cli("ensure", "good", "Bad_Id")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == f"Error: invalid project id 'Bad_Id': character 'B' is not allowed; {ID_RULE}\n"
    assert not schema_exists(engine, "project_good")


def test_ensure_needs_an_id(cli: Cli) -> None:
    result = cli("ensure")
    assert result.exit_code == 2
    assert "Error: Missing argument '[PROJECT_IDS]...'. Or pass --ids-from FILE." in result.stderr


def test_ensure_no_upgrade_on_a_behind_schema(cli: Cli, engine: sa.Engine, tmp_path: Path) -> None:

    old = cli("ensure", "lagging", config=truncated_chain(tmp_path / "c", MAIN_REVISIONS[0]))
    assert old.exit_code == 0, old.stderr
    result = cli("ensure", "--no-upgrade", "lagging")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"Error: project lagging (schema project_lagging) is at revision {MAIN_REVISIONS[0]}, behind head "
        f"{HEAD}: run `workspace-tool upgrade lagging`\n"
    )
    assert schema_version(engine, "project_lagging") == MAIN_REVISIONS[0]


def test_ensure_no_upgrade_fails_a_behind_schema_through_the_fleet_runner_too(
    cli: Cli, engine: sa.Engine, tmp_path: Path
) -> None:
    """With --jobs (or --ids-from) ensure runs through the fleet runner: a schema behind head is a failure
    there too (exit 1, the error saying what to run), not a skip, and it is left at its revision."""
    assert cli("ensure", "lagging", config=truncated_chain(tmp_path / "c", MAIN_REVISIONS[0])).exit_code == 0
    result = cli("ensure", "--no-upgrade", "lagging", "fresh", "--jobs", "1", "--json")
    assert result.exit_code == 1, (result.stdout, result.stderr)
    outcome = {r["project_id"]: r for r in json.loads(result.stdout)["results"]}
    assert outcome["fresh"]["status"] == "ok"
    assert outcome["lagging"]["status"] == "failed"
    assert f"behind head {HEAD}: run `workspace-tool upgrade lagging`" in outcome["lagging"]["error"]
    assert schema_version(engine, "project_lagging") == MAIN_REVISIONS[0]


def test_ensure_reports_what_it_did_before_a_failure(cli: Cli, engine: sa.Engine, tmp_path: Path) -> None:

    assert cli("ensure", "lagging", config=truncated_chain(tmp_path / "c", MAIN_REVISIONS[0])).exit_code == 0
    result = cli("ensure", "--no-upgrade", "first", "lagging", "never")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert [line.split()[:3] for line in lines[1:]] == [["first", "project_first", "create"]]
    assert result.stderr.startswith("Error: project lagging (schema project_lagging) is at revision")
    assert not schema_exists(engine, "project_never")


# ---------------------------------------------------------------------------------- list
def test_list_empty_and_filled(cli: Cli) -> None:
    assert cli("init").exit_code == 0  # a registry with no project (without one, list says so: test_read_only)
    empty = cli("list")
    assert (empty.exit_code, empty.stdout, empty.stderr) == (0, "", "No projects.\n")
    empty_json = cli("list", "--json")
    assert (empty_json.exit_code, empty_json.stdout) == (0, "[]\n")

    assert cli("ensure", "beta", "alpha").exit_code == 0
    listed = cli("list")
    assert listed.exit_code == 0
    lines = listed.stdout.splitlines()
    assert lines[0] == "PROJECT ID  SCHEMA NAME    REVISION             STATUS  CREATED AT"
    assert [re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", "<time>", line) for line in lines[1:]] == [
        f"alpha       project_alpha  {HEAD}  ready   <time>",
        f"beta        project_beta   {HEAD}  ready   <time>",
    ]
    data = json.loads(cli("list", "--json").stdout)
    assert [(d["project_id"], d["schema_name"], d["revision"], d["status"], d["last_action"]) for d in data] == [
        ("alpha", "project_alpha", HEAD, "ready", "create"),
        ("beta", "project_beta", HEAD, "ready", "create"),
    ]
    assert all(d["last_duration_ms"] > 0 and d["last_path"] == "fast" and d["metadata"] == {} for d in data)


# ---------------------------------------------------------------------------------- drop
def test_list_shows_the_registry_with_a_one_line_warning_when_a_revision_file_is_broken(
    cli: Cli, chain_builder: ChainBuilder
) -> None:
    chain_builder.add("r1", 'op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))')
    assert cli("ensure", "alpha", config=chain_builder.ini).exit_code == 0
    (chain_builder.versions / "r2.py").write_text("revision = 'r2'\ndown_revision = 'r1'\n\ndef upgrade(:\n    pass\n")
    Chain.forget(chain_builder.ini)

    listed = cli("list", config=chain_builder.ini)
    as_json = cli("-q", "list", "--json", config=chain_builder.ini)

    assert listed.exit_code == 0, listed.output
    assert [line.split()[:3] for line in listed.stdout.splitlines()[1:]] == [["alpha", "project_alpha", "r1"]]
    [warning] = listed.stderr.splitlines()
    assert warning.startswith("Warning: the revision chain can't be loaded: cannot load revision ")
    assert "r2.py:4: SyntaxError" in warning and "the registry is shown as it is" in warning
    assert as_json.exit_code == 0 and [r["project_id"] for r in json.loads(as_json.stdout)] == ["alpha"]
    assert as_json.stderr.splitlines() == [warning]  # a warning shows even with -q
    refused = cli("ensure", "beta", config=chain_builder.ini)  # what needs the chain still refuses, in one line
    assert refused.exit_code == 1 and "r2.py:4: SyntaxError" in refused.stderr


def test_drop_needs_yes(cli: Cli, engine: sa.Engine) -> None:
    assert cli("ensure", "keep").exit_code == 0
    result = cli("drop", "keep")  # no terminal to ask on (the test runner's stdin)
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (
        "Error: dropping project_keep deletes all its data: pass --yes to confirm (no terminal to ask on); "
        "nothing was changed\n"
    )
    assert schema_exists(engine, "project_keep")
    assert registry_row(engine, "keep") is not None


def test_drop_yes(cli: Cli, engine: sa.Engine) -> None:
    assert cli("ensure", "bye").exit_code == 0
    result = cli("drop", "bye", "--yes")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "Dropped project_bye.\n")
    assert not schema_exists(engine, "project_bye")
    assert registry_row(engine, "bye") is None
    again = cli("drop", "bye", "--yes")  # no project any more: an error naming it (issue 22)
    assert again.exit_code == 1
    assert again.stderr.startswith("Error: no project bye (no schema, no registry row; ")


def test_drop_bad_id(cli: Cli) -> None:
    result = cli("drop", "Nope!", "--yes")
    assert result.exit_code == 1
    assert result.stderr == f"Error: invalid project id 'Nope!': character 'N' is not allowed; {ID_RULE}\n"


# ------------------------------------------------------------------------ errors, secrets
@pytest.mark.parametrize("command", [["init"], ["ensure", "demo"], ["list"], ["drop", "demo", "--yes"]])
def test_unreachable_database_never_shows_the_password(cli: Cli, command: list[str]) -> None:
    url = f"postgresql://alice:{SECRET}@127.0.0.1:9/somedb"
    result = cli(*command, url=url)
    assert result.exit_code == 1
    assert SECRET not in result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("Error: database connection failed: ")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_wrong_database_name_never_shows_the_password(cli: Cli, database_url: URL) -> None:
    url = database_url.set(database="no_such_database_here", password=SECRET).render_as_string(hide_password=False)
    result = cli("ensure", "demo", url=url)
    assert result.exit_code == 1
    assert SECRET not in result.stdout + result.stderr
    assert "no_such_database_here" in result.stderr
    assert result.stderr.count("\n") == 1


def test_not_a_postgresql_url(cli: Cli) -> None:
    result = cli("list", url=f"mysql://bob:{SECRET}@localhost/db")
    assert result.exit_code == 1
    assert SECRET not in result.stderr
    assert result.stderr == "Error: workspace-tool needs PostgreSQL, got a mysql URL: mysql://bob:***@localhost/db\n"


def test_url_from_the_environment(cli: Cli, url_string: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:9/never")
    monkeypatch.setenv("WORKSPACE_TOOL_DATABASE_URL", url_string)  # wins over DATABASE_URL
    result = cli("ensure", "from-env", url=None)
    assert result.exit_code == 0, result.stderr
    monkeypatch.delenv("WORKSPACE_TOOL_DATABASE_URL")
    result = cli("list", url=None)
    assert result.exit_code == 1
    assert "127.0.0.1" in result.stderr


def test_missing_alembic_ini(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli("ensure", "demo", config=None)
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: alembic config not found: alembic.ini (./alembic.ini); pass -c/--config PATH or set "
        "WORKSPACE_TOOL_CONFIG\n"
    )
    given = cli("ensure", "demo", config=tmp_path / "missing.ini")
    assert given.stderr == (
        f"Error: alembic config not found: {tmp_path / 'missing.ini'} (the path given); pass -c/--config PATH "
        "or set WORKSPACE_TOOL_CONFIG\n"
    )
    monkeypatch.setenv("WORKSPACE_TOOL_CONFIG", str(ALEMBIC_INI))
    assert cli("ensure", "demo", config=None).exit_code == 0


def test_every_core_command_has_help(cli: Cli) -> None:
    for command in ("init", "ensure", "list", "drop"):
        result = cli(command, "--help", url=None, config=None)
        assert result.exit_code == 0
        assert result.stdout.startswith(f"Usage: workspace-tool {command} ")


# --------------------------------------------------------------------- the real entry point
def run_tool(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("WORKSPACE_TOOL_DATABASE_URL", "DATABASE_URL")}
    return subprocess.run(
        [WORKSPACE_TOOL, *args],
        env={**base, **(env or {})},
        stdin=subprocess.DEVNULL,  # no terminal, whoever runs the tests: a command that asks first refuses
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_installed_entry_point_exit_codes(engine: sa.Engine, url_string: str) -> None:
    common = ["--database-url", url_string, "-c", str(ALEMBIC_INI)]
    ok = run_tool(*common, "ensure", "sub-demo")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[1].startswith(f"sub-demo    project_sub_demo  create  {HEAD}  ")
    current = run_tool(*common, "ensure", "sub-demo")  # a new process: reads the schema, says current
    assert current.returncode == 0
    assert " current " in current.stdout

    bad = run_tool(*common, "ensure", "Sub-Demo")
    assert bad.returncode == 1
    assert bad.stdout == ""
    assert bad.stderr == f"Error: invalid project id 'Sub-Demo': character 'S' is not allowed; {ID_RULE}\n"

    unconfirmed = run_tool(*common, "drop", "sub-demo")  # no terminal to ask on, no --yes
    assert unconfirmed.returncode == 1 and "pass --yes to confirm" in unconfirmed.stderr
    assert schema_exists(engine, "project_sub_demo")

    traced = run_tool(*common, "--traceback", "ensure", "Sub-Demo")
    assert traced.returncode == 1
    assert traced.stderr.startswith("Traceback (most recent call last):")
    assert traced.stderr.rstrip().splitlines()[-1] == (
        f"workspace_tool.errors.InvalidProjectId: invalid project id 'Sub-Demo': character 'S' is not allowed; "
        f"{ID_RULE}"
    )


@pytest.mark.slow  # a process of its own; test_secrets.py's unreachable URLs run the same CLI in this one
def test_installed_entry_point_hides_the_password(engine: sa.Engine) -> None:
    result = run_tool("--database-url", f"postgresql://alice:{SECRET}@127.0.0.1:9/db", "-c", str(ALEMBIC_INI), "init")
    assert result.returncode == 1
    assert SECRET not in result.stdout + result.stderr
    assert result.stderr.startswith("Error: database connection failed")
    assert len(result.stderr.splitlines()) == 1
