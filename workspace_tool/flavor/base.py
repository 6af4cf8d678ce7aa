"""Plain PostgreSQL: the flavor every other kind of database (a subclass in this package) differs from.

A ``Flavor`` is made once per database, by the registry bootstrap's probe (one round trip it makes anyway),
and cached where the managers cache what they know of a database; read commands that don't bootstrap
make one with ``workspace_tool.flavor.read``. Whatever differs between kinds of database is asked of it,
never of a flag: how a schema's transaction is sent (and a user's script), the statements before a project schema or the
registry's schema is created, the lock-timeout statements, how an existing schema is guarded, whether the
warm pool is supported, where the registry lives, which node holds each schema, and whether work that
needs a session (a revision outside a transaction) must go to a direct connection (``pooler``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

from sqlalchemy import Connection

from workspace_tool.flavor import pooler
from workspace_tool.naming import SCHEMA_LIKE
from workspace_tool.sql import lock_timeout_statement, split_statements


@dataclass(frozen=True)
class Flavor:
    """Plain PostgreSQL, reached directly or through a pooler. ``extension_schema``: the schema holding the
    vector extension (on every project schema's search_path). ``direct``: a direct connection (bypassing the
    pooler) is configured for work that needs a session, which then raises ``pooler.UseDirect`` for the
    caller to run it there (``with_direct``)."""

    extension_schema: str
    direct: bool = False

    # The name the probe's SQL reports (``workspace_tool.flavor.KIND_SQL``), and the condition it tests
    # (None: the default, when no other kind's condition holds).
    name: ClassVar[str] = "postgresql"
    detected_by: ClassVar[str | None] = None
    # Whether several statements may share one round trip (a simple-query batch: the fleet's fast lane
    # sends a whole transaction so, the careful path takes the lock and reads the state so); if not, every
    # statement is sent on its own.
    batches: ClassVar[bool] = True
    # How a transaction that moves an existing schema's version is guarded (schema/plan.py): False, by the
    # statement that moves the version and writes the registry row together (a CTE); True, by a separate
    # check sent first, under the schema's lock.
    separate_version_check: ClassVar[bool] = False
    # Why the warm pool can't serve this database, in one line; None when it can.
    spares_refused: ClassVar[str | None] = None

    def round_trips(self, statements: Sequence[str]) -> list[list[str]]:
        """How statements sent in a row, in one transaction, share round trips: one batch where the flavor
        ``batches`` (plain PostgreSQL), else each alone unless the flavor says otherwise."""
        return [list(statements)] if self.batches else [[s] for s in statements]

    def script_statements(self, script: str) -> list[str]:
        """A script of the user's (`exec`'s SQL, one or more statements) as the statements to send in a row:
        whole, one round trip, where the flavor ``batches``; else each statement alone, as psql sends them
        (``sql.split_statements``)."""
        return [script] if self.batches else split_statements(script)

    def lock_timeout_statements(self, timeout_ms: int) -> list[str]:
        """What bounds every lock wait of the transaction (SQLSTATE 55P03 when exceeded)."""
        return [lock_timeout_statement(timeout_ms)]

    def locked(self, lock: str | None, timeout_ms: int | None, checks: Sequence[str] = ()) -> list[str]:
        """The statements that start a transaction under a schema's lock, in the order they are sent: what
        bounds the transaction's lock waits (``timeout_ms``; None: unbounded), the lock itself (``lock``, a
        statement; None: no lock), then ``checks`` made under it (queries of the coordinator's own catalog or
        tables: no worker of a distributed database is reached before the lock timeout's statements).
        Plain PostgreSQL: the lock timeout's statements first (``lock_timeout_statements``)."""
        bound = [] if timeout_ms is None else self.lock_timeout_statements(timeout_ms)
        return [*bound, *([] if lock is None else [lock]), *checks]

    def before_project_schema(self) -> tuple[str, ...]:
        """The statements, in the transaction, before a project schema (or a scratch one, or a spare) is
        created."""
        return ()

    def before_registry_schema(self) -> tuple[str, ...]:
        """The statements, in the bootstrap's transaction, before the registry's schema and the extension's
        are created (or created again: ``IF NOT EXISTS``)."""
        return ()

    def check_registry_placement(self, conn: Connection, schemas: Sequence[str]) -> None:
        """Raise ConfigurationError, saying how to undo it, when the registry's or the extension's schema
        (``schemas``) is not where the registry must live. Plain PostgreSQL: anywhere; no query."""

    @staticmethod
    def unreachable_node(message: str) -> str | None:
        """The node an error's message says could not be reached, named for a message ('... worker
        host:port'), or None (registered with dberrors.NODE_ERROR_READERS by workspace_tool.flavor)."""
        return None

    def read_nodes(self, conn: Connection, schema_like: str = SCHEMA_LIKE) -> dict[str, str]:
        """Project schema -> the node ('host:port') holding it, for `status`; {} (and no query) on a
        database of one node."""
        return {}

    def node_health(self, conn: Connection) -> tuple[list[str], str] | None:
        """For `doctor`: what is wrong with the database's other nodes, one line each, and a summary when
        nothing is; None (and no query) on a database of one node."""
        return None

    def require_session(self, conn: Connection, what: str) -> None:
        """Before work that needs a session (``what`` runs outside a transaction) starts on ``conn``:
        pooler.UseDirect when a direct connection is configured, SessionRequired through a pooler, else
        nothing (it runs on ``conn``)."""
        pooler.require_session(conn, what, direct=self.direct)

    def with_direct(self, direct: bool) -> Flavor:
        """This flavor with a direct connection configured (``direct``) or not: on that direct connection
        itself, work that needs a session runs where it is (``with_direct(False)``)."""
        return self if direct == self.direct else replace(self, direct=direct)
