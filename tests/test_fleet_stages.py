"""Staged fleet runs through the library (issue 14 §2): a canary first that halts the run on a failure and
leaves the rest untouched, --max-failures for the main stage, selection by state, glob and ids, the stage
of every result and where the run stopped."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from support.chains import ITEMS, UNIQUE, ChainBuilder
from support.data import add_rows
from support.db import registry_state, schema_version

from workspace_tool import ConfigurationError, fleet
from workspace_tool.chain import Chain
from workspace_tool.fleet import Selection, StageReport, StopReason

IDS = [f"s{i:02d}" for i in range(1, 13)]
MAIN_LIMIT = "2 schema(s) failed, the --max-failures {} limit"


@pytest.fixture
def at_a1(engine: sa.Engine, chain_builder: ChainBuilder) -> Chain:
    """Twelve projects at a1; a2 adds a unique index on items.name, which fails where names repeat."""
    chain_builder.add("a1", ITEMS, 'op.drop_table("items")')
    chain_builder.add("a2", UNIQUE, 'op.drop_index("ux_items_name", table_name="items")')
    chain = Chain.load(chain_builder.ini)
    assert fleet.provision(engine, chain, IDS, target="a1", jobs=4).ok
    return chain


def duplicate(engine: sa.Engine, *project_ids: str) -> None:
    """Rows that make a2's unique index fail in these schemas."""
    for project_id in project_ids:
        add_rows(engine, project_id, "dup", "dup")


def registry_rows(engine: sa.Engine) -> dict[str, tuple[Any, ...]]:
    """Every registry row, whole (updated_at included): a row nobody wrote compares equal."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM project_registry.workspace_config ORDER BY project_id")).all()
    return {row.project_id: tuple(row) for row in rows}


def by_project(report: fleet.FleetReport) -> dict[str, fleet.SchemaResult]:
    return {r.project_id: r for r in report.results}


def assert_untouched(engine: sa.Engine, project_ids: list[str], before: dict[str, tuple[Any, ...]]) -> None:
    after = registry_rows(engine)
    for project_id in project_ids:
        assert schema_version(engine, f"project_{project_id}") == "a1"
        assert after[project_id] == before[project_id]


def test_a_failing_canary_halts_the_run_and_leaves_the_rest_untouched(engine: sa.Engine, at_a1: Chain) -> None:
    duplicate(engine, "s03")  # the canary is the first three by name: s01, s02, s03
    before = registry_rows(engine)

    report = fleet.upgrade(engine, at_a1, canary=3, jobs=2)

    results = by_project(report)
    assert not report.ok
    assert [r.project_id for r in report.failed] == ["s03"]
    assert [results[p].status for p in IDS[:2]] == ["ok", "ok"]
    assert {p: results[p].stage for p in IDS} == {p: "canary" if p in IDS[:3] else "main" for p in IDS}
    assert report.stop_reason == StopReason.CANARY_FAILED and report.stopped_stage == "canary"
    assert report.stages == [StageReport(fleet.Stage.CANARY, 3, True, 1), StageReport(fleet.Stage.MAIN, 9, False)]
    for project_id in IDS[3:]:
        assert results[project_id].status == "skipped"
        assert results[project_id].note == "not started: a schema in the canary failed"
    assert_untouched(engine, IDS[3:], before)
    assert registry_state(engine, "s03")[:2] == ("a1", "failed")
    assert report.as_dict()["stopped_stage"] == "canary"


def test_a_canary_that_passes_is_followed_by_the_main_stage_in_the_same_run(engine: sa.Engine, at_a1: Chain) -> None:
    duplicate(engine, "s08")
    stages_seen: list[str | None] = []

    def progress(event: fleet.Progress) -> None:
        if event.result is None:
            stages_seen.append(f"start: {event.total}, canary {event.canary}")
        else:
            stages_seen.append(event.result.stage)

    report = fleet.upgrade(engine, at_a1, canary="25%", jobs=3, progress=progress)  # 25% of 12: 3

    results = by_project(report)
    assert report.counts() == {"ok": 11, "failed": 1, "skipped": 0, "gone": 0}
    assert [p for p in IDS if results[p].stage == "canary"] == IDS[:3]
    assert stages_seen == ["start: 12, canary 3", *["canary"] * 3, *["main"] * 9]  # the main stage after
    assert report.stopped is None and report.stopped_stage is None
    assert [(s.stage, s.schemas, s.ran) for s in report.stages] == [("canary", 3, True), ("main", 9, True)]
    assert [p for p in IDS if schema_version(engine, f"project_{p}") == "a1"] == ["s08"]


def test_canary_only_stops_after_the_canary_and_the_next_run_does_the_rest(engine: sa.Engine, at_a1: Chain) -> None:
    before = registry_rows(engine)

    report = fleet.upgrade(engine, at_a1, canary=2, canary_only=True, jobs=2)

    results = by_project(report)
    assert report.ok and report.stop_reason == StopReason.CANARY_ONLY and report.stopped_stage == "canary"
    assert [p for p in IDS if results[p].status == "ok"] == IDS[:2]
    assert {results[p].note for p in IDS[2:]} == {
        "not started: --canary-only: the main stage is left for the next command"
    }
    assert_untouched(engine, IDS[2:], before)

    rest = fleet.upgrade(engine, at_a1, jobs=2)  # the canary's schemas are at the target: skipped
    assert rest.counts() == {"ok": 10, "failed": 0, "skipped": 2, "gone": 0}
    assert by_project(rest)["s01"].note == "already at target"


def test_the_canary_named_by_id_or_picked_by_a_seeded_shuffle_is_reproducible(engine: sa.Engine, at_a1: Chain) -> None:
    named = fleet.upgrade(engine, at_a1, canary_ids=["s09", "s04"], canary_only=True)
    assert sorted(r.project_id for r in named.results if r.status == "ok") == ["s04", "s09"]
    assert fleet.downgrade(engine, at_a1, target="a1").ok

    def canary(seed: int | None) -> tuple[list[str], int | None]:
        report = fleet.upgrade(engine, at_a1, canary=3, canary_only=True, order="random", seed=seed)
        assert fleet.downgrade(engine, at_a1, target="a1").ok  # the same fleet for the next pick
        return sorted(r.project_id for r in report.results if r.status == "ok"), report.seed

    picked, seed = canary(7)
    assert seed == 7 and len(picked) == 3 and picked != IDS[:3]
    assert canary(7) == (picked, 7)
    assert canary(8)[0] != picked
    drawn, drawn_seed = canary(None)  # a seed is drawn, and reported so that the pick can be repeated
    assert drawn_seed is not None and canary(drawn_seed)[0] == drawn


def test_max_failures_stops_starting_schemas_once_that_many_failed(engine: sa.Engine, at_a1: Chain) -> None:
    duplicate(engine, "s03", "s05", "s08", "s10")
    before = registry_rows(engine)

    report = fleet.upgrade(engine, at_a1, jobs=1, max_failures=2)

    results = by_project(report)
    assert [results[p].status for p in IDS] == ["ok", "ok", "failed", "ok", "failed", *["skipped"] * 7]
    assert report.stopped == MAIN_LIMIT.format(2) and report.stopped_stage == "main"
    assert {results[p].note for p in IDS[5:]} == {f"not started: {MAIN_LIMIT.format(2)}"}
    assert report.stages == [StageReport(fleet.Stage.MAIN, 12, True, 2)]
    assert_untouched(engine, IDS[5:], before)


def test_a_max_failures_percentage_counts_the_main_stages_schemas(engine: sa.Engine, at_a1: Chain) -> None:
    duplicate(engine, "s03", "s04", "s05", "s06")

    # 20% of the main stage's 10 schemas is 2 (of all 12 it would have been 3)
    report = fleet.upgrade(engine, at_a1, jobs=1, canary=2, max_failures="20%")

    results = by_project(report)
    assert [r.project_id for r in report.failed] == ["s03", "s04"]
    assert [results[p].status for p in IDS[4:]] == ["skipped"] * 8
    assert report.stopped == MAIN_LIMIT.format("20%") and report.stopped_stage == "main"
    assert [s.max_failures for s in report.stages] == [1, 2]


def test_max_failures_with_parallel_jobs_starts_at_most_one_schema_per_job_after_the_limit(
    engine: sa.Engine, at_a1: Chain
) -> None:
    duplicate(engine, *IDS)  # every schema fails
    before = registry_rows(engine)

    report = fleet.upgrade(engine, at_a1, jobs=4, max_failures=2)

    # which schemas started is a race; once the second failure is in, only the (at most 3) others
    # running go on, and nothing new starts
    failed, not_started = report.failed, report.not_started()
    assert 2 <= len(failed) <= 5 and len(failed) + len(not_started) == 12
    assert_untouched(engine, [r.project_id for r in not_started], before)


def test_selection_by_state_glob_and_ids_and_sql_renders_only_the_selection(engine: sa.Engine, at_a1: Chain) -> None:
    assert fleet.upgrade(engine, at_a1, ["s01", "s02"]).ok  # at head
    duplicate(engine, "s03")
    assert not fleet.upgrade(engine, at_a1, ["s03"]).ok  # failed
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM project_s03.items"))

    failed = fleet.upgrade(engine, at_a1, selection=Selection(states=["failed"]))
    assert [(r.project_id, r.status) for r in failed.results] == [("s03", "ok")]
    assert failed.not_selected == 11 and failed.selection == {"states": ["failed"], "match": [], "ids": None}

    scripts = fleet.sql(engine, at_a1, selection=Selection(states=["behind"], match=["s0*"]))
    assert [s.project_id for s in scripts] == ["s04", "s05", "s06", "s07", "s08", "s09"]
    assert all(s.sql for s in scripts)

    globbed = fleet.upgrade(engine, at_a1, selection=Selection(states=["behind", "at-head"], match=["s1?"]))
    assert [(r.project_id, r.status) for r in globbed.results] == [("s10", "ok"), ("s11", "ok"), ("s12", "ok")]

    listed = fleet.upgrade(engine, at_a1, selection=Selection(ids=["s05", "s04"]))
    assert [(r.project_id, r.status) for r in listed.results] == [("s04", "ok"), ("s05", "ok")]

    before = registry_rows(engine)
    unknown = r"^the named project ids: 1 project id\(s\) not in the fleet \(nope\)"
    with pytest.raises(ConfigurationError, match=unknown):
        fleet.upgrade(engine, at_a1, selection=Selection(ids=["s06", "nope"]))
    assert_untouched(engine, ["s06", "s07", "s08", "s09"], before)
    with pytest.raises(ConfigurationError, match="unknown state 'sideways'"):
        Selection(states=["sideways"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"canary": 0}, "--canary: '0' is neither a number of schemas"),
        ({"canary": "150%"}, "--canary: '150%' is neither"),
        ({"max_failures": "0%"}, "--max-failures: '0%' is neither"),
        ({"max_failures": "some"}, "--max-failures: 'some' is neither"),
        ({"fail_fast": True, "max_failures": 2}, "--fail-fast and --max-failures: pass one"),
        ({"canary": 2, "canary_ids": ["s01"]}, "--canary and --canary-ids: pass one"),
        ({"canary_only": True}, "--canary-only needs a canary"),
        ({"canary_ids": []}, "--canary-ids names no project"),
        ({"seed": 3}, "--seed seeds --order random"),
        ({"order": "size"}, "unknown order 'size'"),
        ({"canary_ids": ["s01", "zz"]}, r"--canary-ids: 1 project id\(s\) not in the fleet \(zz\)"),
    ],
)
def test_bad_stage_options_are_refused_before_any_schema_is_touched(
    engine: sa.Engine, at_a1: Chain, options: dict[str, Any], message: str
) -> None:
    before = registry_rows(engine)
    with pytest.raises(ConfigurationError, match=message):
        fleet.upgrade(engine, at_a1, **options)
    assert_untouched(engine, IDS, before)
