"""The one schema plan (workspace_tool.schema.plan), sent each of its ways (schema.send): the text of
`upgrade --sql` is what the fleet runs, down to the registry row, so psql running it gives what
`upgrade --all` gives; and sending it statement by statement (as Citus needs) gives the same schema."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL
from support.chains import ALEMBIC_INI
from support.cli import psql

from workspace_tool import fleet
from workspace_tool.chain import Chain
from workspace_tool.flavor import Flavor
from workspace_tool.registry import bootstrap
from workspace_tool.schema.catalog import diff, snapshot
from workspace_tool.schema.migrate import Migration, Sending, fast_lane, migrate
from workspace_tool.schema.plan import Expected

CHAIN = Chain.load(ALEMBIC_INI)
BEHIND = CHAIN.revisions[1]  # the fleet starts here: two revisions behind head
PROJECTS = ["alpha", "beta", "gamma", "delta"]


def behind(engine: sa.Engine) -> None:
    report = fleet.provision(engine, CHAIN, PROJECTS, target=BEHIND)
    assert {r.status for r in report.results} == {fleet.OK}


def registry_rows(engine: sa.Engine) -> dict[str, tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT project_id, revision, status, last_action, last_path FROM project_registry.workspace_config"
            )
        ).all()
    return {row.project_id: tuple(row)[1:] for row in rows}


def catalogs(engine: sa.Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        return {p: snapshot(conn, f"project_{p}") for p in PROJECTS}


def test_the_text_of_upgrade_all_sql_run_by_psql_gives_what_upgrade_all_gives(
    engine: sa.Engine, other_engine: sa.Engine, database_url: URL
) -> None:
    behind(engine)
    behind(other_engine)

    scripts = fleet.sql(engine, CHAIN)  # --all: every project, each its own transaction
    assert [s.path for s in scripts] == ["fast"] * len(PROJECTS)
    ran = psql(database_url, "".join(s.sql or "" for s in scripts))
    report = fleet.upgrade(other_engine, CHAIN)

    assert ran.returncode == 0, ran.stderr
    assert {r.status for r in report.results} == {fleet.OK}
    by_psql, by_run = catalogs(engine), catalogs(other_engine)
    for project in PROJECTS:
        assert diff(by_run[project], by_psql[project]) == [], project
    assert registry_rows(engine) == registry_rows(other_engine)
    assert {row[:3] for row in registry_rows(engine).values()} == {(CHAIN.head, "ready", "upgrade")}


def without_comments(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("-- "))


def test_the_script_is_what_the_fast_lane_sends_and_its_guard_holds(engine: sa.Engine, database_url: URL) -> None:
    behind(engine)
    scripts = {s.project_id: s.sql or "" for s in fleet.sql(engine, CHAIN)}
    how = Sending(
        CHAIN, Flavor("workspace_extensions"), lock_timeout_ms=fleet.DEFAULT_LOCK_TIMEOUT_MS, async_commit=True
    )  # a run's default: RunSpec(commit="async")
    transaction = fast_lane(how, Migration("alpha", "project_alpha", CHAIN.head, fleet.UPGRADE), Expected(True, BEHIND))
    assert transaction is not None
    begin = ["BEGIN ISOLATION LEVEL READ COMMITTED;", "SET LOCAL synchronous_commit = off;"]
    sent = "\n".join([*begin, *transaction.statements(), "COMMIT;"])  # send_batch's
    assert without_comments(scripts["alpha"]) == sent + "\n"

    fleet.upgrade(engine, CHAIN, ["alpha"])  # now the script is stale: it fails as one transaction
    before = registry_rows(engine)["alpha"], catalogs(engine)["alpha"]
    ran = psql(database_url, scripts["alpha"])
    assert ran.returncode != 0 and "ERROR" in ran.stderr
    assert (registry_rows(engine)["alpha"], catalogs(engine)["alpha"]) == before


def test_statement_by_statement_builds_the_same_schema_as_batches(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        extension_schema = bootstrap(conn).extension_schema
        for project, one_by_one in (("batched", False), ("one-by-one", True)):
            how = Sending(CHAIN, Flavor(extension_schema), statement_by_statement=one_by_one)
            result = migrate(conn, how, Migration(project, f"project_{project.replace('-', '_')}", CHAIN.head))
            assert (result.action, result.path) == ("created", "fast")
        assert diff(snapshot(conn, "project_batched"), snapshot(conn, "project_one_by_one")) == []
