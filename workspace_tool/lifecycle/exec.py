"""`exec -c SQL` / `exec -f FILE`: SQL run in each selected project's schema, each in a transaction of its
own under the project's lock (no migration interleaves with it) with the project's search_path (the
schema, then the vector extension's), through the fleet runner: selectors, jobs, canary, failure limits,
progress, retries of a lock timeout, and a result per project (the rows the last statement touched or
returned). A failure rolls that project's transaction back; the others are as the SQL left them."""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from workspace_tool import transactions
from workspace_tool.dberrors import INVALID_SCHEMA_NAME, sqlstate
from workspace_tool.errors import WorkspaceNotFound
from workspace_tool.flavor import Flavor, pooler
from workspace_tool.lifecycle import batch
from workspace_tool.lifecycle.errors import LifecycleRefused
from workspace_tool.schema.operation import Operation, Refusal, Work
from workspace_tool.schema.state import SchemaRecord
from workspace_tool.sql import search_path_sql


@dataclass(frozen=True)
class ExecTask:
    """The fleet runner's SchemaTask of `exec`: ``sql`` (one or more statements) in each schema."""

    sql: str
    reads_versions: bool = False  # the SQL runs whatever the schema's revision

    def refusal(self, record: SchemaRecord) -> Refusal | None:
        return None if record.exists else Refusal.MISSING

    def run(self, conn: Connection, work: Work, flavor: Flavor, lock_timeout_ms: int) -> str | None:
        """One round trip (batch.transaction): the lock, a guard that the schema is still there (gone
        otherwise), the search_path, the SQL; where the flavor takes no batch (Citus), four for SQL of one
        statement: BEGIN with the lock and the guard, the SETs, each statement of the SQL alone, COMMIT.
        Behind a pooler one more, the transaction ending with the session's reset (pooler.SESSION_RESET),
        so that a SET without LOCAL or a session lock in the SQL stays in its transaction. When the SQL
        fails, what outlives the rollback (a session lock, a prepared statement) is reset in a transaction of
        its own."""
        transactions.require(conn)
        statements = [
            *batch.locked(flavor, work.schema, lock_timeout_ms, [batch.schema_guard(work.schema)]),
            search_path_sql(work.schema, flavor.extension_schema),
        ]
        script = flavor.script_statements(self.sql)
        # what the SQL set for the session ends with its transaction (cached per engine: one probe per run)
        pooled = pooler.behind_pooler(conn)
        reset = pooler.SESSION_RESET if pooled else ()
        try:
            rows, _ = batch.transaction(conn, flavor, work.schema, statements, script=script, then=reset)
        except Exception as exc:
            if pooled and not conn.invalidated:  # a lost connection has no session left to reset
                with suppress(DBAPIError):  # the SQL's own error is the one to report
                    batch.transaction(conn, flavor, work.schema, pooler.SESSION_RESET)
            if sqlstate(exc) == INVALID_SCHEMA_NAME and not batch.still_there(conn, work.schema):
                raise WorkspaceNotFound(work.project_id, work.schema) from None  # dropped since the read: gone
            raise
        return None if rows < 0 else f"{rows} row{'s' if rows != 1 else ''}"


def exec_operation(sql: str) -> Operation:
    """The fleet Operation that runs ``sql`` in each selected project's schema."""
    if not sql.strip():
        raise LifecycleRefused("no SQL to run: pass -c SQL or -f FILE with some in it")
    return Operation("exec", upgrades=False, downgrades=False, creates=False, task=ExecTask(sql))
