"""What became of each schema of a fleet run, and why: enums, with the words tables and summaries show
rendered from them (never parsed back).

- ``Outcome``: what the run did to one schema (``SchemaResult.status``: ok, failed, skipped, gone).
- ``SkipReason``: why a schema was skipped (or is gone); ``SchemaResult.reason``, shown as its ``note``.
- ``StopReason``: why a run (one stage of it) stopped starting schemas; ``FleetReport.stop_reason``, shown
  as ``FleetReport.stopped`` (a ``Stop`` carries the numbers its text needs).

The values of SkipReason and StopReason are the machine codes the JSON output gives beside the text
(``"reason": "moved-by-another-run"``, ``"stop_reason": "canary-failed"``).
"""

from __future__ import annotations

from dataclasses import dataclass

from workspace_tool.words import Word


class Outcome(Word):
    """What a fleet run did to one schema (SchemaResult.status)."""

    OK = "ok"  # this run migrated it (or wrote its registry row)
    FAILED = "failed"
    SKIPPED = "skipped"  # this run did not change it (see the result's reason)
    GONE = "gone"  # dropped (by the application) after the run read it, before its turn: not a failure


class SkipReason(Word):
    """Why a run left a schema alone (or found it gone): the code; ``note()`` is the text shown."""

    AT_TARGET = "at-target"
    MOVED_BY_ANOTHER_RUN = "moved-by-another-run"  # the read saw it elsewhere; under its lock it was at the target
    NOT_STARTED = "not-started"  # the run stopped before its turn (its StopReason says why)
    MISSING = "missing"  # registered, but its schema is missing (a run not allowed to create it)
    ORPHAN = "orphan"  # a project schema with no registry row, found by --all
    BELOW_TARGET = "below-target"  # a downgrade's schema already below its target
    AHEAD_OF_TARGET = "ahead-of-target"  # an upgrade's schema ahead of its target
    DROPPED_SINCE_READ = "dropped-since-read"  # a GONE result: dropped after the read, before its turn
    ABSENT = "absent"  # a task's (drop) project with no schema and no registry row: nothing to do

    def note(self, stopped: str | None = None) -> str:
        """The words shown for this reason; NOT_STARTED says why the run stopped (``stopped``)."""
        if self is SkipReason.NOT_STARTED:
            return NOT_STARTED + (stopped or "")
        return _NOTES[self]


NOT_STARTED = "not started: "
_NOTES = {
    SkipReason.AT_TARGET: "already at target",
    SkipReason.MOVED_BY_ANOTHER_RUN: "already at target: moved by another run",
    SkipReason.MISSING: "registered but its schema is missing: `workspace-tool ensure` recreates it",
    SkipReason.ORPHAN: "not in the registry (orphan): name it to adopt it, or drop it with `workspace-tool drop`",
    SkipReason.BELOW_TARGET: "already below the target: use upgrade",
    SkipReason.AHEAD_OF_TARGET: "ahead of the target: use downgrade",
    SkipReason.DROPPED_SINCE_READ: "dropped since the run read it: nothing to do",
    SkipReason.ABSENT: "nothing there: no schema, no registry row",
}


class StopReason(Word):
    """Why a run stopped starting schemas: the code; a ``Stop`` renders the text."""

    INTERRUPTED = "interrupted"  # Ctrl-C
    CANARY_FAILED = "canary-failed"  # a schema of the canary stage failed
    CANARY_ONLY = "canary-only"  # the canary passed; --canary-only leaves the main stage for the next command
    FAIL_FAST = "fail-fast"  # --fail-fast (the default for named projects): the first failure
    MAX_FAILURES = "max-failures"  # the main stage reached its --max-failures limit
    CONNECTION_LOST = "connection-lost"  # DEAD_AFTER schemas in a row failed on a lost connection
    NODE_UNREACHABLE = "node-unreachable"  # the same, on a (Citus) node that does not answer


CONNECTION_LOST = "the database connection was lost"


@dataclass(frozen=True)
class Stop:
    """A reason to stop, with what its text names: the limit and the option's amount (MAX_FAILURES),
    the node (NODE_UNREACHABLE), the failures in a row (CONNECTION_LOST, NODE_UNREACHABLE)."""

    reason: StopReason
    limit: int | None = None
    amount: str | None = None  # the --max-failures given: '2' or '20%'
    node: str | None = None
    in_a_row: int | None = None

    def __str__(self) -> str:
        reason = self.reason
        if reason is StopReason.MAX_FAILURES:
            return f"{self.limit} schema(s) failed, the --max-failures {self.amount} limit"
        if reason in (StopReason.CONNECTION_LOST, StopReason.NODE_UNREACHABLE):
            lost = CONNECTION_LOST if self.node is None else f"{self.node} is unreachable"
            return f"{lost}, {self.in_a_row} schemas in a row failed on it"
        return _STOPS[reason]


_STOPS = {
    StopReason.INTERRUPTED: "interrupted",
    StopReason.CANARY_FAILED: "a schema in the canary failed",
    StopReason.CANARY_ONLY: "--canary-only: the main stage is left for the next command",
    StopReason.FAIL_FAST: "--fail-fast stopped after a failure",
}
