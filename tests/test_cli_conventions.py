"""The CLI's conventions (issue 22, section 2): an unknown project id is an error naming it; one state
vocabulary; no silent wrong-way upgrade or downgrade; destructive commands confirm (--yes without a
terminal); -q/-v after the command's name; check's findings grouped; progress lines when stderr is not a
terminal; ensure's action words are the registry's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from support.chains import ChainBuilder
from support.cli import assert_one_line_error, run_cli
from support.db import database_state, schema_exists

from workspace_tool import fleet
from workspace_tool.chain import Chain
from workspace_tool.cli import main, options
from workspace_tool.cli.render import ProgressPrinter

ITEMS = """
op.create_table("items", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.Text, nullable=False))
"""
INDEX = 'op.create_index("ix_items_name", "items", ["name"])'
UNINDEX = 'op.drop_index("ix_items_name", table_name="items")'


@pytest.fixture
def ini(engine: sa.Engine, chain_builder: ChainBuilder) -> Path:
    """A two-revision chain; projects p1, p2 at a2 (head), p3 at a1."""
    chain_builder.add("a1", ITEMS, 'op.drop_table("items")')
    chain_builder.add("a2", INDEX, UNINDEX)
    chain = Chain.load(chain_builder.ini)
    fleet.provision(engine, chain, ["p1", "p2"], target="a2", jobs=2)
    fleet.provision(engine, chain, ["p3"], target="a1", jobs=1)
    return Path(chain_builder.ini)


def cli(url: str, ini: Path, *args: str) -> Result:
    return run_cli("--database-url", url, "-c", str(ini), *args)


# ---------------------------------------------------------------- 1. unknown ids
@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["check"],
        ["upgrade"],
        ["upgrade", "--sql"],
        ["downgrade", "--to", "a1", "--yes"],
        ["drop", "--yes"],
    ],
)
def test_an_unknown_project_id_is_an_error_naming_it(
    engine: sa.Engine, url_string: str, ini: Path, command: list[str]
) -> None:
    before = database_state(engine)
    line = assert_one_line_error(cli(url_string, ini, *command, "p1", "nosuch"), "no project nosuch")
    assert "p1" not in line and "nothing was changed" in line
    assert database_state(engine) == before


def test_several_unknown_ids_are_named_in_one_line(engine: sa.Engine, url_string: str, ini: Path) -> None:
    many = [f"x{i}" for i in range(8)]
    line = assert_one_line_error(cli(url_string, ini, "status", "x-a", "p1", "x-b"), "2 unknown project ids: x-a, x-b")
    assert "p1" not in line
    assert_one_line_error(
        cli(url_string, ini, "upgrade", *many), "8 unknown project ids: x0, x1, x2, x3, x4 and 3 more"
    )


# ---------------------------------------------------------------- 3. the wrong way
def test_upgrade_to_an_older_revision_is_refused(engine: sa.Engine, url_string: str, ini: Path) -> None:
    before = database_state(engine)
    assert_one_line_error(
        cli(url_string, ini, "upgrade", "p1", "p3", "--to", "a1"),
        "that is a downgrade for project_p1 (at a2): use `workspace-tool downgrade p1 p3 --to a1`",
    )
    assert_one_line_error(cli(url_string, ini, "upgrade", "--all", "--to", "base"), "that is a downgrade")
    assert_one_line_error(
        cli(url_string, ini, "downgrade", "p3", "--to", "a2", "--yes"),
        "that is an upgrade for project_p3 (at a1): use `workspace-tool upgrade p3 --to a2`",
    )
    assert_one_line_error(cli(url_string, ini, "downgrade", "--all", "--to", "head", "--yes"), "that is an upgrade")
    assert database_state(engine) == before
    assert cli(url_string, ini, "upgrade", "p3", "--to", "a2").exit_code == 0  # the right way still works


# ---------------------------------------------------------------- 4. --yes
@pytest.mark.parametrize(
    "command",
    [
        ["downgrade", "--all", "--to", "a1"],
        ["downgrade", "p1", "--to", "base"],
        ["drop", "p1", "p2"],
        ["drop", "p1"],
        ["drop", "--match", "p*"],
        ["drop", "p1", "--retain", "1d"],
        ["drop", "--purge-expired"],
        ["purge", "p1"],
        ["stamp", "p1", "base"],
        ["move", "p1", "--to-url", "postgresql://nowhere.invalid/db"],
        ["pool", "drain"],
    ],
)
def test_destructive_commands_without_a_terminal_need_yes(
    engine: sa.Engine, url_string: str, ini: Path, command: list[str]
) -> None:
    before = database_state(engine)
    assert_one_line_error(cli(url_string, ini, *command), "pass --yes to confirm", "nothing was changed")
    assert database_state(engine) == before


def test_downgrade_all_with_yes_downgrades(engine: sa.Engine, url_string: str, ini: Path) -> None:
    result = cli(url_string, ini, "downgrade", "--all", "--to", "a1", "-y")
    assert result.exit_code == 0, result.output
    assert "downgrade to a1: 2 ok, 0 failed, 1 skipped" in result.stderr


def test_destructive_commands_ask_on_a_terminal(
    engine: sa.Engine, url_string: str, ini: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(options, "on_a_terminal", lambda: True)
    base = ["--database-url", url_string, "-c", str(ini)]
    before = database_state(engine)
    refused = CliRunner().invoke(main, [*base, "drop", "p1", "p2"], input="n\n")
    assert refused.exit_code == 1
    assert "dropping project_p1, project_p2 deletes all their data. Go on? [y/N]" in refused.stderr
    assert refused.stderr.splitlines()[-1] == "Error: not confirmed; nothing was changed"
    assert database_state(engine) == before

    agreed = CliRunner().invoke(main, [*base, "drop", "p1", "p2"], input="y\n")
    assert agreed.exit_code == 0, agreed.output
    assert not schema_exists(engine, "project_p1") and not schema_exists(engine, "project_p2")


# ---------------------------------------------------------------- 5. -q / -v after the command
def test_quiet_and_verbose_after_the_command(engine: sa.Engine, url_string: str, ini: Path) -> None:
    quiet = cli(url_string, ini, "upgrade", "--all", "-q")
    assert (quiet.exit_code, quiet.stderr) == (0, "")
    assert cli(url_string, ini, "status", "-q", "nosuch").stderr.startswith("Error: no project nosuch")
    pool_status = cli(url_string, ini, "pool", "status", "-q")
    assert (pool_status.exit_code, pool_status.stderr) == (0, "")
    assert cli(url_string, ini, "pool", "drain", "-q", "--yes").stderr == ""
    verbose = cli(url_string, ini, "status", "p1", "-v")
    assert verbose.exit_code == 0 and "INFO workspace_tool" in verbose.stderr
    both = cli(url_string, ini, "-v", "status", "-q")
    assert both.exit_code == 2 and "-v/--verbose and -q/--quiet don't go together" in both.stderr


# ---------------------------------------------------------------- 2. one state vocabulary
def test_the_states_status_writes_are_the_ones_state_takes(engine: sa.Engine, url_string: str, ini: Path) -> None:
    named = json.loads(cli(url_string, ini, "status", "--json", "p1", "p3").stdout)
    assert [(s["project_id"], s["state"]) for s in named] == [("p1", "at-head"), ("p3", "behind")]
    summary = json.loads(cli(url_string, ini, "status", "--json").stdout)
    assert summary["counts"] == {
        "at-head": 2,
        "behind": 1,
        "ahead": 0,
        "failed": 0,
        "empty": 0,
        "missing": 0,
        "orphan": 0,
    }
    assert {r["state"] for r in summary["revisions"]} == {"at-head", "behind"}
    table = cli(url_string, ini, "status", "p1").stdout
    assert table.splitlines()[1].split()[3] == "at-head"
    for state in summary["counts"]:  # every state status writes is a state --state takes
        result = cli(url_string, ini, "upgrade", "--all", "--state", state, "--sql")
        assert result.exit_code == 0, (state, result.output)
    selected = cli(url_string, ini, "upgrade", "--all", "--state", "at-head", "--sql", "--json")
    assert sorted(s["project_id"] for s in json.loads(selected.stdout)) == ["p1", "p2"]


def test_state_takes_the_old_spellings_and_refuses_others(engine: sa.Engine, url_string: str, ini: Path) -> None:
    for old in ("at head", "AT_HEAD", "ahead/unknown"):
        assert cli(url_string, ini, "upgrade", "--all", "--state", old, "--sql").exit_code == 0, old
    refused = cli(url_string, ini, "upgrade", "--all", "--state", "done")
    assert refused.exit_code == 2
    assert "'done' is not a state: at-head, behind, ahead, failed, empty, missing, orphan" in refused.stderr


# ---------------------------------------------------------------- 8. ensure's words
def test_ensure_prints_the_registrys_action_words(engine: sa.Engine, url_string: str, ini: Path) -> None:
    def actions(*args: str) -> list[str]:
        result = cli(url_string, ini, "ensure", *args)
        assert result.exit_code == 0, result.output
        return [line.split()[2] for line in result.stdout.splitlines()[1:]]

    assert actions("p3", "p1", "new") == ["upgrade", "current", "create"]
    status = json.loads(cli(url_string, ini, "status", "--json", "p3", "new").stdout)
    assert {s["project_id"]: s["last_action"] for s in status} == {"p3": "upgrade", "new": "create"}  # status's words
    again = json.loads(cli(url_string, ini, "ensure", "--json", "p3", "new").stdout)
    assert [r["action"] for r in again] == ["current", "current"]


# ---------------------------------------------------------------- 7. progress without a terminal
class Lines:
    """A stream that is not a terminal, keeping what is written."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def run_events(total: int, setup_s: float, per_s: float, **printer: float) -> list[str]:
    """The lines a ProgressPrinter writes for a run whose fleet read took ``setup_s`` seconds, then migrated
    ``per_s`` schemas a second (the events carry the times: no clock is read)."""
    stream = Lines()
    show = ProgressPrinter(stream, **printer)  # type: ignore[arg-type]
    show(fleet.Progress(0, total, 0, setup_s, None))
    for done in range(1, total + 1):
        result = fleet.SchemaResult(f"p{done}", f"project_p{done}", "a1", "a2", fleet.OK, ms=1.0)
        show(fleet.Progress(done, total, 0, setup_s + done / per_s, result))
    show.finish()
    return stream.text.splitlines()


def test_progress_lines_every_tenth_with_an_eta_from_the_rate_since_the_start() -> None:
    lines = run_events(200, setup_s=30.0, per_s=10.0)  # a tenth every 2 s: a line at each
    assert lines[0] == "200 schema(s) to migrate"
    assert lines[1:-1] == [
        f"{done}/200 done, 0 failed, 10.0/s, ETA {(200 - done) // 10}s" for done in range(20, 200, 20)
    ]
    assert lines[-1] == "200/200 done, 0 failed, 10.0/s, ETA 0s"


def test_progress_lines_every_interval_on_a_slow_run_and_no_eta_before_a_few() -> None:
    lines = run_events(1000, setup_s=12.0, per_s=1.0, interval_s=5.0)  # a tenth takes 100 s
    assert lines[1:4] == [
        "5/1000 done, 0 failed, 1.0/s, ETA 16m35s",
        "10/1000 done, 0 failed, 1.0/s, ETA 16m30s",
        "15/1000 done, 0 failed, 1.0/s, ETA 16m25s",
    ]
    assert len(lines) == 1 + 1000 // 5
    early = run_events(100, setup_s=1.0, per_s=1.0, interval_s=2.0)
    assert early[1:3] == ["2/100 done, 0 failed, 1.0/s, ETA -", "4/100 done, 0 failed, 1.0/s, ETA -"]
    assert early[3] == "6/100 done, 0 failed, 1.0/s, ETA 1m34s"


# ---------------------------------------------------------------- 6. check groups its findings
def test_check_prints_one_line_per_distinct_difference(engine: sa.Engine, url_string: str, ini: Path) -> None:
    behind = [f"q{i:02d}" for i in range(1, 9)]
    fleet.provision(engine, Chain.load(ini), behind, target="a1", jobs=2)
    with engine.begin() as conn:
        for schema in ("project_p1", "project_p2"):
            conn.execute(sa.text(f"ALTER TABLE {schema}.items ADD COLUMN by_hand int"))

    result = cli(url_string, ini, "check")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "9 schema(s), behind: at revision a1, head is a2 (project_p3, project_q01, project_q02, project_q03, "
        "project_q04 and 4 more)",
        "2 schema(s), at-head: unexpected relations.items.columns.by_hand (project_p1, project_p2)",
    ]
    assert result.stderr == "11 schema(s) checked against head a2: 11 differ, in 2 distinct difference(s)\n"

    every = cli(url_string, ini, "check", "-v").stdout.splitlines()
    assert every[0].endswith("(" + ", ".join(["project_p3", *(f"project_{q}" for q in behind)]) + ")")

    report = json.loads(cli(url_string, ini, "check", "--json").stdout)  # JSON: every schema in full
    assert report["failing"] == 11
    assert {s["schema"]: s["problems"] for s in report["schemas"] if s["state"] == "at-head"} == {
        "project_p1": ["unexpected relations.items.columns.by_hand"],
        "project_p2": ["unexpected relations.items.columns.by_hand"],
    }
