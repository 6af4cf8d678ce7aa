"""One schema's migration, planned: the one definition of what moves a project schema from one revision to
another, as parts and statements, with no I/O (schema/send.py sends it; ``render`` prints it).

A plan is made from a revision range's steps (``Chain.plan``), the schema, the database's flavor
(workspace_tool.flavor), the registry row to write, what a batch read saw (``expected``), grants and a
lock timeout. Planned in one transaction::

    BEGIN ISOLATION LEVEL READ COMMITTED
    SET LOCAL lock_timeout = '...'            -- when bounded (the flavor's statements)
    SELECT pg_advisory_xact_lock(...)         -- the schema's lock: other schemas never wait
                                              -- (the order of these two is the flavor's: ``Flavor.locked``)
    CREATE SCHEMA ...                         -- when it does not exist (after the flavor's statements)
    SET LOCAL search_path TO <schema>, <extension schema>
    <the plan's steps>                        -- compiled statements, or Alembic online; a flavor's separate
                                              -- version check just before the first version move: it
                                              -- fails unless the version is as read
    <grants>                                  -- an owner role, when asked
    <the registry row>                        -- guarded: written only if the version moved as expected
    COMMIT

**Guards.** A plan with ``expected`` (what a batch read of the fleet saw) can be sent without reading the
schema first: CREATE SCHEMA fails if the schema appeared since; on an existing schema, the registry row is
written by the statement that moves alembic_version from the version read, which calls
``project_registry.expect_version`` (registry revision r0005) with whether it moved: if not, that raises
SQLSTATE ``dberrors.STATE_CHANGED`` and the transaction changes nothing. A flavor that can't afford that
statement (``Flavor.separate_version_check``) gets the same call at the migration's first version move,
in a statement of its own with that move (``_guarded_move``).

**Parts.** A revision that can't run in a transaction (a NON_TRANSACTIONAL step: CREATE INDEX
CONCURRENTLY, ...) cuts the migration into parts (``parts()``): transactions, each ending with the
registry row of the revision it reaches, and between them the steps that run outside any transaction, on a
session that holds the schema's session-level lock from start to end::

    SELECT pg_advisory_lock(...)              -- the same lock, held by the session across the parts
    BEGIN ... COMMIT                          -- the steps before it, with the registry row they reach
    SET search_path TO <schema>, <ext>        -- for the session; its lock_timeout too
    CREATE INDEX CONCURRENTLY ...             -- each statement on its own, outside any transaction
    RESET search_path                         -- (the session's own settings are put back)
    BEGIN ... COMMIT                          -- its version row and registry row, then the steps after it
    SELECT pg_advisory_unlock(...)

**Claims.** A new schema at head can instead be claimed from the warm pool (a CLAIM step,
workspace_tool.spares): the prelude, then ONE statement that renames a spare already at head and writes the
registry row, then the grants.

A new step kind (chain/plan.py) is planned here, once, for every caller; a new way of sending goes in
schema/send.py; what differs between kinds of database, in the flavor.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from workspace_tool import transactions
from workspace_tool.chain import Chain, Step
from workspace_tool.chain.plan import Path, StepKind, split_version_move, split_version_statements
from workspace_tool.flavor import Flavor
from workspace_tool.namespace import DEFAULT, Namespace
from workspace_tool.registry import expect_version_sql, update_sql, upsert_sql
from workspace_tool.registry.table import REGISTRY_TABLE, RegistryAction
from workspace_tool.spares.store import claim_project_statement, claim_statement
from workspace_tool.sql import (
    lock_id,
    lock_statement,
    lock_timeout_statement,
    quote_ident,
    search_path_sql,
    sql_literal,
    unlock_statement,
)

BEGIN = f"BEGIN ISOLATION LEVEL {transactions.ISOLATION_LEVEL};"  # whatever the server's default
COMMIT = "COMMIT;"
ASYNC_COMMIT = "SET LOCAL synchronous_commit = off;"  # workspace_pool_claim_commit = async (spares.settings)
SET_ISOLATION = f"SET TRANSACTION ISOLATION LEVEL {transactions.ISOLATION_LEVEL};"  # an implicit transaction's


@dataclass(frozen=True)
class Expected:
    """The schema as a batch read saw it. A plan guarded by it fails, changing nothing, if the schema is no
    longer so (see the module's docstring)."""

    exists: bool
    version: str | None


@dataclass(frozen=True)
class RegistryRecord:
    """The registry row the transaction writes (``project_registry.workspace_config``)."""

    project_id: str
    revision: str | None
    action: RegistryAction
    path: Path
    earlier_ms: float = 0.0  # the migration's time before this transaction (its earlier parts), recorded too


@dataclass(frozen=True)
class SchemaPlan:
    """One schema's migration: ``steps`` (a revision range's) into ``schema`` on a database of ``flavor``."""

    schema: str
    flavor: Flavor
    steps: tuple[Step, ...] = ()
    lock: bool = True  # the schema's advisory lock (scratch schemas, which no one else sees, go without)
    lock_timeout_ms: int | None = None
    create_schema: bool = False
    grants: tuple[str, ...] = ()
    record: RegistryRecord | None = None
    expected: Expected | None = None  # None: the caller took the lock and read the state itself
    namespace: Namespace = DEFAULT  # whose registry the row and the guard are written in
    # committed without waiting for its WAL flush when sent in one round trip: a claim sent alone
    # (workspace_pool_claim_commit, spares.settings), a fleet run's batch (RunSpec.commit); not otherwise
    async_commit: bool = False

    # -------------------------------------------------------------- one transaction
    def prelude(self) -> list[str]:
        """What comes first: the lock timeout and the schema's lock, in the order the flavor sends them
        (``Flavor.locked``: on Citus the lock first, in BEGIN's round trip)."""
        lock = lock_statement(self.schema) if self.lock else None
        return [s + ";" for s in self.flavor.locked(lock, self.lock_timeout_ms)]

    def units(self) -> list[str | Step]:
        """Everything after the prelude, in order: statements, and the online steps between them. A claim:
        the claim with its registry row (one statement), then the grants on the renamed schema."""
        if self.claims:
            claim = self._steps_and_record()[1]
            return [f"{claim};", *(g + ";" for g in self.grants)]
        units: list[str | Step] = []
        if self.create_schema:
            units.extend(s + ";" for s in self.flavor.before_project_schema())
            units.append(f"CREATE SCHEMA {quote_ident(self.schema)};")
        units.append(search_path_sql(self.schema, self.flavor.extension_schema) + ";")
        check = self._version_check()
        steps, record = self._steps_and_record()
        for step in steps:
            if step.online:
                units.append(step)
            elif check is not None and (at := step.version_row_moved_at) is not None:
                before, move, after = step.statements[:at], step.statements[at], step.statements[at + 1 :]
                units.extend([*before, *self._guarded_move(move, check), *after])
                check = None
            else:
                units.extend(step.statements)
        units.extend(g + ";" for g in self.grants)
        if check is not None:  # no version row moved before the registry row: checked before it
            units.append(check + ";")
        if record is not None:
            units.append(record + ";")
        return units

    def statements(self) -> list[str]:
        """Every statement from the lock to the registry row, when all steps are compiled."""
        units = self.units()
        if any(isinstance(u, Step) for u in units) or not self.in_one_transaction:
            raise ValueError("a plan with online or non-transactional steps has no fixed statements")
        return self.prelude() + [u for u in units if isinstance(u, str)]

    def batch(self, *, implicit: bool = False) -> str:
        """The whole transaction, BEGIN to COMMIT, as the one batch ``send.send_batch`` sends. ``implicit``:
        without them, its isolation level set first (one implicit transaction: see ``send.send_batch``)."""
        if not self.batchable:
            raise ValueError("only a guarded, compiled plan in one transaction, on a flavor that batches, is one batch")
        if implicit:
            return self._if_missing()
        return "\n".join([*self._begin(), *self.statements(), COMMIT])

    def _begin(self) -> list[str]:
        """BEGIN, and for a plan sent as one batch that commits without waiting for its WAL flush
        (``async_commit``), the setting that says so: the fleet then waits once, for every schema's, at the end
        of its run (``transactions.flush_commits``). A plan sent otherwise commits as the server says."""
        return [BEGIN, ASYNC_COMMIT] if self.async_commit and not self.claims and self.batchable else [BEGIN]

    def _if_missing(self) -> str:
        """A new schema's build as one implicit transaction that changes nothing, and raises no error, if the
        schema exists: its isolation level, the prelude (the schema's lock), then a DO block that runs the rest
        (CREATE SCHEMA, the chain, the registry row: one EXECUTE of the same statements) only if no schema of
        that name exists once the lock is held; last, the duration the registry row recorded, read back only if
        this transaction wrote it (no row: the schema existed, nothing written, and nothing flushed at commit:
        ``pg_current_xact_id_if_assigned`` assigns no transaction id, unlike ``pg_current_xact_id``).
        Each statement in a VOLATILE DO block takes a new snapshot (READ COMMITTED), so the existence check
        sees what the lock's previous holder committed. SET LOCAL inside it lasts to the transaction's end."""
        if self.expected is None or self.expected.exists or not self.create_schema or self.record is None:
            raise ValueError("only the guarded build of a missing schema, with its registry row, is sent if missing")
        body = "\n".join(u for u in self.units() if isinstance(u, str))
        inner = _dollar_tag("wst_build", body)
        block = (
            f"BEGIN IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = {sql_literal(self.schema)}) THEN "
            f"EXECUTE {inner}\n{body}\n{inner}; END IF; END"
        )
        outer = _dollar_tag("wst_if_missing", block)
        written = self.namespace.sql(
            f"SELECT last_duration_ms FROM {REGISTRY_TABLE} WHERE project_id = {sql_literal(self.record.project_id)} "
            "AND xmin = pg_current_xact_id_if_assigned()::xid"
        )
        return "\n".join([SET_ISOLATION, *self.prelude(), f"DO {outer}{block}{outer};", f"{written};"])

    @property
    def claims(self) -> bool:
        """True for a schema claimed from the warm pool (a CLAIM step) rather than built."""
        return any(s.kind is StepKind.CLAIM for s in self.steps)

    @property
    def compiled(self) -> bool:
        return not any(s.online for s in self.steps)

    @property
    def in_one_transaction(self) -> bool:
        """False when a step can't run in a transaction: the migration is then sent in ``parts()``."""
        return all(s.transactional for s in self.steps)

    @property
    def guarded(self) -> bool:
        """True when the transaction checks the schema is as ``expected`` (sendable without reading it)."""
        if self.expected is None:
            return False
        if not self.expected.exists:
            return self.create_schema
        return self.expected.version is not None and self._final_version_move() is not None

    @property
    def batchable(self) -> bool:
        """Whether the whole transaction may go as ONE round trip (``batch``): guarded, compiled, in one
        transaction, on a flavor whose statements may share a batch."""
        return self.guarded and self.compiled and self.in_one_transaction and self.flavor.batches

    # -------------------------------------------------------------- guards
    def _final_version_move(self) -> str | None:
        moved = self.steps[-1].version_move if self.steps else None
        return None if moved is None else moved[1]

    def _guards_by_cte(self) -> bool:
        """Whether the registry row is written by the statement that moves the version (the guard of an
        existing schema, unless the flavor checks the version separately)."""
        exists = self.expected is not None and self.expected.exists
        return exists and self.guarded and not self.flavor.separate_version_check

    def _version_check(self) -> str | None:
        """A flavor's separate guard of an existing schema: a statement that fails unless its version table
        holds the expected version and nothing else, sent under the schema's lock (nothing else moves it)
        at the migration's first version move (``units``, ``_guarded_move``): a schema at another revision
        fails it, and the whole transaction, the DDL before it included, rolls back (a DDL that fails first
        on such a schema sends the fleet to the careful path too: ``migrate._moved``). One plain query of
        the table (an aggregate, no subquery): Citus sends it to the worker as it is, measured ~0.09 ms less
        per schema there than an EXISTS subquery."""
        if not self.flavor.separate_version_check or self.expected is None or not self.expected.exists:
            return None
        if not self.guarded:
            return None
        found = f"coalesce(bool_and(version_num = {sql_literal(self.expected.version)}), false)"
        guard = self.namespace.sql(expect_version_sql(found, self.schema, self.expected.version))
        return f"SELECT {guard} FROM alembic_version"

    def _guarded_move(self, move: str, check: str) -> list[str]:
        """The first version move of a plan with a separate version check (``check``), guarded: ONE statement
        that moves the version row and fails unless it moved and the version table held the expected version
        and nothing else (what ``check`` asks, of the table as it was before the move). Citus sends it to the
        worker whole, as one statement (the version table is a tenant table there), where the check and the
        move would be two. A move of another form: ``check``, then the move."""
        split = split_version_move([move])
        if split is None or self.expected is None:
            return [check + ";", move]
        expected = sql_literal(self.expected.version)
        held = f"coalesce((SELECT bool_and(version_num = {expected}) FROM alembic_version), false)"
        guard = self.namespace.sql(
            expect_version_sql(f"EXISTS (SELECT 1 FROM moved) AND {held}", self.schema, self.expected.version)
        )
        return [f"WITH moved AS ({split[1]} RETURNING 1) SELECT {guard};"]

    def claim_alone(self) -> str:
        """A claim as one implicit transaction sent alone (``send.claim_alone``): its isolation level and lock
        timeout, then ONE function call that takes the schema's lock itself, claims a spare and writes the
        registry row (registry r0009's ``claim_project``), returning a row only if it claimed one. Not with
        grants: they need the renamed schema (``units``)."""
        if not self.claims or self.grants or not self.lock or self.record is None:
            raise ValueError(
                "only a claim without grants, under the schema's lock, with its registry row, is sent alone"
            )
        bound = self.flavor.locked(None, self.lock_timeout_ms)  # the lock is the function's
        step, r = self.steps[0], self.record
        if step.spare_of is None or step.to_rev != r.revision or r.earlier_ms:
            raise ValueError("a claim records the revision it claims, in one transaction")
        lock = lock_id(self.schema)
        claim = claim_project_statement(lock, r.project_id, self.schema, r.revision, step.spare_of, r.action, r.path)
        commit = [ASYNC_COMMIT] if self.async_commit else []
        return "\n".join([SET_ISOLATION, *commit, *(s + ";" for s in bound), f"{self.namespace.sql(claim)};"])

    def _steps_and_record(self) -> tuple[tuple[Step, ...], str | None]:
        """The steps, and the registry upsert; with a guard on an existing schema, the last step's final
        version UPDATE/DELETE and the upsert become one statement that fails unless the version moved
        (``_guards_by_cte``)."""
        if self.record is None:
            if self.claims:
                raise ValueError("a claim writes its registry row in the same statement: it needs a record")
            return self.steps, None
        r = self.record
        if self.claims:
            claim = self.steps[0]
            assert claim.spare_of is not None
            upsert = upsert_sql(r.project_id, self.schema, r.revision, r.action, r.path, per_row_of="claimed")
            return (), self.namespace.sql(claim_statement(self.schema, claim.to_rev, claim.spare_of, upsert))
        if not self._guards_by_cte():
            return self.steps, self.namespace.sql(
                upsert_sql(r.project_id, self.schema, r.revision, r.action, r.path, earlier_ms=r.earlier_ms)
            )
        assert self.expected is not None
        last = self.steps[-1]
        moved = last.version_move
        assert moved is not None
        before, move = moved
        # the row the batch read saw, rewritten (none: the guard fails, and the careful path writes it)
        update = self.namespace.sql(
            update_sql(r.project_id, r.revision, r.action, r.path, per_row_of="moved", earlier_ms=r.earlier_ms)
        )
        guard = self.namespace.sql(
            expect_version_sql("EXISTS (SELECT 1 FROM recorded)", self.schema, self.expected.version)
        )
        record = f"WITH moved AS ({move} RETURNING 1), recorded AS ({update}) SELECT {guard}"
        return (*self.steps[:-1], Step(last.kind, last.from_rev, last.to_rev, before)), record

    # -------------------------------------------------------------- parts
    def parts(self) -> list[SchemaPlan | Step]:
        """The migration cut around its steps that can't run in a transaction: transactions, each ending
        with the registry row of the revision it reaches, and between them those steps with only their
        own statements (the version table is made in the transaction before, the version row moved in
        the one after, once the step succeeded). The first transaction creates the schema, the last one
        makes the grants; a first transaction with nothing to do is left out."""
        if self.in_one_transaction:
            return [self]
        parts: list[SchemaPlan | Step] = []
        pending: list[Step] = []
        for step in self.steps:
            if step.transactional:
                pending.append(step)
                continue
            made, own, moved = split_version_statements(step.statements)
            if made:
                pending.append(Step(StepKind.COMPILED, step.from_rev, step.from_rev, made))
            if pending or parts or self.create_schema:
                parts.append(self._part(pending, step.from_rev, first=not parts))
            parts.append(replace(step, statements=own))
            pending = [Step(StepKind.COMPILED, step.from_rev, step.to_rev, moved)] if moved else []
        parts.append(self._part(pending, None, first=False, last=True))
        return parts

    def _part(self, steps: list[Step], reached: str | None, *, first: bool, last: bool = False) -> SchemaPlan:
        record = self.record if self.record is None or last else replace(self.record, revision=reached)
        return replace(
            self,
            steps=tuple(steps),
            create_schema=self.create_schema and first,
            grants=self.grants if last else (),
            record=record,
            expected=None,
        )

    def recording_earlier(self, earlier_ms: float) -> SchemaPlan:
        """This plan with its registry row also recording ``earlier_ms``, the migration's time before it (the
        last part of a migration in parts records the whole)."""
        return self if self.record is None else replace(self, record=replace(self.record, earlier_ms=earlier_ms))

    def needing_a_session(self, chain: Chain) -> str:
        """What in this migration needs a session, for a refusal: the revisions that run outside a
        transaction, and the schema."""
        return f"revision {', '.join(chain.outside_transaction(self.steps))} ({self.schema})"

    def session_settings(self) -> list[str]:
        """The session's settings a step outside a transaction runs under: the search_path, the lock timeout."""
        settings = [search_path_sql(self.schema, self.flavor.extension_schema, local=False) + ";"]
        if self.lock_timeout_ms is not None:
            settings.append(lock_timeout_statement(self.lock_timeout_ms, local=False) + ";")
        return settings

    # -------------------------------------------------------------- --sql
    def render(self, chain: Chain, header: str | None = None) -> str:
        """The plan as a script a DBA can read, or run with psql: exactly what ``send.send_batch`` sends
        (``batch``); an online step is shown rendered offline, in comments' company, for review. With a
        step that can't run in a transaction, the parts ``send.run_in_parts`` sends, under the session's
        lock."""
        lines = [f"-- {header}"] if header else []
        if self.in_one_transaction:
            lines += self._render_transaction(chain)
        else:
            if self.lock:
                lines += [
                    "-- the schema's lock, held by this session until its release at the end:",
                    lock_statement(self.schema, session=True) + ";",
                ]
            for part in self.parts():
                lines += (
                    self._render_outside(chain, part) if isinstance(part, Step) else part._render_transaction(chain)
                )
            if self.lock:
                lines.append(unlock_statement(self.schema) + ";")
        return "\n".join(lines) + "\n"

    def _render_transaction(self, chain: Chain) -> list[str]:
        lines = [*self._begin(), *self.prelude()]
        for unit in self.units():
            lines += render_online(chain, unit, "runs online through Alembic") if isinstance(unit, Step) else [unit]
        return [*lines, COMMIT]

    def _render_outside(self, chain: Chain, step: Step) -> list[str]:
        lines = [
            f"-- {span(step)} can't run in a transaction: each statement runs on its own, outside any "
            "transaction (an invalid index a failed earlier run of it left, named in it, is dropped first)",
            *self.session_settings(),
        ]
        if step.online:
            lines += render_online(chain, step, "runs online through Alembic, in autocommit")
        else:
            lines += step.statements
        lines.append("RESET search_path;")
        if self.lock_timeout_ms is not None:
            lines.append("RESET lock_timeout;")
        return lines


def span(step: Step) -> str:
    return f"{step.from_rev or 'base'} -> {step.to_rev or 'base'}"


def render_online(chain: Chain, step: Step, how: str) -> list[str]:
    """An online step in a script: its SQL rendered offline for review, or a comment if it can't be."""
    try:
        rendered = chain.compile_statements(step.from_rev, step.to_rev)
    except Exception:
        return [f"-- {span(step)} {how}; it cannot be rendered offline"]
    return [f"-- {span(step)} {how}; rendered offline for review:", *rendered]


def _dollar_tag(name: str, text: str) -> str:
    """A dollar-quote tag (``$name$``, else ``$name1$``, ...) that does not occur in ``text``."""
    n = 0
    while (tag := f"${name}{n or ''}$") in text:
        n += 1
    return tag
