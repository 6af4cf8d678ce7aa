"""How a fleet run's schema transactions commit (RunSpec.commit, `--commit`): by default each batch commits
without waiting for its WAL flush and the run waits for one flush, of them all, before it reports; with
`durable`, each waits. Counted on the wire (tests/wire.py); the flush's failure made real by terminating the
backend that sends it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL
from support.cli import run_cli
from support.db import registry_row, schema_version
from wire import WireRecorder

from workspace_tool import CommitsUnconfirmed, DatabaseUnavailable, fleet
from workspace_tool.chain import Chain
from workspace_tool.errors import ConfigurationError
from workspace_tool.fleet import RunSpec

ASYNC = "SET LOCAL synchronous_commit = off;"
FLUSH = "SELECT txid_current()"


def _cli(url: URL, chain: Chain, *args: str) -> Any:
    return run_cli(
        "-q", "--database-url", url.render_as_string(hide_password=False), "-c", str(chain.config_path), *args
    )


@pytest.mark.parametrize("commit", [None, "async", "durable"])
def test_upgrade_all_flushes_once_after_its_last_schema_unless_each_waited(
    engine: sa.Engine, tiny: Chain, wire: WireRecorder, commit: str | None
) -> None:
    ids = [f"fc{i}" for i in range(5)]
    assert fleet.provision(engine, tiny, ids, target="a1", jobs=2).ok
    wire.clear()

    result = _cli(wire.url, tiny, "upgrade", "--all", "--to", "a2", *(["--commit", commit] if commit else []))

    assert result.exit_code == 0, result.output
    assert all(schema_version(engine, f"project_{i}") == "a2" for i in ids)
    queries = wire.queries
    batches = [i for i, q in enumerate(queries) if q.startswith("BEGIN") and "project_fc" in q]
    assert len(batches) == 5
    waited = commit == "durable"
    assert all((ASYNC in queries[i]) != waited for i in batches)
    flushes = [i for i, q in enumerate(queries) if q == FLUSH]
    if waited:
        assert flushes == []
    else:  # once, after the last schema's commit, before the report
        assert len(flushes) == 1 and flushes[0] > max(batches)


def test_a_run_with_nothing_to_migrate_waits_for_no_flush(engine: sa.Engine, tiny: Chain, wire: WireRecorder) -> None:
    assert fleet.provision(engine, tiny, ["fc0"], target="a2", jobs=1).ok
    wire.clear()
    result = _cli(wire.url, tiny, "upgrade", "--all", "--to", "a2")
    assert result.exit_code == 0, result.output
    assert FLUSH not in wire.queries


def test_the_sql_printed_is_the_commit_the_run_would_send(engine: sa.Engine, tiny: Chain, database_url: URL) -> None:
    assert fleet.provision(engine, tiny, ["fc0"], target="a1", jobs=1).ok
    default = _cli(database_url, tiny, "upgrade", "fc0", "--to", "a2", "--sql")
    durable = _cli(database_url, tiny, "upgrade", "fc0", "--to", "a2", "--sql", "--commit", "durable")
    assert default.exit_code == durable.exit_code == 0, (default.output, durable.output)
    assert f"BEGIN ISOLATION LEVEL READ COMMITTED;\n{ASYNC}\n" in default.stdout
    assert ASYNC not in durable.stdout and "BEGIN ISOLATION LEVEL READ COMMITTED;\n" in durable.stdout
    assert schema_version(engine, "project_fc0") == "a1"  # --sql changed nothing


@pytest.fixture
def flush_fails(session_engine: sa.Engine) -> Iterator[None]:
    """Every engine's flush at the end of a run fails as if the server went away under it: its backend is
    terminated just before the statement is sent."""

    def terminate(conn: sa.Connection, cursor: Any, statement: str, *_: Any) -> None:
        if statement == FLUSH:
            pid = cursor.connection.get_backend_pid()
            with session_engine.connect() as other:
                other.execute(sa.text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})

    sa.event.listen(sa.Engine, "before_cursor_execute", terminate)
    try:
        yield
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", terminate)


@pytest.mark.usefixtures("flush_fails")
def test_a_flush_that_fails_is_reported_with_the_runs_report_and_a_rerun_finds_what_is_left(
    engine: sa.Engine, tiny: Chain, database_url: URL
) -> None:
    ids = [f"fc{i}" for i in range(3)]
    assert fleet.provision(engine, tiny, ids, target="a1", jobs=2, commit="durable").ok
    result = _cli(database_url, tiny, "upgrade", "--all", "--to", "a2", "--json")

    assert result.exit_code == 1, (result.stdout, result.stderr)
    [line] = result.stderr.splitlines()  # -q: the error's one line, no traceback
    assert line.startswith("Error: 3 schema(s) migrated, but the server did not confirm that they are on disk")
    assert "run the command again" in line and "password" not in line.lower()
    report = json.loads(result.stdout)  # the run's report all the same, saying why it is not ok
    assert report["ok"] is False and report["counts"]["ok"] == 3
    assert report["unconfirmed"] and report["unconfirmed"] in line

    with pytest.raises(CommitsUnconfirmed) as raised:  # the library: a DatabaseUnavailable, with the report
        fleet.downgrade(engine, tiny, target="a1", jobs=2)
    assert isinstance(raised.value, DatabaseUnavailable) and raised.value.migrated == 3
    assert raised.value.report.unconfirmed == raised.value.reason and not raised.value.report.ok
    assert raised.value.report.counts()["ok"] == 3

    # the server did not crash: what the runs committed stands, registry rows included
    assert all(schema_version(engine, f"project_{i}") == "a1" for i in ids)
    assert [(registry_row(engine, i) or {}).get("revision") for i in ids] == ["a1"] * 3
    again = fleet.downgrade(engine, tiny, target="a1", jobs=2)  # nothing to migrate: no flush, no error
    assert again.ok and again.counts()["ok"] == 0


def test_a_bad_commit_changes_nothing_and_says_so_in_one_line(
    engine: sa.Engine, tiny: Chain, database_url: URL
) -> None:
    assert fleet.provision(engine, tiny, ["fc0"], target="a1", jobs=1).ok
    with pytest.raises(ConfigurationError, match="commit='sometimes': it must be async"):
        fleet.upgrade(engine, tiny, target="a2", commit="sometimes")
    bad = _cli(database_url, tiny, "upgrade", "--all", "--commit", "sometimes")
    assert bad.exit_code == 2 and "'sometimes' is not one of 'async', 'durable'" in bad.stderr
    task = _cli(database_url, tiny, "drop", "fc0", "--commit", "durable", "--yes")
    assert task.exit_code == 2 and "--commit: drop runs no migration" in task.stderr
    assert schema_version(engine, "project_fc0") == "a1"
    assert RunSpec(commit="durable").async_commit is False and RunSpec().async_commit is True
