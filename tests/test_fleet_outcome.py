"""Issue 21 (track B1), without a database: what a fleet run reports is told apart by enums (Outcome,
SkipReason, StopReason), the words tables and summaries show are rendered from them and never parsed back;
a RunSpec is checked when it is built (one-line errors); one rule decides what an operation may do, for
ensure's check and for a fleet run alike."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from support.chains import ITEMS, ChainBuilder

from workspace_tool import ConfigurationError, fleet
from workspace_tool.chain import Chain
from workspace_tool.cli.render import ProgressPrinter, print_fleet_report, to_json
from workspace_tool.errors import (
    InvalidProjectId,
    UnknownRevision,
    WorkspaceAhead,
    WorkspaceNotFound,
    WorkspaceOutdated,
)
from workspace_tool.fleet import (
    FleetReport,
    Outcome,
    Progress,
    RunSpec,
    SchemaResult,
    SkipReason,
    Stop,
    StopReason,
)
from workspace_tool.fleet.decide import Verdict, decide
from workspace_tool.fleet.stages import Order, Staging
from workspace_tool.schema.operation import DOWNGRADE, PROVISION, UPGRADE, Refusal, Work
from workspace_tool.schema.state import SchemaRecord


def result(project_id: str, status: Outcome = Outcome.SKIPPED, **fields: Any) -> SchemaResult:
    return SchemaResult(project_id, f"project_{project_id}", "a1", "a2", status, **fields)


def report(results: list[SchemaResult], **fields: Any) -> FleetReport:
    return FleetReport("upgrade", "a2", results, 1500.0, 2, "threads", **fields)


# ------------------------------------------------------------------------------ words from enums
def test_every_skip_and_stop_reason_has_its_words() -> None:
    assert SkipReason.MOVED_BY_ANOTHER_RUN.note() == "already at target: moved by another run"
    assert SkipReason.AT_TARGET.note() == "already at target"
    assert SkipReason.DROPPED_SINCE_READ.note() == fleet.DROPPED_SINCE_READ
    assert SkipReason.NOT_STARTED.note("interrupted") == "not started: interrupted"
    assert all(reason.note() for reason in SkipReason)
    assert str(Stop(StopReason.MAX_FAILURES, limit=2, amount="20%")) == (
        "2 schema(s) failed, the --max-failures 20% limit"
    )
    lost = Stop(StopReason.CONNECTION_LOST, in_a_row=3)
    assert str(lost) == "the database connection was lost, 3 schemas in a row failed on it"
    node = Stop(StopReason.NODE_UNREACHABLE, node="Citus worker 10.0.0.7:5432", in_a_row=3)
    assert str(node) == "Citus worker 10.0.0.7:5432 is unreachable, 3 schemas in a row failed on it"
    assert str(Stop(StopReason.CANARY_FAILED)) == "a schema in the canary failed"
    assert all(str(Stop(reason, limit=1, amount="1", in_a_row=3)) for reason in StopReason)


def test_a_result_says_its_reason_as_words_and_as_a_code_in_json() -> None:
    moved = result("m", reason=SkipReason.MOVED_BY_ANOTHER_RUN)
    done = result("d", Outcome.OK)
    assert moved.note == "already at target: moved by another run"
    shown = json.loads(to_json(report([moved, done], stop_reason=None).as_dict()))
    rows = {r["project_id"]: r for r in shown["results"]}
    assert rows["m"]["status"] == "skipped" and rows["m"]["note"] == moved.note
    assert rows["m"]["reason"] == "moved-by-another-run"
    assert rows["d"]["reason"] is None and rows["d"]["note"] is None
    assert shown["stop_reason"] is None and "stopped" in shown


def test_results_are_told_apart_by_their_reason_never_by_their_note() -> None:
    """A note that reads like another reason's words changes nothing: the code decides."""
    left = result("l", reason=SkipReason.NOT_STARTED, note=SkipReason.NOT_STARTED.note("interrupted"))
    look_alike = result("x", note="not started: but only in words")
    moved = result("m", reason=SkipReason.MOVED_BY_ANOTHER_RUN)
    prose = result("p", note="already at target: moved by another run")
    run = report([left, look_alike, moved, prose])
    assert [r.project_id for r in run.not_started()] == ["l"]
    assert [r.project_id for r in run.moved_by_another_run()] == ["m"]


def test_the_summary_line_is_rendered_from_the_enums(capsys: pytest.CaptureFixture[str]) -> None:
    stop = Stop(StopReason.MAX_FAILURES, limit=1, amount="1")
    results = [
        result("a", Outcome.FAILED, error="boom"),
        result("b", reason=SkipReason.MOVED_BY_ANOTHER_RUN),
        result("c", reason=SkipReason.NOT_STARTED, note=SkipReason.NOT_STARTED.note(str(stop))),
        result("d", Outcome.GONE, reason=SkipReason.DROPPED_SINCE_READ),
    ]
    print_fleet_report(report(results, stopped=str(stop), stop_reason=stop.reason), as_json=False)
    err = capsys.readouterr().err
    assert (
        "upgrade to a2: 0 ok, 1 failed, 2 skipped (1 already at target: moved by another run; "
        "1 not started: 1 schema(s) failed, the --max-failures 1 limit), 1 gone" in err
    )


@pytest.mark.parametrize(
    ("reason", "advice"),
    [(StopReason.CONNECTION_LOST, True), (StopReason.NODE_UNREACHABLE, False), (StopReason.FAIL_FAST, False)],
)
def test_the_progress_advises_a_rerun_only_when_the_database_connection_was_lost(
    reason: StopReason, advice: bool
) -> None:
    stream = io.StringIO()
    printer = ProgressPrinter(stream, tty=False)
    stop = Stop(reason, node="Citus worker w1:5432", in_a_row=3)
    failed = result("a", Outcome.FAILED, error="gone")
    printer(Progress(1, 4, 1, 0.5, failed, str(stop), stop_reason=reason))
    assert f"Stopping: {stop}; starting no more schemas" in stream.getvalue()
    assert ("rerun when the database is back" in stream.getvalue()) == advice


# ------------------------------------------------------------------------------ RunSpec
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"canary": 2, "canary_ids": ["s01"]}, "--canary and --canary-ids: pass one"),
        ({"fail_fast": True, "max_failures": 2}, "--fail-fast and --max-failures: pass one"),
        ({"canary_only": True}, "--canary-only needs a canary"),
        ({"seed": 3}, "--seed seeds --order random"),
        ({"max_failures": "0%"}, "--max-failures: '0%' is neither"),
        ({"retries": -1}, "--retries not negative"),
        ({"lock_timeout_ms": 0}, "--lock-timeout must be positive"),
        ({"canry": 2}, "unknown fleet option\\(s\\) canry"),
    ],
)
def test_a_bad_run_spec_is_refused_in_one_line_when_it_is_built(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        RunSpec.build(["s01", "s02"], **options)
    assert "\n" not in str(info.value)


def test_a_run_spec_is_built_once_from_keyword_options() -> None:
    spec = RunSpec.build(["b", "a", "b"], target="a2", jobs=3, canary="10%", order="random", seed=7, retries=0)
    assert spec.project_ids == ("b", "a") and spec.named and spec.target == "a2"
    assert spec.jobs == 3 and spec.retries == 0 and not spec.dry_run
    assert spec.staging.order == Order.RANDOM and spec.staging.seed == 7 and str(spec.staging.canary) == "10%"
    assert RunSpec.build() == RunSpec() and not RunSpec().named and RunSpec().staging == Staging()
    with pytest.raises(InvalidProjectId, match="invalid project id 'Not A Valid Id!'"):
        RunSpec(project_ids=("Not A Valid Id!",))
    with pytest.raises(ConfigurationError, match="render its SQL"):
        fleet.run(None, None, UPGRADE, RunSpec(dry_run=True))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ one rule
@pytest.fixture
def chain(chain_builder: ChainBuilder) -> Chain:
    chain_builder.add("a1", ITEMS).add("a2", 'op.add_column("items", sa.Column("note", sa.Text))')
    return Chain.load(chain_builder.ini)


def record(version: str | None, *, exists: bool = True, registered: bool = True, ready_at: str | None = None) -> Any:
    status = "ready" if ready_at else None
    return SchemaRecord("p", "project_p", exists, version, registered, ready_at, status)


def test_one_rule_gives_ensures_error_and_the_fleets_verdict(chain: Chain) -> None:
    assert UPGRADE.refusal(chain, "a2", "a1", exists=True) is Refusal.AHEAD
    assert DOWNGRADE.refusal(chain, "a1", "a2", exists=True) is Refusal.BEHIND
    assert UPGRADE.refusal(chain, None, "a2", exists=False) is Refusal.MISSING
    assert UPGRADE.refusal(chain, "zz", "a2", exists=True) is Refusal.UNKNOWN_REVISION
    assert PROVISION.refusal(chain, None, "a2", exists=False) is None
    for operation, current, target, error in [
        (UPGRADE, "a2", "a1", WorkspaceAhead),
        (DOWNGRADE, "a1", "a2", WorkspaceOutdated),
        (UPGRADE, "zz", "a2", UnknownRevision),
    ]:
        with pytest.raises(error):
            operation.check(chain, "p", "project_p", current, target, exists=True)
    with pytest.raises(WorkspaceNotFound):
        UPGRADE.check(chain, "p", "project_p", None, "a2", exists=False)

    assert decide(UPGRADE, chain, record("a2"), "a1", named=False) == Verdict(
        Outcome.SKIPPED, SkipReason.AHEAD_OF_TARGET
    )
    assert decide(DOWNGRADE, chain, record("a1"), "a2", named=False).reason is SkipReason.BELOW_TARGET  # type: ignore[union-attr]
    assert decide(UPGRADE, chain, record("a2", ready_at="a2"), "a2", named=False).reason is SkipReason.AT_TARGET  # type: ignore[union-attr]
    assert decide(UPGRADE, chain, record("a2"), "a2", named=False) == Work("p", "project_p", "a2")  # row behind
    assert decide(UPGRADE, chain, record("a1", registered=False), "a2", named=False).reason is SkipReason.ORPHAN  # type: ignore[union-attr]
    assert decide(UPGRADE, chain, record(None, exists=False), "a2", named=False).reason is SkipReason.MISSING  # type: ignore[union-attr]
    missing = decide(UPGRADE, chain, record(None, exists=False), "a2", named=True)
    assert isinstance(missing, Verdict) and missing.status == Outcome.FAILED and "does not exist" in str(missing.error)
    unknown = decide(UPGRADE, chain, record("zz"), "a2", named=False)
    assert isinstance(unknown, Verdict) and unknown.status == Outcome.FAILED and "zz" in str(unknown.error)
    assert decide(UPGRADE, chain, record("a1"), "a2", named=False) == Work("p", "project_p", "a1", True)
