"""A revision range as steps: compiled SQL statements to replay, or a range Alembic must run online.

A Step's kind is explicit (``StepKind``); a new way for a revision to reach the database (a spare schema
renamed from a pool, a revision that must run outside a transaction) is a new kind here, and the schema's
plan (``workspace_tool.schema.plan``) says where each kind goes, its senders (``schema.send``) how it is sent.

A revision that can't run in a transaction is a step of its own (NON_TRANSACTIONAL: compiled, or
ONLINE_NON_TRANSACTIONAL: through Alembic); ``split_version_statements`` takes Alembic's version-table
bookkeeping out of its compiled statements, to run in the transactions before and after it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from workspace_tool.words import Word


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


# The version table, as Alembic renders it in offline mode at the start of a range from base, and the
# DROP that Alembic < 1.17 appends to a range ending at base (online mode never drops it: alembic #1822).
_CREATE_VERSION_TABLE = re.compile(r"^CREATE TABLE (alembic_version \()")
_DROP_VERSION_TABLE = re.compile(r"^DROP TABLE alembic_version;\s*\Z")
# The statement that moves alembic_version at the end of a compiled range (Alembic's offline rendering).
_VERSION_MOVE = re.compile(
    r"^(UPDATE alembic_version SET version_num='[^']*' WHERE alembic_version\.version_num = '[^']*'"
    r"|DELETE FROM alembic_version WHERE alembic_version\.version_num = '[^']*');\s*\Z"
)
# Alembic's bookkeeping in a one-revision range: the version table made (from base), the row moved.
_VERSION_TABLE_MADE = re.compile(r"^CREATE TABLE (IF NOT EXISTS )?alembic_version \(")
_VERSION_ROW_MOVED = re.compile(r"^(INSERT INTO|UPDATE|DELETE FROM) alembic_version\b")
_NOT_TRANSACTIONAL = (StepKind.NON_TRANSACTIONAL, StepKind.ONLINE_NON_TRANSACTIONAL)


@dataclass(frozen=True)
class Step:
    """Part of a range. COMPILED: ``statements``, each one SQL statement ending with ';', with no schema
    name in it (they run under the project schema's search_path). ONLINE: Alembic runs from_rev -> to_rev
    on the connection. NON_TRANSACTIONAL / ONLINE_NON_TRANSACTIONAL: one revision that can't run in a
    transaction, as compiled statements / through Alembic. CLAIM: a spare schema already at ``to_rev``,
    built by the chain whose fingerprint is ``spare_of``, is claimed from the warm pool and renamed (no
    statement of the chain runs)."""

    kind: StepKind
    from_rev: str | None
    to_rev: str | None
    statements: tuple[str, ...] = ()
    spare_of: str | None = None  # CLAIM: the fingerprint of the chain that built the spare

    @property
    def online(self) -> bool:
        """Whether Alembic runs it (no compiled statements)."""
        return self.kind in (StepKind.ONLINE, StepKind.ONLINE_NON_TRANSACTIONAL)

    @property
    def transactional(self) -> bool:
        """False for a revision that can't run in a transaction: it runs between the schema's transactions."""
        return self.kind not in _NOT_TRANSACTIONAL

    @property
    def sql(self) -> str | None:
        """The statements as one script (None for an online step)."""
        return None if self.online else "".join(s + "\n" for s in self.statements)

    @cached_property
    def version_move(self) -> tuple[tuple[str, ...], str] | None:
        """``split_version_move`` of its statements (None for an online step): worked out once per step, which
        a fleet run's plans share (``Chain.plan`` is cached), instead of once per schema."""
        return None if self.online else split_version_move(self.statements)

    @cached_property
    def version_row_moved_at(self) -> int | None:
        """The index of its first statement that writes the version row (INSERT, UPDATE or DELETE of
        alembic_version), or None: worked out once per step, as ``version_move`` is."""
        return next((i for i, s in enumerate(self.statements) if _VERSION_ROW_MOVED.match(s)), None)


@dataclass(frozen=True)
class Plan:
    from_rev: str | None
    to_rev: str | None
    steps: tuple[Step, ...]

    @property
    def path(self) -> Path:
        """FAST (all compiled), ONLINE, MIXED, POOL (a spare claimed), or NONE for an empty range."""
        if any(s.kind is StepKind.CLAIM for s in self.steps):
            return Path.POOL
        kinds = {s.online for s in self.steps}
        if not kinds:
            return Path.NONE
        if kinds == {False}:
            return Path.FAST
        return Path.ONLINE if kinds == {True} else Path.MIXED

    @property
    def compiled(self) -> bool:
        """True when every step is compiled SQL (an empty plan too)."""
        return not any(s.online for s in self.steps)

    @property
    def statements(self) -> tuple[str, ...] | None:
        """Every statement of the range, when all of it compiled."""
        if not self.compiled:
            return None
        return tuple(s for step in self.steps for s in step.statements)

    @property
    def sql(self) -> str | None:
        """The whole range as one script, when all of it compiled."""
        statements = self.statements
        return None if statements is None else "".join(s + "\n" for s in statements)

    def split_version_move(self) -> tuple[tuple[str, ...], str] | None:
        """``split_version_move`` of the whole range, when all of it compiled."""
        statements = self.statements
        return None if statements is None else split_version_move(statements)


def split_version_move(statements: Sequence[str]) -> tuple[tuple[str, ...], str] | None:
    """(the statements before it, the final UPDATE/DELETE of alembic_version, without its ';') for
    compiled statements that end by moving an existing version row; None otherwise (a range from base
    inserts the row instead)."""
    if not statements or not (final := _VERSION_MOVE.match(statements[-1])):
        return None
    return tuple(statements[:-1]), final.group(1)


def split_version_statements(statements: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """One revision's compiled statements as (the version table made, from base; the revision's own
    statements; the version row moved): a non-transactional step runs only the middle ones outside a
    transaction, the first in the transaction before it, the last in the one after it succeeded."""
    rest = list(statements)
    made = [rest.pop(0)] if rest and _VERSION_TABLE_MADE.match(rest[0]) else []
    moved: list[str] = []
    while rest and _VERSION_ROW_MOVED.match(rest[-1]):
        moved.insert(0, rest.pop())
    return tuple(made), tuple(rest), tuple(moved)


def compiled_statements(chunks: list[str], from_rev: str | None, to_rev: str | None) -> tuple[str, ...]:
    """Alembic's offline output (one write per statement or comment) as statements, with the version
    table treated as Alembic online treats it.

    Online, ``downgrade base`` leaves an empty alembic_version table and an upgrade from base creates it
    only if missing.  Offline, Alembic always emits CREATE TABLE for a range from base, and before 1.17 a
    DROP TABLE for a range ending at base.  So a range from base creates the table IF NOT EXISTS (a schema
    downgraded to base, by us or by plain Alembic, still has it) and a range to base keeps it."""
    statements = []
    created = False
    for chunk in chunks:
        text = chunk.strip()
        if not text or all(line.startswith("--") for line in text.splitlines()):
            continue  # Alembic's "-- Running upgrade a -> b" comments
        if from_rev is None and not created and _CREATE_VERSION_TABLE.match(text):
            text = _CREATE_VERSION_TABLE.sub(r"CREATE TABLE IF NOT EXISTS \1", text, count=1)
            created = True
        if to_rev is None and _DROP_VERSION_TABLE.match(text):
            continue
        statements.append(text)
    return tuple(statements)
