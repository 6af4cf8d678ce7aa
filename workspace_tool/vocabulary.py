"""The words workspace-tool writes: every status, state, path and action as a string enum.

Their values are what the JSON reports, the registry and the CLI's tables show; a member compares equal
to its value (``Status.OK == "ok"``) and prints as it (``str(Path.FAST) == "fast"``).
"""

from __future__ import annotations

from enum import Enum


class Word(str, Enum):
    """A string enum that prints as its value (``str()``, f-strings, tables)."""

    def __str__(self) -> str:
        return str(self.value)


class StepKind(Word):
    """How one step of a plan reaches the database."""

    COMPILED = "compiled"  # Alembic's offline SQL, replayed under the schema's search_path
    ONLINE = "online"  # run through Alembic on the connection (it reads the database, or won't render)
    # One revision that can't run in a transaction (CREATE INDEX CONCURRENTLY, ...): its own step, sent
    # outside the schema's transactions, under the schema's session-level lock.
    NON_TRANSACTIONAL = "non-transactional"  # its compiled statements, each on its own
    ONLINE_NON_TRANSACTIONAL = "online non-transactional"  # through Alembic, on a connection in autocommit
    CLAIM = "claim"  # a spare schema already at the step's revision, renamed from the warm pool (pool.py)


class Path(Word):
    """Which path a schema's migration took (EnsureResult.path, SchemaResult.path, registry last_path)."""

    FAST = "fast"  # all of it compiled SQL
    ONLINE = "online"  # all of it through Alembic
    MIXED = "mixed"  # some of each
    POOL = "pool"  # a spare schema at head claimed from the warm pool and renamed: no revision ran
    NONE = "none"  # no SQL ran (already there, cached, verified)


class Action(Word):
    """What ensure/upgrade did to one project (EnsureResult.action)."""

    CACHED = "cached"  # known at head in this process: no I/O
    VERIFIED = "verified"  # its alembic_version read: at head
    CURRENT = "current"  # already at the target (the registry row may have been written)
    CREATED = "created"
    UPGRADED = "upgraded"
    DOWNGRADED = "downgraded"


class RegistryAction(Word):
    """The registry's last_action: what the last run did (status 'ready') or tried to do ('failed')."""

    CREATE = "create"  # the chain run into a new (or empty) schema
    UPGRADE = "upgrade"
    DOWNGRADE = "downgrade"
    REGISTER = "register"  # a row written for a schema already at its revision
    ADOPT = "adopt"  # the chain run into a hand-made schema, on request
    IMPORT = "import"  # built at an export's revision and its data copied in (workspace_tool.lifecycle)
    CLONE = "clone"  # built at another project's revision and its rows copied, server-side
    STAMP = "stamp"  # its version row set by hand (`workspace-tool stamp`): no revision ran
    QUARANTINE = "quarantine"  # dropped with --retain: its schema kept aside until restored or purged
    RESTORE = "restore"  # brought back from quarantine

    @classmethod
    def recording(cls, action: Action) -> RegistryAction:
        """The registry's word for an EnsureResult action."""
        return _RECORDED[action]


_RECORDED = {
    Action.CREATED: RegistryAction.CREATE,
    Action.UPGRADED: RegistryAction.UPGRADE,
    Action.DOWNGRADED: RegistryAction.DOWNGRADE,
    Action.CURRENT: RegistryAction.REGISTER,
    Action.VERIFIED: RegistryAction.REGISTER,
    Action.CACHED: RegistryAction.REGISTER,
}


class RegistryStatus(Word):
    READY = "ready"
    FAILED = "failed"
    DROPPED = "dropped"  # quarantined by `drop --retain`: its schema renamed aside (registry r0006)


class State(Word):
    """A project's state, as `status` shows it and as fleet runs select on."""

    AT_HEAD = "at head"
    BEHIND = "behind"
    AHEAD = "ahead/unknown"  # a revision this chain does not know
    FAILED = "failed"  # the last run failed on it
    EMPTY = "empty"  # a schema at base (no revision)
    MISSING = "missing"  # registered, but no schema
    ORPHAN = "orphan"  # a project schema with no registry row


class Status(Word):
    """What a fleet run did to one schema."""

    OK = "ok"  # this run migrated it (or wrote its registry row)
    FAILED = "failed"
    SKIPPED = "skipped"  # this run did not change it (see the result's note)
    GONE = "gone"  # dropped (by the application) after the run read it, before its turn: not a failure


class Stage(Word):
    """The stage of a fleet run a schema belongs to (SchemaResult.stage)."""

    CANARY = "canary"  # migrated first; the main stage starts only if none of it failed
    MAIN = "main"  # the rest (every schema of a run without a canary)


class Order(Word):
    """The order a fleet run starts schemas in (its canary is the first ones)."""

    NAME = "name"  # by project id
    RANDOM = "random"  # a shuffle seeded by the run's seed (reproducible)


class SpareState(Word):
    """A spare schema of the warm pool, as `pool status` shows it."""

    READY = "ready"  # at this chain's head, the current role's: the next new project may get it
    # behind this chain's head (or at it from another chain), and no release filled the pool for it lately
    # (workspace_pool_grace): never handed out; `pool fill` and `upgrade --all` drop it
    STALE = "stale"
    MISSING = "missing"  # its row is there, its schema is gone
    OTHER_ROLE = "other role"  # made by another role, which alone may claim it
    OTHER_RELEASE = "other release"  # another release's (chain, head), which still fills the pool: kept for it
    AHEAD = "ahead"  # at a revision this chain doesn't know (a newer release's): never dropped by this one
    # built under the role's default privileges as they were, not as they are: never handed out (a project
    # made from it would not have the privileges a fresh one has); the next `pool fill` replaces it
    OLD_PRIVILEGES = "old privileges"
    BUILDING = "building"  # built in parts, not complete: being built, or left by a crash (the next fill drops it)


class Health(Word):
    """What a check of `workspace-tool doctor` found (workspace_tool.doctor)."""

    OK = "ok"
    WARN = "warn"  # works, but worth changing before a big rollout
    PROBLEM = "problem"  # change it first: the command exits 1
