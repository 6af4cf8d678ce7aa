"""One schema of a fleet run: the fast lane first, the careful path otherwise, retries with backoff for a
lock timeout or a lost connection, and the registry row marked failed when it fails for good. A schema
dropped since the run read it (the application drops projects meanwhile) is ``gone``: nothing is done to
it, nor to its registry row (only ever updated here, never inserted, when a schema fails)."""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from dataclasses import dataclass, replace

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from workspace_tool import recycling, registry, transactions
from workspace_tool.chain import Chain
from workspace_tool.dberrors import LOCK_NOT_AVAILABLE, describe, is_connection_error, sqlstate, unreachable_node
from workspace_tool.errors import LockTimeout, NonTransactionalFailed, WorkspaceNotFound
from workspace_tool.flavor import Flavor, pooler
from workspace_tool.fleet.outcome import Outcome, SkipReason
from workspace_tool.fleet.report import SchemaResult, ms_since
from workspace_tool.schema.migrate import EnsureResult, Migration, Sending, migrate, migrate_expected
from workspace_tool.schema.operation import Action, Operation, SchemaTask, Work, recorded
from workspace_tool.schema.plan import Expected
from workspace_tool.sql import lock_timeout_statement
from workspace_tool.urls import url_secrets

MAX_BACKOFF_S = 5.0
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """What every schema of a run is given."""

    operation: Operation
    target: str | None
    lock_timeout_ms: int
    retries: int
    flavor: Flavor  # the database's, from the run's bootstrap
    adopt: bool = False
    pool: bool = False  # claim a missing schema from the warm pool first (provision)
    recycle_after: int = recycling.DEFAULT_RECYCLE_AFTER  # schemas per backend, then a new one (0: never)
    async_commit: bool = False  # the fast lane's commits don't wait for their flush (RunSpec.commit)


class Migrator:
    """Migrates one schema at a time on one held connection, replaced by a new one (a new backend) every
    ``options.recycle_after`` schemas (workspace_tool.recycling); a schema whose range needs a session (a
    revision outside a transaction) on a held connection to ``direct`` when given (see workspace_tool.flavor.pooler).

    Every lock wait is bounded by ``SET LOCAL lock_timeout`` in each transaction, never by a session
    setting: through a transaction pooler that would stay on a server connection for its next client."""

    def __init__(
        self,
        engine: Engine,
        chain: Chain,
        options: RunOptions,
        cancel: threading.Event | None = None,
        direct: Engine | None = None,
    ) -> None:
        self.engine = engine
        self.chain = chain
        self.options = options
        self.how = Sending(
            chain,
            options.flavor.with_direct(direct is not None),
            lock_timeout_ms=options.lock_timeout_ms,
            pool=options.pool,
            async_commit=options.async_commit,
        )
        self.cancel = cancel or threading.Event()
        self.direct = direct
        if direct is not None:
            pooler.trust(direct)
        self._conn: Connection | None = None
        self._direct_conn: Connection | None = None

    def connection(self) -> Connection:
        """The held connection."""
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._close(self._conn)
            self._conn = transactions.connect(self.engine)
        return self._conn

    def direct_connection(self) -> Connection:
        """The held connection to the direct engine, for what needs a session."""
        assert self.direct is not None
        if self._direct_conn is None or self._direct_conn.closed or self._direct_conn.invalidated:
            self._close(self._direct_conn)
            self._direct_conn = transactions.connect(self.direct)
        return self._direct_conn

    def close(self) -> None:
        self._close(self._conn)
        self._close(self._direct_conn)
        self._conn = self._direct_conn = None

    @staticmethod
    def _close(conn: Connection | None) -> None:
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def run(self, work: Work) -> SchemaResult:
        """Migrate one schema. A lock timeout, or a connection lost (killed backend, server restart: its
        transaction rolled back), is retried with backoff up to ``retries`` times before it fails. After
        ``recycle_after`` schemas on one connection, the next one gets a new connection."""
        result = self._run(work)
        if self._conn is not None and recycling.one_more(self._conn, self.options.recycle_after):
            self.close()
        return result

    def _run(self, work: Work) -> SchemaResult:
        started = time.perf_counter()
        options = self.options
        what = Migration(work.project_id, work.schema, options.target, options.operation, adopt=options.adopt)
        attempts = 0
        lost = False  # an earlier attempt lost its connection: its commit may have gone through
        while True:
            attempts += 1
            try:
                if options.operation.task is not None:
                    return self._task(options.operation.task, work, started, attempts)
                done = self._fast_lane(work, what) if attempts == 1 else None
                done = done or self._careful(what)
            except Exception as exc:
                if isinstance(exc, WorkspaceNotFound) and work.exists:
                    return self._gone(work, started, attempts)
                connection = isinstance(exc, (DBAPIError, OSError)) and is_connection_error(exc)
                connection = connection or (isinstance(exc, NonTransactionalFailed) and exc.connection_lost)
                if connection:
                    self.close()  # a fresh connection for the retry or the next schema
                    lost = True
                lock_timeout = isinstance(exc, LockTimeout) or sqlstate(exc) == LOCK_NOT_AVAILABLE
                if (lock_timeout or connection) and attempts <= options.retries and not self.cancel.is_set():
                    delay = min(MAX_BACKOFF_S, 0.1 * 2 ** (attempts - 1)) * random.uniform(0.5, 1.0)
                    log.info(
                        "%s: %s on attempt %d of %d; retrying in %.2f s",
                        work.schema,
                        f"lock timeout ({options.lock_timeout_ms} ms)" if lock_timeout else "connection lost",
                        attempts,
                        options.retries + 1,
                        delay,
                    )
                    if not self.cancel.wait(delay):
                        continue
                secrets = url_secrets(self.engine.url) + url_secrets(self.direct.url if self.direct else None)
                message = describe(exc, work.schema, secrets)
                if lock_timeout:
                    message = f"lock timeout ({options.lock_timeout_ms} ms, {attempts} attempts): {message}"
                elif node := unreachable_node(message):
                    message = f"{node} unreachable ({attempts} attempts): {message}"
                elif connection:
                    message = f"database connection lost ({attempts} attempts): {message}"
                log.info("%s: failed after %.1f ms: %s", work.schema, ms_since(started), message)
                if options.operation.migrates:  # a task's failure is not the schema's migration's
                    self._mark_failed(work, message)
                return SchemaResult(
                    work.project_id,
                    work.schema,
                    work.from_revision,
                    options.target,
                    Outcome.FAILED,
                    ms=ms_since(started),
                    error=message,
                    attempts=attempts,
                    connection_lost=connection,
                )
            # Found at the target with its registry row, though the batch read saw it elsewhere: another run
            # moved it (unless an attempt of ours lost its connection at commit, which may have gone through).
            # A row found out of line with the schema (moved out of band) was put in line: this run's work.
            moved = done.action == Action.CURRENT and done.unchanged and work.from_revision != options.target
            moved = moved and not lost
            return SchemaResult(
                work.project_id,
                work.schema,
                done.from_revision,
                done.to_revision,
                Outcome.SKIPPED if moved else Outcome.OK,
                ms=ms_since(started),
                reason=SkipReason.MOVED_BY_ANOTHER_RUN if moved else None,
                path=done.path,
                attempts=attempts,
            )

    def _task(self, task: SchemaTask, work: Work, started: float, attempts: int) -> SchemaResult:
        """An operation that does not migrate: its task, on the held connection."""
        note = task.run(self.connection(), work, self.options.flavor, self.options.lock_timeout_ms)
        return SchemaResult(
            work.project_id,
            work.schema,
            work.from_revision,
            work.from_revision,
            Outcome.OK,
            ms=ms_since(started),
            note=note,
            attempts=attempts,
        )

    def _careful(self, what: Migration) -> EnsureResult:
        """The careful path on the held connection; a range that needs a session, on the direct one."""
        try:
            return migrate(self.connection(), self.how, what)
        except pooler.UseDirect:
            return migrate(self.direct_connection(), replace(self.how, flavor=self.how.flavor.with_direct(False)), what)

    def _gone(self, work: Work, started: float, attempts: int) -> SchemaResult:
        """The batch read saw the schema; under its lock it is not there: dropped since (by the application,
        with its registry row, which nothing here writes back). Nothing to do, and not a failure."""
        log.info("%s: dropped since the run read it; nothing to do", work.schema)
        return SchemaResult(
            work.project_id,
            work.schema,
            work.from_revision,
            self.options.target,
            Outcome.GONE,
            ms=ms_since(started),
            reason=SkipReason.DROPPED_SINCE_READ,
            attempts=attempts,
        )

    def _fast_lane(self, work: Work, what: Migration) -> EnsureResult | None:
        """One batch and a commit, when the plan compiles and the schema is as read; else None."""
        if not self.options.operation.fast_lane(work):
            return None
        return migrate_expected(self.connection(), self.how, what, Expected(work.exists, work.from_revision))

    def _mark_failed(self, work: Work, message: str) -> None:
        """Record the failure on an existing registry row, after the rollback, in its own transaction;
        last_action names what was tried, in the words a success would have recorded."""
        tried = self.options.operation.action(self.chain, work.from_revision, self.options.target, exists=work.exists)
        params = {"project_id": work.project_id, "action": recorded(tried), "error": message}
        with contextlib.suppress(Exception):
            conn = self.connection()
            with conn.begin():
                conn.exec_driver_sql(lock_timeout_statement(self.options.lock_timeout_ms))
                conn.execute(self.chain.namespace.sql(registry.MARK_FAILED), params)
