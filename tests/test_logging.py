"""Logging (issue 13, section 5): what the library logs to "workspace_tool" and its children, and the CLI's
-v/-vv/-q. Data stays on stdout; messages and the log go to stderr; no password, ever."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from support.chains import ALEMBIC_INI, HEAD, ITEMS, MAIN_REVISIONS, UNIQUE, ChainBuilder
from support.cli import run_cli

from workspace_tool import WorkspaceManager, fleet
from workspace_tool.chain import Chain

SECRET = "Lg7-s3cr3t-Pw"
PREVIOUS = MAIN_REVISIONS[-2]
CLOCK = r"\d\d:\d\d:\d\d\.\d{3}"
MS = r"\d+\.\d ms"


@pytest.fixture
def url(database_url: sa.URL, engine: sa.Engine) -> str:
    """The session's (emptied) database, with a password in the URL that the shared server ignores."""
    return database_url.set(password=SECRET).render_as_string(hide_password=False)


def cli(url: str, *args: str) -> tuple[str, str]:
    """workspace-tool on the main chain: (stdout, stderr), which must hold no password."""
    result = run_cli("--database-url", url, "-c", str(ALEMBIC_INI), *args)
    assert result.exit_code == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    return result.stdout, result.stderr


def logged(stderr: str, logger: str) -> list[str]:
    """The messages ``logger`` wrote in the CLI's log format."""
    pattern = re.compile(rf"^{CLOCK} (?:DEBUG|INFO|WARNING|ERROR) {re.escape(logger)}: (.*)$")
    return [m.group(1) for line in stderr.splitlines() if (m := pattern.match(line))]


def test_verbose_shows_each_schemas_path_sending_and_timings(url: str) -> None:
    quiet_out, _ = cli(url, "ensure", "alpha")
    out, err = cli(url, "-v", "ensure", "bravo")
    assert out.splitlines()[0] == quiet_out.splitlines()[0]  # data on stdout, as without -v
    [line] = logged(err, "workspace_tool.schema.migrate")
    assert re.fullmatch(rf"project_bravo: created base -> {HEAD}, path fast, first round trip \(guarded\), {MS}", line)

    cli(url, "-q", "downgrade", "alpha", "--to", PREVIOUS, "--yes")
    out, err = cli(url, "-v", "upgrade", "--all")
    assert "ok       1" in out
    assert re.fullmatch(
        rf"project_alpha: upgraded {PREVIOUS} -> {HEAD}, path fast, fast lane \(one round trip\), {MS}",
        logged(err, "workspace_tool.schema.migrate")[0],
    )
    read, fleet_read = logged(err, "workspace_tool.registry.inventory")
    # bravo's version is read (its registry row says it is at the target); alpha's row is taken at its word
    assert re.fullmatch(r"read 1 schema\(s\) in 1 batch\(es\) of up to 200 on 1 connection\(s\) in \d+ ms", read)
    assert re.fullmatch(
        r"fleet read: 2 project\(s\), 2 registered, 2 project schema\(s\), 1 version\(s\) read "
        r"\(1 taken from the registry\), in \d+ ms",
        fleet_read,
    )
    assert logged(err, "workspace_tool.fleet.runner") == [
        f"upgrade to {HEAD}: 1 schema(s) to migrate, on 1 connection(s) (threads); 1 left alone"
    ]


def test_very_verbose_shows_the_sql_including_the_batches_sent_on_the_raw_driver(url: str) -> None:
    cli(url, "-q", "ensure", "alpha")
    cli(url, "-q", "downgrade", "alpha", "--to", PREVIOUS, "--yes")
    _, err = cli(url, "-vv", "upgrade", "--all")
    statements = logged(err, "sqlalchemy.engine.Engine")
    assert any("SELECT project_id, schema_name, revision" in s for s in statements)  # the fleet read
    [batch] = logged(err, "workspace_tool.schema.send")
    assert batch == "project_alpha: one round trip:"  # the batch follows on the next lines, as sent
    sent = err.split("project_alpha: one round trip:\n", 1)[1]
    begin = "BEGIN ISOLATION LEVEL READ COMMITTED;\nSET LOCAL synchronous_commit = off;\n"
    assert sent.startswith(begin + "SET LOCAL lock_timeout = '5000ms';\n")
    assert "\nCOMMIT;\n" in sent


def test_quiet_prints_the_data_and_nothing_else(url: str) -> None:
    out, err = cli(url, "-q", "ensure", "alpha", "beta")
    assert err == "" and out.splitlines()[1].startswith("alpha ")
    cli(url, "-q", "downgrade", "alpha", "--to", PREVIOUS, "--yes")
    out, err = cli(url, "-q", "upgrade", "--all")
    assert err == "" and "ok       1" in out
    assert cli(url, "-q", "drop", "beta", "--yes") == ("", "")

    _, err = cli(url, "upgrade", "--all")  # by default: the summary, and no log line
    assert err == f"upgrade to {HEAD}: 0 ok, 0 failed, 1 skipped in {err.split(' in ')[1]}"
    both = run_cli("--database-url", url, "-q", "-v", "status")
    assert both.exit_code == 2 and "-v/--verbose and -q/--quiet don't go together" in both.stderr


def test_a_cached_ensure_logs_nothing(engine: sa.Engine, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="workspace_tool")
    manager = WorkspaceManager(engine, ALEMBIC_INI)
    manager.ensure("alpha")
    assert "workspace_tool.schema.migrate" in [r.name for r in caplog.records]
    caplog.clear()
    for _ in range(3):
        manager.ensure("alpha")
    assert caplog.records == []
    manager.ensure("alpha", verify=True)  # one read: at DEBUG
    assert [r.getMessage() for r in caplog.records] == [caplog.records[0].getMessage()]
    assert re.fullmatch(rf"project_alpha: verified at head \({MS}\)", caplog.records[0].getMessage())
    manager.close()


@pytest.fixture
def three_at_a1(engine: sa.Engine, chain_builder: ChainBuilder) -> Iterator[Chain]:
    chain_builder.add("a1", ITEMS, 'op.drop_table("items")').add("a2", UNIQUE)
    chain = Chain.load(chain_builder.ini)
    assert fleet.provision(engine, chain, ["p1", "p2", "p3"], target="a1").counts()["ok"] == 3
    yield chain


def test_retries_and_failures_are_logged_with_the_schema(
    engine: sa.Engine, three_at_a1: Chain, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="workspace_tool")
    holder = engine.connect()
    holder.begin()
    holder.execute(sa.text("LOCK TABLE project_p2.items IN ROW EXCLUSIVE MODE"))  # an application's write
    try:
        report = fleet.upgrade(engine, three_at_a1, jobs=2, lock_timeout_ms=200, retries=1)
    finally:
        holder.rollback()
        holder.close()
    assert [r.project_id for r in report.failed] == ["p2"]
    messages = [r.getMessage() for r in caplog.records if r.name == "workspace_tool.fleet.migrator"]
    assert len(messages) == 2, messages
    assert re.fullmatch(r"project_p2: lock timeout \(200 ms\) on attempt 1 of 2; retrying in \d\.\d\d s", messages[0])
    assert messages[1].startswith("project_p2: failed after ")
    assert "lock timeout (200 ms, 2 attempts)" in messages[1]


def test_the_library_prints_nothing_unless_the_application_configures_logging() -> None:
    """A NullHandler on "workspace_tool": without one, Python's last-resort handler would print the
    library's warnings on the application's stderr."""
    code = "import logging, workspace_tool; logging.getLogger('workspace_tool.fleet.runner').warning('not shown')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stderr == ""
