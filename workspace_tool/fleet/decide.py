"""What a fleet run does with one project it read, from the batch read alone: work (a schema to migrate), or
a verdict (left alone: skipped with a reason, or failed with an error). The operation's rules are its own
(``Operation.refusal``); what is the fleet's alone is here: an orphan found by ``--all`` is skipped, a schema
at the target whose registry row agrees needs nothing, a project named but missing fails (and one named
behind head, when ensured without upgrading)."""

from __future__ import annotations

from dataclasses import dataclass

from workspace_tool.chain import Chain
from workspace_tool.fleet.outcome import Outcome, SkipReason
from workspace_tool.schema.operation import Operation, Refusal, Work
from workspace_tool.schema.state import SchemaRecord


@dataclass(frozen=True)
class Verdict:
    """A schema a run leaves alone, and why: SKIPPED with a reason, or FAILED with an error."""

    status: Outcome
    reason: SkipReason | None = None
    error: str | None = None

    @property
    def note(self) -> str | None:
        return None if self.reason is None else self.reason.note()


_SKIPPED = {
    Refusal.MISSING: SkipReason.MISSING,
    Refusal.BEHIND: SkipReason.BELOW_TARGET,
    Refusal.ABSENT: SkipReason.ABSENT,
}


def decide(
    operation: Operation, chain: Chain, record: SchemaRecord, target: str | None, *, named: bool
) -> Work | Verdict:
    """``named``: the project was named by the caller (not found by ``--all``). An operation with a task
    (drop, exec) runs no revision: its task's refusal alone decides."""
    r = record
    if operation.task is not None:
        refusal = operation.task.refusal(r)
        if refusal is None:
            return Work(r.project_id, r.schema, r.version, r.exists)
        return Verdict(Outcome.SKIPPED, _SKIPPED.get(refusal, SkipReason.AHEAD_OF_TARGET))
    if r.exists and not r.registered and not named:
        return Verdict(Outcome.SKIPPED, SkipReason.ORPHAN)
    if r.exists and r.version == target and chain.knows(r.version):
        if r.recorded_ready_at(target):
            return Verdict(Outcome.SKIPPED, SkipReason.AT_TARGET)
        return Work(r.project_id, r.schema, r.version)  # brings its registry row in line
    refusal = operation.refusal(chain, r.version, target, exists=r.exists)
    if refusal is None:
        return Work(r.project_id, r.schema, r.version, r.exists)
    # a named project missing (for an operation that doesn't create), or behind for one that creates but
    # doesn't upgrade (ensure(upgrade=False), as the manager's raises): what was asked can't be done
    behind_ensure = refusal is Refusal.BEHIND and operation.creates
    if refusal is Refusal.UNKNOWN_REVISION or (named and (refusal is Refusal.MISSING or behind_ensure)):
        error = operation.error(refusal, r.project_id, r.schema, r.version, target)
        return Verdict(Outcome.FAILED, error=str(error))
    return Verdict(Outcome.SKIPPED, _SKIPPED.get(refusal, SkipReason.AHEAD_OF_TARGET))
