"""What a migration may do to a schema: the operation type that owns the rules.

An Operation says which directions it may move a schema (up, down), whether it creates a missing schema,
and whether the one-round-trip fast lane may be tried. Its rules are written once, in ``refusal``: ``check``
raises the error a refusal means (ensure, the careful path), and a fleet run turns the same refusal into a
skipped or failed result (workspace_tool.fleet.decide). ``ensure``, ``upgrade``, ``downgrade`` and
``provision`` are instances; a new fleet command is a new instance here plus a RunSpec
(workspace_tool.fleet.spec) and its click command in workspace_tool/cli.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Connection

from workspace_tool.chain import Chain
from workspace_tool.errors import (
    UnknownRevision,
    WorkspaceAhead,
    WorkspaceError,
    WorkspaceNotFound,
    WorkspaceOutdated,
)
from workspace_tool.flavor import Flavor
from workspace_tool.registry.table import RegistryAction
from workspace_tool.schema.state import SchemaRecord
from workspace_tool.words import Word


class Action(Word):
    """What ensure/upgrade did to one project (EnsureResult.action)."""

    CACHED = "cached"  # known at head in this process: no I/O
    VERIFIED = "verified"  # its alembic_version read: at head
    CURRENT = "current"  # already at the target (the registry row may have been written)
    CREATED = "created"
    UPGRADED = "upgraded"
    DOWNGRADED = "downgraded"


def recorded(action: Action) -> RegistryAction:
    """The registry's last_action for what a migration did (EnsureResult.action)."""
    return _RECORDED[action]


_RECORDED = {
    Action.CREATED: RegistryAction.CREATE,
    Action.UPGRADED: RegistryAction.UPGRADE,
    Action.DOWNGRADED: RegistryAction.DOWNGRADE,
    Action.CURRENT: RegistryAction.REGISTER,
    Action.VERIFIED: RegistryAction.REGISTER,
    Action.CACHED: RegistryAction.REGISTER,
}


class Refusal(Word):
    """Why an operation may not take a schema from its revision to the target (``Operation.refusal``)."""

    UNKNOWN_REVISION = "unknown-revision"  # the schema is at a revision the chain does not know
    MISSING = "missing"  # no schema, and the operation does not create one
    BEHIND = "behind"  # below the target, and the operation does not move schemas up
    AHEAD = "ahead"  # above the target, and the operation does not move schemas down
    ABSENT = "absent"  # no schema and no registry row: a task (drop) has nothing to do to it


@dataclass(frozen=True)
class Work:
    """A schema to migrate, as the batch read saw it."""

    project_id: str
    schema: str
    from_revision: str | None
    exists: bool = True  # the fast lane's guards check it is still so


class SchemaTask(Protocol):
    """What an operation that does not migrate does to each schema of a fleet run (drop, exec: see
    workspace_tool.lifecycle): it refuses a schema from the batch read alone, then runs on the worker's
    connection, in transactions of its own that bound every lock wait by ``lock_timeout_ms``. Raising
    WorkspaceNotFound for a schema the read saw reports it gone; a lock timeout or a lost connection is
    retried as a migration's is; any other error fails it (its registry row is not marked failed)."""

    @property
    def reads_versions(self) -> bool:
        """Whether it needs each schema's version (the fleet read of every alembic_version is skipped
        otherwise: records come back with version None)."""
        ...

    def refusal(self, record: SchemaRecord) -> Refusal | None:
        """Why it leaves this schema alone (a skip), or None to run on it."""
        ...

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

    @property
    def migrates(self) -> bool:
        """Runs revisions (no task): the fleet builds the reference catalog and checks sessions for it."""
        return self.task is None

    @property
    def reads_versions(self) -> bool:
        """Whether a fleet run must read every selected schema's version to do it."""
        return self.task is None or self.task.reads_versions

    def action(self, chain: Chain, current: str | None, target: str | None, *, exists: bool) -> Action:
        """EnsureResult.action for bringing a schema at ``current`` to ``target``."""
        if current == target and exists:
            return Action.CURRENT
        if current is None:
            return Action.CREATED
        return Action.UPGRADED if chain.is_upgrade(current, target) else Action.DOWNGRADED

    def refusal(self, chain: Chain, current: str | None, target: str | None, *, exists: bool) -> Refusal | None:
        """The one place of this operation's rules: why it may not take a schema at ``current`` (which
        ``exists`` or not) to ``target``, or None when it may (or the schema is there already)."""
        if not chain.knows(current):
            return Refusal.UNKNOWN_REVISION
        if not exists and not self.creates:
            return Refusal.MISSING
        if current == target and exists:
            return None
        if chain.is_upgrade(current, target):
            return Refusal.BEHIND if exists and not self.upgrades else None
        return None if self.downgrades else Refusal.AHEAD

    def error(
        self, refusal: Refusal, project_id: str, schema: str, current: str | None, target: str | None
    ) -> WorkspaceError:
        """The error a refusal means: it says what to run instead."""
        if refusal is Refusal.UNKNOWN_REVISION:
            return UnknownRevision(schema, str(current))
        if refusal is Refusal.MISSING:
            return WorkspaceNotFound(project_id, schema)
        if refusal is Refusal.BEHIND:
            return WorkspaceOutdated(project_id, schema, current, str(target))
        return WorkspaceAhead(project_id, schema, str(current), target)

    def check(
        self, chain: Chain, project_id: str, schema: str, current: str | None, target: str | None, *, exists: bool
    ) -> None:
        """Raise the error that says what to run instead, when this operation may not take the schema from
        ``current`` to ``target``; nothing has been changed then."""
        refusal = self.refusal(chain, current, target, exists=exists)
        if refusal is not None:
            raise self.error(refusal, project_id, schema, current, target)

    def fast_lane(self, work: Work) -> bool:
        """Whether a fleet run may try the one-round-trip lane first: not for an existing schema this
        operation may create into (it may be a hand-made one, which only the careful path inspects)."""
        return not (self.creates and work.exists)


ENSURE = Operation("ensure", upgrades=True, downgrades=False, creates=True)
ENSURE_EXISTING = Operation("ensure", upgrades=False, downgrades=False, creates=True)  # ensure(upgrade=False)
UPGRADE = Operation("upgrade", upgrades=True, downgrades=False, creates=False)
DOWNGRADE = Operation("downgrade", upgrades=False, downgrades=True, creates=False)
PROVISION = Operation("provision", upgrades=True, downgrades=False, creates=True)
