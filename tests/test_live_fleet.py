"""A live fleet (issue 18): every fleet command stays correct while the application keeps working, creating,
dropping and reading projects (and claiming spares from the warm pool) during the command.

A project dropped between a command's read of the fleet and its turn is an ordinary event: `upgrade` and
`downgrade` report it ``gone`` (never a failure), `status` leaves it out (as if it had run a moment
later), `check` does not count it as drift; a spare claimed while `check` runs is not reported. The
deterministic tests drop a project at a chosen point (wrapping the function that runs next); the last one
runs a real dropper thread against a few hundred projects while the commands run."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from support.chains import ITEMS, ChainBuilder
from support.db import StatementCounter, assert_consistent, registry_row, schema_exists, schema_version

from workspace_tool import WorkspaceManager, drift, fleet, reference, spares
from workspace_tool.chain import Chain
from workspace_tool.cli import main
from workspace_tool.fleet import runner
from workspace_tool.registry import inventory
from workspace_tool.registry.inventory import read_versions

IDS = [f"p{i:02d}" for i in range(1, 13)]


@pytest.fixture
def at_a1(engine: sa.Engine, tiny: Chain) -> Iterator[Chain]:
    assert fleet.provision(engine, tiny, IDS, target="a1", jobs=4).ok
    yield tiny


@pytest.fixture
def app(engine: sa.Engine, tiny: Chain) -> Iterator[WorkspaceManager]:
    """The application's manager: what drops projects while the commands run."""
    manager = WorkspaceManager(engine, tiny.config_path)
    yield manager
    manager.close()


def drop_first(
    monkeypatch: pytest.MonkeyPatch, owner: object, name: str, app: WorkspaceManager, *project_ids: str
) -> list[str]:
    """Wrap ``owner.name`` so that, the first time it is called, the application drops ``project_ids``
    first (schema and registry row, WorkspaceManager.drop), then it runs as it would have. Returns the
    list of the projects dropped (empty until then)."""
    original: Callable[..., Any] = getattr(owner, name)
    dropped: list[str] = []

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not dropped:
            for project_id in project_ids:
                assert app.drop(project_id)
                dropped.append(project_id)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)
    return dropped


def cli(url: str, ini: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--database-url", url, "-c", str(ini), *args])


def by_project(report: fleet.FleetReport) -> dict[str, fleet.SchemaResult]:
    return {r.project_id: r for r in report.results}


# ------------------------------------------------------------------------------------- the reads
def test_the_batched_version_read_leaves_out_a_schema_dropped_since_it_was_listed(
    engine: sa.Engine, tiny: Chain, count_statements: Callable[[], StatementCounter]
) -> None:
    """One UNION over a batch's version tables fails as a whole when one of them is gone: the batch is
    read again without the schemas gone, and the others' versions come back. A batch with nothing gone
    is still one query."""
    ids = [f"v{i:03d}" for i in range(250)]  # two batches of up to 200
    assert fleet.provision(engine, tiny, ids, target="a1", jobs=4).ok
    schemas = [f"project_{p}" for p in ids]
    with count_statements() as counter, engine.connect() as conn, conn.begin():
        assert read_versions(conn, schemas) == dict.fromkeys(schemas, "a1")
    assert sum("UNION ALL" in s for s in counter.statements) == 2  # one query per batch
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA project_v007 CASCADE"))
        conn.execute(sa.text("DROP TABLE project_v231.alembic_version"))  # its version table alone

    with engine.connect() as conn, conn.begin():
        versions = read_versions(conn, schemas)

    assert versions == {s: "a1" for s in schemas if s not in ("project_v007", "project_v231")}


def test_status_leaves_out_a_project_dropped_while_it_read_the_versions(
    engine: sa.Engine, url_string: str, at_a1: Chain, app: WorkspaceManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    dropped = drop_first(monkeypatch, inventory, "read_versions", app, "p03", "p10")

    result = cli(url_string, at_a1.config_path, "status", "--json")

    assert result.exit_code == 0, result.output
    assert dropped == ["p03", "p10"]
    summary = json.loads(result.stdout)
    assert summary["total"] == 10 and summary["counts"]["behind"] == 10
    assert summary["missing"] == [] and summary["orphans"] == []
    named = app.status(["p02", "p03"])  # a project named and dropped: not listed, as before the read
    assert [(s.project_id, s.state) for s in named] == [("p02", "behind")]


def test_status_does_not_take_a_project_created_during_its_read_for_an_orphan(
    engine: sa.Engine, url_string: str, at_a1: Chain, app: WorkspaceManager
) -> None:
    """The registry rows and the project schemas are read in one statement (one snapshot): a project the
    application creates (schema and row in one transaction) right after the registry's rows were read is
    either wholly in the read or not at all, never an orphan."""
    created: list[str] = []

    def create_after_the_rows(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not created and "last_path, last_error, updated_at" in statement:
            created.append("new-one")
            app.ensure("new-one")

    sa.event.listen(sa.Engine, "after_cursor_execute", create_after_the_rows)
    try:
        result = cli(url_string, at_a1.config_path, "status", "--json")
    finally:
        sa.event.remove(sa.Engine, "after_cursor_execute", create_after_the_rows)

    assert result.exit_code == 0, result.output
    assert created == ["new-one"] and schema_exists(engine, "project_new_one")
    summary = json.loads(result.stdout)
    assert summary["orphans"] == [] and summary["missing"] == [] and summary["total"] == 12


# ------------------------------------------------------------------------------ upgrade, downgrade
@pytest.mark.parametrize("online", [False, True], ids=["fast-lane", "careful-path"])
def test_a_project_dropped_between_the_read_and_its_turn_is_gone_not_failed(
    engine: sa.Engine,
    chain_builder: ChainBuilder,
    app: WorkspaceManager,
    monkeypatch: pytest.MonkeyPatch,
    online: bool,
) -> None:
    if online:  # a2 runs through Alembic: no fast lane, the careful path finds the schema gone
        (chain_builder.versions / "a2.py").write_text(
            (chain_builder.versions / "a2.py").read_text() + "\nworkspace_online = True\n"
        )
    chain = Chain.load(chain_builder.ini)
    assert fleet.provision(engine, chain, IDS, target="a1", jobs=4).ok
    dropped = drop_first(monkeypatch, runner, "run_threads", app, "p05")

    report = fleet.upgrade(engine, chain, jobs=2)

    assert dropped == ["p05"]
    results = by_project(report)
    assert results["p05"].status == "gone" and results["p05"].error is None
    assert results["p05"].note == fleet.DROPPED_SINCE_READ == "dropped since the run read it: nothing to do"
    assert report.ok and report.counts() == {"ok": 11, "failed": 0, "skipped": 0, "gone": 1}
    assert not schema_exists(engine, "project_p05") and registry_row(engine, "p05") is None  # not resurrected
    assert set(assert_consistent(engine).values()) == {"a2"}


def test_downgrade_reports_a_project_dropped_before_its_turn_as_gone(
    engine: sa.Engine, at_a1: Chain, app: WorkspaceManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    drop_first(monkeypatch, runner, "run_threads", app, "p01", "p12")

    report = fleet.downgrade(engine, at_a1, target="base", jobs=3)

    assert report.ok and report.counts() == {"ok": 10, "failed": 0, "skipped": 0, "gone": 2}
    assert {r.project_id for r in report.with_status(fleet.GONE)} == {"p01", "p12"}
    assert registry_row(engine, "p01") is None and registry_row(engine, "p12") is None
    assert set(assert_consistent(engine).values()) == {None}


def test_upgrade_all_json_goes_on_when_projects_vanish_during_its_read_and_before_their_turn(
    engine: sa.Engine, url_string: str, at_a1: Chain, app: WorkspaceManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """p03 is dropped while the run reads the versions (so it is simply not there: not in the report),
    p08 after the read, before its turn: gone. Exit 0, the summary counts it. (Only the versions of schemas
    the registry says need nothing are read: p03, at the target already.)"""
    assert fleet.upgrade(engine, at_a1, ["p03"], jobs=1).ok
    drop_first(monkeypatch, inventory, "read_versions", app, "p03")
    drop_first(monkeypatch, runner, "run_threads", app, "p08")

    result = cli(url_string, at_a1.config_path, "upgrade", "--all", "--json", "--jobs", "2")

    assert result.exit_code == 0, result.output
    assert "database error" not in result.output
    report = json.loads(result.stdout)
    statuses = {r["project_id"]: r["status"] for r in report["results"]}
    assert "p03" not in statuses and statuses["p08"] == "gone"
    assert report["ok"] and report["counts"] == {"ok": 10, "failed": 0, "skipped": 0, "gone": 1}
    table = cli(url_string, at_a1.config_path, "upgrade", "--all")  # nothing left: the text report
    assert table.exit_code == 0 and "upgrade to a2: 0 ok, 0 failed, 10 skipped" in table.stderr
    assert set(assert_consistent(engine).values()) == {"a2"}


def test_the_summary_line_and_the_table_count_the_gone(
    engine: sa.Engine, url_string: str, at_a1: Chain, app: WorkspaceManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    drop_first(monkeypatch, runner, "run_threads", app, "p02", "p04")

    result = cli(url_string, at_a1.config_path, "upgrade", "--all")

    assert result.exit_code == 0, result.output
    assert "upgrade to a2: 10 ok, 0 failed, 0 skipped, 2 gone (dropped since the run read them) in " in result.stderr
    assert any(line.split()[:2] == ["gone", "2"] for line in result.stdout.splitlines()), result.stdout


# ------------------------------------------------------------------------------------------ check
def test_check_does_not_count_a_project_dropped_while_it_runs_as_drift(
    engine: sa.Engine, url_string: str, at_a1: Chain, app: WorkspaceManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dropped during the version read (left out), before the catalogs are fingerprinted, and between the
    fingerprints and the detailed read of a schema that differs: none of them is a problem."""
    assert fleet.upgrade(engine, at_a1, jobs=2).ok
    with engine.begin() as conn:  # p06 and p09 differ from the model: read in detail
        conn.execute(sa.text("ALTER TABLE project_p06.items ADD COLUMN by_hand int"))
        conn.execute(sa.text("ALTER TABLE project_p09.items ADD COLUMN by_hand int"))
    drop_first(monkeypatch, inventory, "read_versions", app, "p01")
    drop_first(monkeypatch, reference, "for_check", app, "p02")
    drop_first(monkeypatch, drift, "snapshot", app, "p06")

    result = cli(url_string, at_a1.config_path, "check", "--json")

    report = json.loads(result.stdout)
    assert result.exit_code == 1, result.output  # p09 differs: the one real problem
    checked = {s["project_id"]: (s["state"], s["problems"]) for s in report["schemas"]}
    assert "p01" not in checked
    assert checked["p02"] == ("gone", []) and checked["p06"] == ("gone", [])
    assert checked["p09"] == ("at-head", ["unexpected relations.items.columns.by_hand"])
    assert report["failing"] == 1 and "database error" not in result.output

    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE project_p09.items DROP COLUMN by_hand"))
    drop_first(monkeypatch, reference, "for_check", app, "p03")
    again = cli(url_string, at_a1.config_path, "check")
    assert again.exit_code == 0, again.output
    assert "1 dropped while check ran" in again.stderr


@pytest.fixture
def old_release(tmp_path: Path) -> Chain:
    """The release before ``tiny``'s: a1 alone (a rolling deploy runs both)."""
    return Chain.load(ChainBuilder(tmp_path / "old").add("a1", ITEMS, 'op.drop_table("items")').ini)


def upgrade_first(
    monkeypatch: pytest.MonkeyPatch, owner: object, name: str, engine: sa.Engine, chain: Chain, *ids: str
) -> list[str]:
    """Wrap ``owner.name`` so that, the first time it is called, the newer release (``chain``) upgrades
    ``ids`` first (another run of the fleet, beside the command). Returns the ids upgraded (none until then)."""
    original: Callable[..., Any] = getattr(owner, name)
    upgraded: list[str] = []

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not upgraded:
            assert fleet.upgrade(engine, chain, list(ids), jobs=1).ok
            upgraded.extend(ids)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)
    return upgraded


MOVED = "at revision a2, head is a1 (migrated by another run while check ran)"


def test_the_old_release_check_reports_a_schema_upgraded_while_it_ran_at_its_new_revision_not_as_drift(
    engine: sa.Engine, url_string: str, tiny: Chain, old_release: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rolling deploy: the old release's `check` reads p03 and p07 at its head (a1); the new release
    upgrades them to a2 before their catalogs are compared. They differ from a1's model because they
    were migrated, not because anyone changed them: reported at a2 (as a check a moment later would), with
    no catalog difference."""
    assert fleet.provision(engine, old_release, IDS, jobs=4).ok
    upgraded = upgrade_first(monkeypatch, reference, "for_check", engine, tiny, "p03", "p07")

    report = drift.check(engine, old_release, jobs=2)

    assert upgraded == ["p03", "p07"]
    failing = {c.project_id: (c.state, c.revision, c.problems) for c in report.failing}
    assert failing == {p: ("ahead", "a2", [MOVED]) for p in ("p03", "p07")}
    assert len(report.schemas) == 12
    again = cli(url_string, old_release.config_path, "check", "--json")  # a moment later: ahead, as it is
    assert again.exit_code == 1
    problems = {s["project_id"]: s["problems"] for s in json.loads(again.stdout)["schemas"] if s["problems"]}
    assert problems == {p: ["at revision a2, head is a1"] for p in ("p03", "p07")}


def test_check_reads_the_next_schema_of_a_drifted_group_when_the_first_was_upgraded_before_its_detailed_read(
    engine: sa.Engine, tiny: Chain, old_release: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """p06 and p09 have the same drift (a column added by hand): one catalog, read in detail once, from the
    first of them. p06 is upgraded by the newer release right before that read: it is reported at a2, and
    p09's drift is read from p09 (not from p06's catalog, now a2's)."""
    assert fleet.provision(engine, old_release, IDS, jobs=4).ok
    with engine.begin() as conn:
        for schema in ("project_p06", "project_p09"):
            conn.execute(sa.text(f"ALTER TABLE {schema}.items ADD COLUMN by_hand int"))
    upgraded = upgrade_first(monkeypatch, drift, "snapshot", engine, tiny, "p06")

    report = drift.check(engine, old_release, jobs=2)

    assert upgraded == ["p06"]
    failing = {c.project_id: (c.state, c.problems) for c in report.failing}
    assert failing == {
        "p06": ("ahead", [MOVED]),
        "p09": ("at-head", ["unexpected relations.items.columns.by_hand"]),
    }


def test_check_does_not_report_a_spare_claimed_while_it_runs(
    engine: sa.Engine, url_string: str, at_a1: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spare listed, then claimed (renamed into a new project's schema) before its catalog is read: it
    is no spare any more, and no problem; the new project is not in this check's read either."""
    assert fleet.upgrade(engine, at_a1, jobs=2).ok
    assert spares.fill(engine, at_a1, 3, jobs=1).built == 3
    claiming = WorkspaceManager(engine, at_a1.config_path, warm_pool=3)
    claimed: list[str] = []

    def claim_first(owner: object, name: str, project_id: str) -> None:
        original: Callable[..., Any] = getattr(owner, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if project_id not in claimed:
                assert claiming.ensure_detailed(project_id).path == "pool"
                claimed.append(project_id)
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapped)

    claim_first(drift, "read_versions", "claimed-while-listing")  # between the listing and its version read
    claim_first(reference, "for_check", "claimed-before-compare")  # before the catalogs are read

    report = drift.check(engine, at_a1, jobs=2)

    assert claimed == ["claimed-while-listing", "claimed-before-compare"]
    assert report.ok, [(s.schema, s.problems) for s in report.failing]
    assert len(report.spares) == 1 and report.spares[0].problems == []
    assert spares.status(engine, at_a1).ready == 1
    result = cli(url_string, at_a1.config_path, "check")  # and now: the two new projects are at head
    assert result.exit_code == 0 and "14 schema(s) and 1 spare(s) checked" in result.stderr, result.output
    claiming.close()


# ------------------------------------------------------------------------- a real dropper, live
class Dropper(threading.Thread):
    """The application: drops projects (WorkspaceManager.drop) one after the other, every ``pause``
    seconds, in random order, until stopped or none is left."""

    def __init__(self, engine: sa.Engine, ini: Path, project_ids: list[str], pause: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.manager = WorkspaceManager(engine, ini)
        self.left = list(project_ids)
        random.Random(18).shuffle(self.left)
        self.pause = pause
        self.dropped: list[str] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while self.left and not self.stop.wait(self.pause):
                project_id = self.left.pop()
                self.manager.drop(project_id)
                self.dropped.append(project_id)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.manager.close()

    def finish(self) -> list[str]:
        self.stop.set()
        self.join(30)
        assert not self.is_alive() and self.error is None, self.error
        return self.dropped


@pytest.mark.slow  # a soak of 400 projects: the tests above pin each of its outcomes, deterministically
def test_every_command_goes_on_while_the_application_drops_projects(
    engine: sa.Engine, url_string: str, tiny: Chain
) -> None:
    """400 projects at a1; the application drops one every 20 ms while `upgrade --all --jobs 4 --json`,
    then `status --json` and `check --json` (three times each) run: no raw database error, exit 0,
    every survivor at head, every project dropped during the upgrade reported gone or not at all."""
    ids = [f"app-{i:03d}" for i in range(400)]
    assert fleet.provision(engine, tiny, ids, target="a1", jobs=4).ok
    dropper = Dropper(engine, tiny.config_path, ids)
    dropper.start()
    try:
        upgrade = cli(url_string, tiny.config_path, "upgrade", "--all", "--jobs", "4", "--json")
        during_upgrade = set(dropper.dropped)
        reads = [cli(url_string, tiny.config_path, command, "--json") for command in ("status", "check") * 3]
    finally:
        dropped = set(dropper.finish())

    assert upgrade.exit_code == 0, upgrade.output[-2000:]
    report = json.loads(upgrade.stdout)
    statuses = {r["project_id"]: r["status"] for r in report["results"]}
    assert {s for p, s in statuses.items() if p not in dropped} <= {"ok"}, "a survivor not migrated"
    assert {p for p, s in statuses.items() if s == "gone"} <= during_upgrade
    assert set(ids) - set(statuses) <= during_upgrade  # left out: dropped before the run read them
    assert during_upgrade, "the dropper dropped nothing during the upgrade"
    for result in reads:
        assert result.exit_code == 0, result.output[-2000:]
        assert "Error" not in result.stderr and "Traceback" not in result.output
        json.loads(result.stdout)
    survivors = assert_consistent(engine)
    assert survivors == {f"project_{p.replace('-', '_')}": "a2" for p in ids if p not in dropped}
    assert all(schema_version(engine, s) == "a2" for s in list(survivors)[:3])
