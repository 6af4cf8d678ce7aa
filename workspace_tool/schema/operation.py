"""What a migration may do to a schema: the operation type that owns the rules.

An Operation says which directions it may move a schema (up, down), whether it creates a missing schema,
whether the one-round-trip fast lane may be tried, and what a fleet run does with each schema it finds
(``decide``). ``ensure``, ``upgrade``, ``downgrade`` and ``provision`` are instances; a new fleet command is a
new instance here plus its click command in workspace_tool/cli.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Connection

from workspace_tool.chain import Chain
from workspace_tool.errors import UnknownRevision, WorkspaceAhead, WorkspaceNotFound, WorkspaceOutdated
from workspace_tool.flavor import Flavor
from workspace_tool.schema.state import SchemaRecord
from workspace_tool.vocabulary import Action, Status


@dataclass(frozen=True)
class Work:
    """A schema to migrate, as the batch read saw it (picklable: it crosses to worker processes)."""

    project_id: str
    schema: str
    from_revision: str | None
    exists: bool = True  # the fast lane's guards check it is still so


@dataclass(frozen=True)
class Verdict:
    """A schema a run leaves alone, and why: SKIPPED with a note, or FAILED with an error."""

    status: Status
    note: str | None = None
    error: str | None = None


class SchemaTask(Protocol):
    """What an operation that does not migrate does to each schema of a fleet run (drop, exec: see
    workspace_tool.lifecycle): it decides from the batch read, then runs on the worker's connection, in
    transactions of its own that bound every lock wait by ``lock_timeout_ms``. Picklable (a module-level
    class), to cross to worker processes. Raising WorkspaceNotFound for a schema the read saw reports it
    gone; a lock timeout or a lost connection is retried as a migration's is; any other error fails it."""

    def decide(self, record: SchemaRecord, *, named: bool) -> Work | Verdict: ...

    def run(self, conn: Connection, work: Work, flavor: Flavor, lock_timeout_ms: int) -> str | None:
        """Do it to one schema on a database of ``flavor``; returns a note for its result (None: nothing
        to say)."""
        ...


@dataclass(frozen=True)
class Operation:
    name: str
    upgrades: bool  # may move an existing schema up
    downgrades: bool  # may move a schema down
    creates: bool  # may create a schema that does not exist (and runs the chain into an empty one)
    task: SchemaTask | None = None  # not a migration: what is done to each schema instead (no revision runs)

    def __str__(self) -> str:
        return self.name

    def action(self, chain: Chain, current: str | None, target: str | None, *, exists: bool) -> Action:
        """EnsureResult.action for bringing a schema at ``current`` to ``target``."""
        if current == target and exists:
            return Action.CURRENT
        if current is None:
            return Action.CREATED
        return Action.UPGRADED if chain.is_upgrade(current, target) else Action.DOWNGRADED

    def check(
        self, chain: Chain, project_id: str, schema: str, current: str | None, target: str | None, *, exists: bool
    ) -> None:
        """Raise the error that says what to run instead, when this operation may not take the schema from
        ``current`` to ``target``; nothing has been changed then."""
        chain.check_known(schema, current)
        if not exists and not self.creates:
            raise WorkspaceNotFound(project_id, schema)
        if current == target and exists:
            return
        if chain.is_upgrade(current, target):
            if exists and not self.upgrades:
                raise WorkspaceOutdated(project_id, schema, current, str(target))
        elif not self.downgrades:
            raise WorkspaceAhead(project_id, schema, str(current), target)

    def fast_lane(self, work: Work) -> bool:
        """Whether a fleet run may try the one-round-trip lane first: not for an existing schema this
        operation may create into (it may be a hand-made one, which only the careful path inspects)."""
        return not (self.creates and work.exists)

    def decide(self, chain: Chain, record: SchemaRecord, target: str | None, *, named: bool) -> Work | Verdict:
        """What a fleet run does with one project, from the batch read alone: work, or a verdict.
        ``named``: the project was named by the caller (not found by ``--all``)."""
        if self.task is not None:
            return self.task.decide(record, named=named)
        r = record
        if not r.exists and not self.creates:
            if named:
                return Verdict(Status.FAILED, error=str(WorkspaceNotFound(r.project_id, r.schema)))
            return Verdict(
                Status.SKIPPED, note="registered but its schema is missing: `workspace-tool ensure` recreates it"
            )
        if r.exists and not r.registered and not named:
            return Verdict(
                Status.SKIPPED,
                note="not in the registry (orphan): name it to adopt it, or drop it with `workspace-tool drop`",
            )
        if r.version is not None and not chain.knows(r.version):
            return Verdict(Status.FAILED, error=str(UnknownRevision(r.schema, r.version)))
        if r.exists and r.version == target:
            if r.recorded_ready_at(target):
                return Verdict(Status.SKIPPED, note="already at target")
            return Work(r.project_id, r.schema, r.version)  # brings its registry row in line
        below = chain.position(r.version) < chain.position(target)
        if below and not self.upgrades:
            return Verdict(Status.SKIPPED, note="already below the target: use upgrade")
        if r.exists and not below and not self.downgrades:
            return Verdict(Status.SKIPPED, note="ahead of the target: use downgrade")
        return Work(r.project_id, r.schema, r.version, r.exists)


ENSURE = Operation("ensure", upgrades=True, downgrades=False, creates=True)
ENSURE_EXISTING = Operation("ensure", upgrades=False, downgrades=False, creates=True)  # ensure(upgrade=False)
UPGRADE = Operation("upgrade", upgrades=True, downgrades=False, creates=False)
DOWNGRADE = Operation("downgrade", upgrades=False, downgrades=True, creates=False)
PROVISION = Operation("provision", upgrades=True, downgrades=False, creates=True)
