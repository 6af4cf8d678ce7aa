"""Citus with schema-based sharding: every project schema is a tenant schema, living whole on one worker,
and every command of workspace-tool goes to the coordinator.

How it differs from plain PostgreSQL (flavor/base.py), each measured on a coordinator and two workers
(tests/test_citus*.py, benchmarks/citus_bench.py):

* Some statements' whole query string is forwarded to the workers: a DDL's (CREATE INDEX in a batch fails:
  "cannot insert multiple commands into a prepared statement"), and a propagated SET LOCAL's, which every
  worker's transaction replays (a query on a distributed table in that text fails there: "cannot execute a
  distributed query from a query on a shard"). So a schema's transaction is no one batch (no one-round-trip
  fast lane either); it is sent in runs (``round_trips``): the SET LOCALs in a row share one round trip (the
  text the workers replay then holds only them), the queries in a row (SELECT, INSERT, UPDATE, DELETE, WITH:
  planned per shard, their text never forwarded) share one, and every other statement goes alone, but for a
  COMMIT, which ends the queries' round trip before it (measured: a fleet's transaction then takes as many
  round trips as the raw floor's). BEGIN never shares a SET's round trip: in a SET's text, every worker would
  replay it (a WARNING there, "there is already a transaction in progress", sent back to the client too); it
  starts the queries' round trip after it instead.
* A transaction under a schema's lock takes the lock first (``locked``), in BEGIN's round trip, its wait
  bounded by ``set_config`` (a query: never passed on), with the checks made under it (the coordinator's own
  catalog and tables: no worker reached yet); the propagated SETs (lock timeout, search_path) follow in one
  round trip, still before any worker is reached: they reach each worker with its transaction's start (a
  SET sent once a worker's transaction has started costs a round trip to that worker, per SET).
* A script of the user's (`exec`'s SQL) is sent statement by statement too, split as psql splits it
  (``sql.split_statements``): in one string, a second DDL fails ("cannot insert multiple commands into a
  prepared statement").
* A project schema is created after TENANT (a tenant schema, whatever the role's
  ``citus.enable_schema_based_sharding``); the registry's schema and the extension's after NOT_TENANT (they
  stay ordinary schemas of the coordinator, whose tables are the coordinator's: the registry row is written
  in the same transaction as each schema's change), and a registry made a tenant schema by an earlier
  workspace-tool is refused, saying how to undo it.
* The lock timeout is propagated to the workers (PROPAGATE_SET, then the SET LOCAL itself: Citus passes SET
  LOCAL commands on only after it, and only as SET statements, not set_config).
* An existing schema's guard is a separate version check: a CTE that modifies a distributed table runs
  through intermediate results (measured: a third more time per schema). It is sent under the schema's
  lock, just before the migration's first version move, in that move's round trip (schema/plan.py): a
  schema at another revision fails it, and the whole transaction, its DDL included, rolls back.
* A fleet run reads no version it can take from the registry: every version read is a distributed query
  (measured: a third of a 608-schema `upgrade --all`). A schema whose registry row says it is ready at a
  revision the run migrates from is taken at that revision; the version check above confirms it under the
  schema's lock, and a wrong row sends the schema to the careful path. A row naming the target is read as
  before: a stale one must not make the run skip a schema that is behind.
* The warm pool is refused: renaming a distributed tenant schema inside the claim is not something the pool
  was built or tested for; ensure builds schemas there, statement by statement.
* `status` shows the worker holding each schema (from Citus's catalog), and an error that says a worker
  can't be reached is told apart (a lost connection, retried; then "Citus worker host:port is unreachable").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

from sqlalchemy import Connection, text

from workspace_tool.errors import ConfigurationError
from workspace_tool.flavor.base import Flavor
from workspace_tool.naming import SCHEMA_LIKE
from workspace_tool.sql import lock_timeout_query, lock_timeout_statement, sql_literal

# Each for the current transaction only.
TENANT = "SET LOCAL citus.enable_schema_based_sharding TO on"
NOT_TENANT = "SET LOCAL citus.enable_schema_based_sharding TO off"
PROPAGATE_SET = "SET LOCAL citus.propagate_set_commands TO 'local'"

# The coordinator's error when a worker can't be reached: a new connection to it (08006), or one it had cached
# and finds broken (XX000). Either way the coordinator's own session is fine.
_UNREACHABLE_NODE = re.compile(
    r"connection to the remote node (?:[^@\s]+@)?(\S+:\d+) failed|failure on connection marked as essential: (\S+:\d+)"
)
# The worker holding each tenant project schema (where its tables' shards are placed), from Citus's catalog
# tables (in pg_catalog: found whatever the search_path; public.citus_schemas has no node, and citus_shards
# asks every node for shard sizes). An ordinary schema, or a tenant one with no table yet, has no node.
_NODES = text(
    "SELECT n.nspname, d.nodename, d.nodeport FROM pg_dist_schema s JOIN pg_namespace n ON n.oid = s.schemaid "
    "JOIN LATERAL (SELECT pl.groupid FROM pg_dist_partition p "
    "              JOIN pg_dist_shard sh ON sh.logicalrelid = p.logicalrelid "
    "              JOIN pg_dist_placement pl ON pl.shardid = sh.shardid "
    "              WHERE p.colocationid = s.colocationid LIMIT 1) g ON true "
    "JOIN pg_dist_node d ON d.groupid = g.groupid AND d.noderole = 'primary' "
    "WHERE n.nspname LIKE :prefix"
)


# Every node the coordinator knows; then a cheap statement on every active primary worker, which is what
# every schema change needs (Citus sends DDL to every node holding metadata).
_ALL_NODES = text("SELECT nodename, nodeport, isactive, noderole, groupid FROM pg_dist_node ORDER BY groupid, nodeid")
_ANSWERS = text("SELECT nodename, nodeport, success, result FROM run_command_on_workers('SELECT 1')")


# The first two words of a statement, past comments: whether it may share a round trip with its like (see
# the module's docstring).
_FIRST_WORDS = re.compile(r"\s*(?:(?:--[^\n]*\n|/\*.*?\*/)\s*)*([A-Za-z]+)(?:\s+([A-Za-z]+))?", re.DOTALL)
_QUERIES = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "WITH"})


# Which kind of statement may join the round trip of the one before it: its like (SETs, queries), COMMIT
# after queries, queries after BEGIN.
_JOINS = frozenset({("set", "set"), ("query", "query"), ("commit", "query"), ("query", "begin")})


def _kind(statement: str) -> str | None:
    """'set' (a SET LOCAL) or 'query' for a statement that may share a round trip with others of its kind,
    'commit' for one that may end the queries' round trip, 'begin' for one that may start it; None for one
    that goes alone (a session's SET too: replayed on a worker with a SET LOCAL's text, it would stay on the
    worker's cached connection)."""
    match = _FIRST_WORDS.match(statement)
    first, second = (match[1].upper(), (match[2] or "").upper()) if match else ("", "")
    if first == "SET":
        return "set" if second == "LOCAL" else None
    if first in ("COMMIT", "BEGIN"):
        return first.lower()
    return "query" if first in _QUERIES else None


class Citus(Flavor):
    """A Citus coordinator (see the module's docstring)."""

    name: ClassVar[str] = "citus"
    # Asked on the coordinator, where every command of workspace-tool goes.
    detected_by: ClassVar[str | None] = "EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')"
    batches: ClassVar[bool] = False
    separate_version_check: ClassVar[bool] = True
    spares_refused: ClassVar[str | None] = "the database runs Citus, where spares are not supported"

    def round_trips(self, statements: Sequence[str]) -> list[list[str]]:
        trips: list[list[str]] = []
        previous: str | None = None
        for statement in statements:
            kind = _kind(statement)
            if (kind, previous) in _JOINS:
                trips[-1].append(statement)
            else:
                trips.append([statement])
            previous = kind
        return trips

    def lock_timeout_statements(self, timeout_ms: int) -> list[str]:
        return [PROPAGATE_SET, lock_timeout_statement(timeout_ms)]

    def locked(self, lock: str | None, timeout_ms: int | None, checks: Sequence[str] = ()) -> list[str]:
        """The lock first, its wait bounded by ``lock_timeout_query``, and the checks under it (in BEGIN's
        round trip: ``round_trips``), then the lock timeout's SETs (see the module's docstring)."""
        if lock is None:
            return super().locked(lock, timeout_ms, checks)
        bound = [] if timeout_ms is None else self.lock_timeout_statements(timeout_ms)
        first = [] if timeout_ms is None else [lock_timeout_query(timeout_ms)]
        return [*first, lock, *checks, *bound]

    def before_project_schema(self) -> tuple[str, ...]:
        return (TENANT,)

    def before_registry_schema(self) -> tuple[str, ...]:
        # Every time, not only the first: with sharding on, CREATE SCHEMA IF NOT EXISTS turns an existing
        # ordinary schema into a tenant schema (and the registry's next tables with it).
        return (NOT_TENANT,)

    def check_registry_placement(self, conn: Connection, schemas: Sequence[str]) -> None:
        """Raise if the registry's or the extension's schema is a tenant schema (what an earlier
        workspace-tool made of them when the role's schema-based sharding was on)."""
        listed = ", ".join(sql_literal(n) for n in schemas)
        found = (
            conn.execute(
                text(
                    "SELECT n.nspname FROM pg_dist_schema s JOIN pg_namespace n ON n.oid = s.schemaid "
                    f"WHERE n.nspname IN ({listed}) ORDER BY 1"
                )
            )
            .scalars()
            .all()
        )
        if found:
            undo = "; ".join(f"SELECT citus_schema_undistribute({sql_literal(n)})" for n in found)
            raise ConfigurationError(
                f"{' and '.join(found)} {'is a' if len(found) == 1 else 'are'} Citus tenant schema"
                f"{'' if len(found) == 1 else 's'}, placed on a worker, but must stay on the coordinator: "
                f"run {undo} on the coordinator, then rerun"
            )

    @staticmethod
    def unreachable_node(message: str) -> str | None:
        match = _UNREACHABLE_NODE.search(message)
        return None if match is None else f"Citus worker {match[1] or match[2]}"

    def node_health(self, conn: Connection) -> tuple[list[str], str] | None:
        """Every node in pg_dist_node active, and every active worker answering the coordinator
        (``run_command_on_workers('SELECT 1')``)."""
        nodes = conn.execute(_ALL_NODES).all()
        problems = [
            f"node {n.nodename}:{n.nodeport} is inactive: every schema change needs every node; bring it back, "
            f"then SELECT citus_activate_node('{n.nodename}', {n.nodeport})"
            for n in nodes
            if not n.isactive
        ]
        for name, port, success, result in conn.execute(_ANSWERS):
            if not success:
                lines = [line.strip() for line in str(result).splitlines() if line.strip()]
                problems.append(
                    f"worker {name}:{port} does not answer the coordinator ({lines[0] if lines else 'no answer'}): "
                    "start it, or let the coordinator reach it; until then no project schema can be changed"
                )
        workers = sum(1 for n in nodes if n.groupid != 0)
        return problems, f"{len(nodes)} node(s), {workers} worker(s): all active and answering"

    def read_nodes(self, conn: Connection, schema_like: str = SCHEMA_LIKE) -> dict[str, str]:
        rows = conn.execute(_NODES, {"prefix": schema_like}).all()
        return {str(r[0]): f"{r[1]}:{r[2]}" for r in rows}
