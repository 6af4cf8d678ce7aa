"""The fleet commands as a DBA runs them: exit codes, reports on stdout, progress on stderr."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from sqlalchemy.engine import URL
from support.chains import ChainBuilder
from support.cli import CLI
from support.concurrency import GATE, Gate, waiting_on_advisory
from support.data import add_rows, make_schema_by_hand
from support.db import backends, database_state, schema_version

from workspace_tool import fleet, spares
from workspace_tool.chain import Chain
from workspace_tool.cli import main
from workspace_tool.cli.options import parse_duration_ms
from workspace_tool.cli.render import ProgressPrinter
from workspace_tool.sql import LOCK_SQL, lock_key

ITEMS = """
op.create_table("items", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.Text, nullable=False))
"""
IDS = [f"c{i:02d}" for i in range(1, 13)]


@pytest.fixture
def ini(engine: sa.Engine, chain_builder: ChainBuilder) -> Path:
    chain_builder.add("a1", ITEMS, 'op.drop_table("items")')
    chain_builder.add(
        "a2",
        'op.create_index("ux_items_name", "items", ["name"], unique=True)',
        'op.drop_index("ux_items_name", table_name="items")',
    )
    fleet.provision(engine, Chain.load(chain_builder.ini), IDS, target="a1", jobs=4)
    return Path(chain_builder.ini)


def cli(url: str, ini: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--database-url", url, "-c", str(ini), *args])


def test_upgrade_all_reports_each_failed_schema_and_exits_1(engine: sa.Engine, url_string: str, ini: Path) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO project_c03.items (name) VALUES ('x'), ('x')"))
    before = backends(engine)

    result = cli(url_string, ini, "upgrade", "--all", "--jobs", "3")

    assert result.exit_code == 1, result.output
    assert "/12] project_c03 failed: could not create unique index" in result.stderr
    assert "12/12 done, 1 failed" in result.stderr  # plain progress lines: stderr is not a terminal
    assert "upgrade to a2: 11 ok, 1 failed, 0 skipped" in result.stderr
    assert "project_c03" in result.stdout and "Key (name)=(x) is duplicated" in result.stdout
    deadline = time.monotonic() + 5  # the CLI's connections are closed (a backend exits just after)
    while backends(engine) > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backends(engine) <= before

    rerun = cli(url_string, ini, "upgrade", "--all", "--json")
    report = json.loads(rerun.stdout)
    assert rerun.exit_code == 1 and report["counts"] == {"ok": 0, "failed": 1, "skipped": 11, "gone": 0}
    (failed,) = [r for r in report["results"] if r["status"] == "failed"]
    assert failed["schema"] == "project_c03" and failed["from_revision"] == "a1" and failed["to_revision"] == "a2"
    assert set(failed) >= {"project_id", "schema", "from_revision", "to_revision", "status", "ms", "error"}


def test_named_projects_fail_fast_by_default(engine: sa.Engine, url_string: str, ini: Path) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO project_c01.items (name) VALUES ('x'), ('x')"))
    result = cli(url_string, ini, "upgrade", "c01", "c02", "c03", "--jobs", "1", "--json")
    statuses = {r["project_id"]: (r["status"], r["note"]) for r in json.loads(result.stdout)["results"]}
    assert result.exit_code == 1
    assert statuses["c01"][0] == "failed" and statuses["c02"][0] == statuses["c03"][0] == "skipped"
    assert "fail-fast" in str(statuses["c02"][1])

    result = cli(url_string, ini, "upgrade", "c01", "c02", "c03", "--continue-on-error", "--json")
    counts = json.loads(result.stdout)["counts"]
    assert counts == {"ok": 2, "failed": 1, "skipped": 0, "gone": 0}


def test_sql_prints_the_statements_and_changes_nothing(engine: sa.Engine, url_string: str, ini: Path) -> None:
    result = cli(url_string, ini, "upgrade", "--all", "--sql", "--lock-timeout", "2s")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("CREATE UNIQUE INDEX ux_items_name ON items (name);") == 12
    assert 'SET LOCAL search_path TO "project_c07", "workspace_extensions";' in result.stdout
    assert "SET LOCAL lock_timeout = '2000ms';" in result.stdout
    assert "12 schema(s) would change; nothing was changed." in result.stderr
    assert all(schema_version(engine, f"project_{p}") == "a1" for p in IDS)


def test_downgrade_all_to_an_older_revision_and_back(engine: sa.Engine, url_string: str, ini: Path) -> None:
    assert cli(url_string, ini, "upgrade", "--all").exit_code == 0
    down = cli(url_string, ini, "downgrade", "--all", "--to", "a1", "--yes")
    assert down.exit_code == 0, down.output
    assert "downgrade to a1: 12 ok, 0 failed, 0 skipped" in down.stderr
    assert all(schema_version(engine, f"project_{p}") == "a1" for p in IDS)
    up = cli(url_string, ini, "upgrade", "--all")
    assert up.exit_code == 0 and all(schema_version(engine, f"project_{p}") == "a2" for p in IDS)
    assert cli(url_string, ini, "check").exit_code == 0


def test_status_counts_the_fleet_and_names_missing_and_orphan_schemas(
    engine: sa.Engine, url_string: str, ini: Path
) -> None:
    assert cli(url_string, ini, "upgrade", "c01", "c02").exit_code == 0
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA project_c05 CASCADE"))
        conn.execute(sa.text("DELETE FROM project_registry.workspace_config WHERE project_id = 'c06'"))
        conn.execute(sa.text("UPDATE project_c07.alembic_version SET version_num = 'zz_future'"))
        conn.execute(sa.text("UPDATE project_registry.workspace_config SET status = 'failed' WHERE project_id = 'c08'"))

    result = cli(url_string, ini, "status", "--json")

    summary = json.loads(result.stdout)
    assert summary["head"] == "a2" and summary["total"] == 12
    assert summary["counts"] == {
        "at-head": 2,
        "behind": 6,
        "ahead": 1,
        "failed": 1,
        "empty": 0,
        "missing": 1,
        "orphan": 1,
    }
    assert [m["schema"] for m in summary["missing"]] == ["project_c05"]
    assert [(o["schema"], o["revision"]) for o in summary["orphans"]] == [("project_c06", "a1")]
    assert {"revision": "a1", "state": "behind", "schemas": 6} in summary["revisions"]

    table = cli(url_string, ini, "status")
    assert table.exit_code == 0
    assert "12 project(s); head is a2" in table.stdout
    assert "Project schemas not in the registry (orphans):" in table.stdout and "project_c06" in table.stdout
    assert "Registered, schema missing:" in table.stdout and "project_c05" in table.stdout

    check = cli(url_string, ini, "check")
    assert check.exit_code == 1
    assert "1 schema(s), orphan: not in the registry (orphan) (project_c06)" in check.stdout.splitlines()
    assert "1 schema(s), ahead: at revision zz_future, head is a2 (" in check.stdout


def test_check_names_the_drifted_schema(engine: sa.Engine, url_string: str, ini: Path) -> None:
    assert cli(url_string, ini, "upgrade", "--all").exit_code == 0
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE project_c04.items ADD COLUMN extra text"))
    result = cli(url_string, ini, "check", "--json")
    report = json.loads(result.stdout)
    assert result.exit_code == 1 and report["failing"] == 1
    (bad,) = [s for s in report["schemas"] if not s["ok"]]
    assert bad["schema"] == "project_c04" and bad["problems"] == ["unexpected relations.items.columns.extra"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["upgrade"], 2, "name the projects, or pass --all"),
        (["upgrade", "--all", "c01"], 2, "name the projects, or pass --all"),
        (["upgrade", "Bad_Id"], 1, "Error: invalid project id 'Bad_Id'"),
        (["upgrade", "--all", "--lock-timeout", "soon"], 2, "is not a duration"),
        (["upgrade", "--all", "--to", "nope"], 1, "Error: unknown revision 'nope'"),
        (["upgrade", "--all", "--to", ""], 1, "Error: no revision given"),  # not a traceback
        (["downgrade", "c01", "--to", "", "--yes"], 1, "Error: no revision given"),
        (["stamp", "c01", "", "--yes"], 1, "Error: no revision given"),
        (["show", ""], 1, "Error: no revision given"),
        (["downgrade", "--all"], 2, "Missing option '--to'"),
        (["check", "bad--id"], 1, "Error: invalid project id"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    engine: sa.Engine, url_string: str, ini: Path, args: list[str], code: int, message: str
) -> None:
    result = cli(url_string, ini, *args)
    assert result.exit_code == code and message in result.stderr
    if code == 1:
        assert len(result.stderr.strip().splitlines()) == 1
    assert all(schema_version(engine, f"project_{p}") == "a1" for p in IDS)


def test_durations_and_progress_rendering() -> None:
    assert [parse_duration_ms(v) for v in ("5s", "200ms", "1.5s", "2min", "750")] == [5000, 200, 1500, 120000, 750]
    lines: list[str] = []

    class Stream:
        def write(self, text: str) -> None:
            lines.append(text)

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return True

    printer = ProgressPrinter(Stream())  # type: ignore[arg-type]
    result = fleet.SchemaResult("x", "project_x", "a1", "a2", fleet.OK, ms=1.0)
    printer(fleet.Progress(0, 4, 0, 0.25, None))
    printer(fleet.Progress(1, 4, 0, 0.5, result))
    printer.finish()
    assert lines[0] == "4 schema(s) to migrate\n"
    assert lines[1].startswith("\r[#######.......................] 1/4 done, 0 failed, 4.0/s, ETA -")


def test_upgrade_adopt_runs_the_chain_into_a_named_hand_made_schema(
    engine: sa.Engine, url_string: str, ini: Path
) -> None:

    make_schema_by_hand(engine, "project_legacy", "invoices")
    before = database_state(engine)
    # --sql shows what a run would do: refuse the schema without --adopt (no SQL), run the chain into it with
    shown = cli(url_string, ini, "upgrade", "legacy", "--sql")
    assert shown.exit_code == 0 and shown.stdout == "", (shown.stdout, shown.stderr)
    assert "0 schema(s) would change" in shown.stderr and "no alembic_version" in shown.stderr
    assert "`workspace-tool ensure legacy --adopt`" in shown.stderr
    shown = cli(url_string, ini, "upgrade", "legacy", "--sql", "--adopt")
    assert shown.exit_code == 0 and "CREATE TABLE" in shown.stdout, (shown.stdout, shown.stderr)
    assert database_state(engine) == before  # nothing ran
    refused = cli(url_string, ini, "upgrade", "legacy")
    assert refused.exit_code == 1 and "no alembic_version" in refused.stdout and "--adopt" in refused.stdout
    adopted = cli(url_string, ini, "upgrade", "legacy", "--adopt")
    assert adopted.exit_code == 0, adopted.output
    assert "upgrade to a2: 1 ok, 0 failed, 0 skipped" in adopted.stderr
    assert schema_version(engine, "project_legacy") == "a2"


def test_two_upgrade_all_at_once_each_say_which_schemas_the_other_moved(
    engine: sa.Engine, url_string: str, ini: Path
) -> None:
    command = [
        *CLI,
        "--database-url",
        url_string,
        "-c",
        str(ini),
        "upgrade",
        "--all",
        "-j",
        "2",
        "--lock-timeout",
        "1min",
    ]
    with engine.connect() as admin:
        admin.execute(sa.text("BEGIN"))
        for project_id in IDS:  # every schema's lock: both runs read the fleet, then wait on it
            admin.execute(sa.text(LOCK_SQL), {"key": lock_key(f"project_{project_id}")})
        runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
        waiting_on_advisory(admin, 4)  # two workers of each run
        admin.rollback()
    outputs = [run.communicate(timeout=120) for run in runs]

    migrated = 0
    for run, (_out, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err
        summary = re.search(r"upgrade to a2: (\d+) ok, 0 failed, (\d+) skipped(.*) in ", err)
        assert summary is not None, err
        ok, skipped = int(summary.group(1)), int(summary.group(2))
        assert ok + skipped == len(IDS)
        assert summary.group(3) == (f" ({skipped} already at target: moved by another run)" if skipped else "")
        migrated += ok
    assert migrated == len(IDS)  # each schema migrated once, by one run or the other
    assert all(schema_version(engine, f"project_{p}") == "a2" for p in IDS)


def test_jobs_beyond_the_default_pool_all_hold_a_connection_at_once(
    engine: sa.Engine, url_string: str, chain_builder: ChainBuilder
) -> None:
    """--jobs 20: twenty schemas are inside their migration at the same time (the pool is sized for it)."""

    chain_builder.add("a1", ITEMS).add("a2", f'op.execute("SELECT pg_advisory_xact_lock_shared({GATE})")')
    ids = [f"j{i:02d}" for i in range(20)]
    assert fleet.provision(engine, Chain.load(chain_builder.ini), ids, target="a1", jobs=4).ok
    gate = Gate(engine)
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(cli, url_string, chain_builder.ini, "upgrade", "--all", "--jobs", "20")
        inside = gate.wait_for(20, limit=20)
        gate.open()
        result = run.result(timeout=120)
    assert inside == 20
    assert result.exit_code == 0, result.output
    assert "upgrade to a2: 20 ok, 0 failed, 0 skipped" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["upgrade", "--all"],
        ["exec", "--all", "-c", "SELECT 1"],
        ["drop", "--match", "c0*", "--yes"],
        ["drop", "c01", "c02", "--yes"],
        ["ensure", "n01", "n02"],
    ],
)
def test_every_fleet_command_sizes_its_pool_for_jobs(url_string: str, ini: Path, args: list[str]) -> None:
    """--jobs 20 needs more connections than the default pool gives: every fleet command makes its engine for
    the jobs asked, also those that read the registry before the run (drop, ensure)."""
    result = cli(url_string, ini, *args, "--jobs", "20")
    assert result.exit_code == 0, result.stderr
    assert "with 20 jobs" in result.stderr


# ------------------------------------------------------------------ staged rollouts (issue 14 §2)
def test_a_canary_that_fails_stops_the_run_and_the_summary_says_where(
    engine: sa.Engine, url_string: str, ini: Path
) -> None:
    add_rows(engine, "c03", "x", "x")  # the canary is c01, c02, c03

    result = cli(url_string, ini, "upgrade", "--all", "--canary", "3", "--jobs", "2")

    assert result.exit_code == 1, result.output
    assert "12 schema(s) to migrate: a canary of 3 first" in result.stderr
    assert "Stopping: a schema in the canary failed; starting no more schemas\n" in result.stderr
    assert "upgrade to a2: 2 ok, 1 failed, 9 skipped (9 not started: a schema in the canary failed)" in result.stderr
    assert "Stopped in the canary stage: a schema in the canary failed; the main stage was not started" in (
        result.stderr
    )
    assert re.search(r"^canary\s+3\s+yes\s+2\s+1\s+0\s+1$", result.stdout, re.M), result.stdout
    assert re.search(r"^main\s+9\s+no\s+0\s+0\s+9\s+-$", result.stdout, re.M), result.stdout
    assert re.search(r"^c03\s+project_c03\s+canary\s+a1\s+a2\s+1\s+", result.stdout, re.M), result.stdout
    assert [schema_version(engine, f"project_{p}") for p in IDS] == ["a2", "a2", *["a1"] * 10]

    report = json.loads(cli(url_string, ini, "upgrade", "--all", "--canary", "2", "--json").stdout)
    assert report["stopped_stage"] == "canary" and report["stopped"] == "a schema in the canary failed"
    assert [(s["stage"], s["schemas"], s["ran"], s["counts"]) for s in report["stages"]] == [
        ("canary", 2, True, {"ok": 1, "failed": 1, "skipped": 0, "gone": 0}),  # c03 (still failing) and c04
        ("main", 8, False, {"ok": 0, "failed": 0, "skipped": 8, "gone": 0}),
    ]
    stages = {r["project_id"]: r["stage"] for r in report["results"]}
    assert stages == {"c01": None, "c02": None, "c03": "canary", "c04": "canary", **dict.fromkeys(IDS[4:], "main")}


def test_canary_only_prints_the_command_that_does_the_rest(engine: sa.Engine, url_string: str, ini: Path) -> None:
    ids_file = ini.parent / "canary.txt"
    ids_file.write_text("# first\nc07\nc02, c11\n")

    result = cli(url_string, ini, "upgrade", "--all", "--canary-ids-from", str(ids_file), "--canary-only", "-j", "2")

    assert result.exit_code == 0, result.output
    assert "upgrade to a2: 3 ok, 0 failed, 9 skipped (9 not started: --canary-only" in result.stderr
    lines = result.stderr.splitlines()
    continues = lines.index("The canary passed. To go on with the other 9 schema(s), run:") + 1
    command = shlex.split(lines[continues])
    assert command == ["workspace-tool", "--database-url", url_string, "-c", str(ini), "upgrade", "--all", "-j", "2"]
    assert [p for p in IDS if schema_version(engine, f"project_{p}") == "a2"] == ["c02", "c07", "c11"]

    rest = CliRunner().invoke(main, command[1:])

    assert rest.exit_code == 0, rest.output
    assert "upgrade to a2: 9 ok, 0 failed, 3 skipped" in rest.stderr
    assert all(schema_version(engine, f"project_{p}") == "a2" for p in IDS)


def test_canary_only_json_carries_the_next_command_without_the_password(database_url: URL, ini: Path) -> None:
    with_password = database_url.set(password="s3cret-pw").render_as_string(hide_password=False)  # not checked

    result = cli(
        with_password, ini, "upgrade", "--all", "--canary=10%", "--canary-only", "--json", "--max-failures", "3"
    )

    report = json.loads(result.stdout)
    assert result.exit_code == 0 and report["stopped_stage"] == "canary"
    assert [(s["stage"], s["schemas"], s["ran"], s["max_failures"]) for s in report["stages"]] == [
        ("canary", 2, True, 1),  # 10% of 12, rounded up
        ("main", 10, False, 3),
    ]
    command = shlex.split(report["next_command"])
    assert command[3:] == ["-c", str(ini), "upgrade", "--all", "--json", "--max-failures", "3"]
    assert "s3cret-pw" not in result.output and ":***@" in command[2]


def test_a_rerun_whose_named_canary_is_already_at_the_target_says_so_and_goes_on_only_if_asked(
    engine: sa.Engine, url_string: str, ini: Path
) -> None:
    canary = ("upgrade", "--all", "--canary-ids", "c02,c05")
    assert cli(url_string, ini, *canary, "--canary-only").exit_code == 0

    again = cli(url_string, ini, *canary, "--canary-only")  # the same command, rerun

    assert again.exit_code == 0, again.output
    lines = again.stderr.splitlines()
    said = lines.index(
        "The canary's 2 schema(s) are already at the target: nothing to canary. To go on with the other 10 "
        "schema(s), run:"
    )
    assert shlex.split(lines[said + 1])[-2:] == ["upgrade", "--all"]
    assert "The canary passed" not in again.stderr
    assert re.search(r"^canary\s+0\s+no\s+0\s+0\s+0\s+1$", again.stdout, re.M), again.stdout
    assert [p for p in IDS if schema_version(engine, f"project_{p}") == "a2"] == ["c02", "c05"]
    report = json.loads(cli(url_string, ini, *canary, "--canary-only", "--json").stdout)
    assert [(s["stage"], s["schemas"], s["ran"], s["already_at_target"]) for s in report["stages"]] == [
        ("canary", 0, False, 2),
        ("main", 10, False, 0),
    ]

    rest = cli(url_string, ini, *canary)  # without --canary-only: the command asks for the rest too

    assert rest.exit_code == 0, rest.output
    assert "The canary's 2 schema(s) are already at the target: nothing to canary; the main stage went on" in (
        rest.stderr
    )
    assert "upgrade to a2: 10 ok, 0 failed, 2 skipped" in rest.stderr
    assert all(schema_version(engine, f"project_{p}") == "a2" for p in IDS)


def started_order(engine: sa.Engine) -> list[str]:
    """The projects at a2, in the order a run with --jobs 1 migrated them (their registry rows' times)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT project_id FROM project_registry.workspace_config WHERE revision = 'a2' ORDER BY updated_at"
            )
        )
        return list(rows.scalars())


def test_the_command_after_a_random_canary_carries_the_seed_drawn_and_does_the_rest_in_the_same_order(
    engine: sa.Engine, url_string: str, ini: Path
) -> None:
    canary = cli(url_string, ini, "upgrade", "--all", "--order", "random", "--canary", "3", "--canary-only", "-j", "1")
    assert canary.exit_code == 0, canary.output
    seed = int(re.findall(r"Started in random order, seed (\d+)", canary.stderr)[0])
    lines = canary.stderr.splitlines()
    command = shlex.split(lines[lines.index("The canary passed. To go on with the other 9 schema(s), run:") + 1])
    assert command[-2:] == ["--seed", str(seed)]
    first = started_order(engine)

    rest = CliRunner().invoke(main, command[1:])

    assert rest.exit_code == 0 and "upgrade to a2: 9 ok, 0 failed, 3 skipped" in rest.stderr, rest.output
    in_two = started_order(engine)
    assert in_two[:3] == first
    # one run with that seed, canary and all, starts the schemas in the same order
    assert cli(url_string, ini, "downgrade", "--all", "--to", "a1", "--yes").exit_code == 0
    whole = cli(url_string, ini, "upgrade", "--all", "--order", "random", "--seed", str(seed), "-j", "1")
    assert whole.exit_code == 0 and started_order(engine) == in_two


def test_max_failures_stops_the_run_and_progress_says_so(engine: sa.Engine, url_string: str, ini: Path) -> None:
    for project_id in ("c02", "c04", "c06"):
        add_rows(engine, project_id, "x", "x")

    result = cli(url_string, ini, "upgrade", "--all", "--max-failures", "2", "--jobs", "1")

    assert result.exit_code == 1
    reason = "2 schema(s) failed, the --max-failures 2 limit"
    assert f"Stopping: {reason}; starting no more schemas\n" in result.stderr
    assert f"upgrade to a2: 2 ok, 2 failed, 8 skipped (8 not started: {reason})" in result.stderr
    assert [schema_version(engine, f"project_{p}") for p in IDS][:5] == ["a2", "a1", "a2", "a1", "a1"]


def test_selection_by_state_glob_and_file(engine: sa.Engine, url_string: str, ini: Path) -> None:
    assert cli(url_string, ini, "upgrade", "c01", "c02").exit_code == 0
    listed = ini.parent / "ids.txt"
    listed.write_text("c01\nc05\nc06\nc10\n")

    sql = cli(url_string, ini, "upgrade", "--all", "--sql", "--state", "behind", "--match", "c1*", "--canary", "1")
    assert sql.exit_code == 0 and sql.stdout.count("CREATE UNIQUE INDEX") == 3  # c10, c11, c12: no stages
    result = cli(url_string, ini, "upgrade", "--all", "--state", "at-head,behind", "--ids-from", str(listed))

    assert result.exit_code == 0, result.output
    assert "upgrade to a2: 3 ok, 0 failed, 1 skipped" in result.stderr
    assert "Selected 4 of 12 project(s): state at-head, behind; one of 4 listed ids" in result.stderr
    assert [p for p in IDS if schema_version(engine, f"project_{p}") == "a2"] == ["c01", "c02", "c05", "c06", "c10"]


def test_a_selection_that_selects_nothing_says_so_in_one_line_and_changes_nothing(
    engine: sa.Engine, url_string: str, ini: Path
) -> None:
    listed = ini.parent / "ids.txt"
    listed.write_text("c03\nc04\n")
    spares.fill(engine, Chain.load(ini), 1)  # a spare, which a run that selects nothing leaves alone too
    with engine.begin() as conn:  # and no head model stored: such a run stores none
        conn.execute(sa.text("DELETE FROM project_registry.reference_catalog"))

    def spares_now() -> list[spares.Spare]:  # as they are, but for how long ago their release last filled the pool
        return [dataclasses.replace(s, release_age_s=None) for s in spares.status(engine, Chain.load(ini)).spares]

    before = database_state(engine), spares_now()

    for args, criteria in [
        (["--match", "zz*"], "id matching zz*"),
        (["--state", "failed,orphan"], "state failed, orphan"),
        (["--ids-from", str(listed), "--state", "at-head"], "state at-head; one of 2 listed ids"),
    ]:
        result = cli(url_string, ini, "upgrade", "--all", *args)
        as_json = cli(url_string, ini, "upgrade", "--all", "--json", *args)

        line = f"Selected 0 of 12 project(s): {criteria}: nothing to do; nothing was changed"
        assert (result.exit_code, result.stdout, result.stderr) == (0, "", line + "\n"), result.output
        assert as_json.exit_code == 0 and as_json.stderr == line + "\n"
        report = json.loads(as_json.stdout)
        assert report["results"] == [] and report["not_selected"] == 12 and report["pool"] is None
    assert (database_state(engine), spares_now()) == before
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM project_registry.reference_catalog")).scalar() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--canary", "0"], "Invalid value for '--canary': '0' is neither a number of schemas"),
        (["--max-failures", "150%"], "Invalid value for '--max-failures': '150%' is neither"),
        (["--ids-from", "/nonexistent/ids.txt"], "'/nonexistent/ids.txt' does not exist"),
        (["--fail-fast", "--max-failures", "2"], "--max-failures and --fail-fast/--continue-on-error: pass one"),
        (["--continue-on-error", "--max-failures", "2"], "--max-failures and --fail-fast/--continue-on-error"),
        (["--canary-only"], "--canary-only needs a canary"),
        (["--canary", "2", "--canary-ids", "c01"], "--canary and --canary-ids: pass one"),
        (["--seed", "4"], "--seed seeds --order random"),
        (["--state", "sideways"], "'sideways' is not a state"),
        (["--order", "size"], "'size' is not one of 'name', 'random'"),
    ],
)
def test_bad_stage_options_are_usage_errors_and_change_nothing(
    engine: sa.Engine, url_string: str, ini: Path, args: list[str], message: str
) -> None:
    result = cli(url_string, ini, "upgrade", "--all", *args)
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert all(schema_version(engine, f"project_{p}") == "a1" for p in IDS)


def test_canary_ids_not_in_the_fleet_are_one_line_and_change_nothing(
    engine: sa.Engine, url_string: str, ini: Path
) -> None:
    result = cli(url_string, ini, "upgrade", "--all", "--canary-ids", "c01,zz9")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "Error: --canary-ids: 1 project id(s) not in the fleet (zz9); nothing was changed: remove them "
        "(`workspace-tool status` counts the fleet, `workspace-tool list` lists it)"
    ]
    assert all(schema_version(engine, f"project_{p}") == "a1" for p in IDS)
