"""`workspace-tool doctor`: what to change on the server before a big rollout, one finding per line.

Read-only: one READ ONLY transaction of catalog and settings reads (each check in a savepoint of its own,
so that one that can't run says so and the others still do); it creates, locks and writes nothing. Each
check is a function of its own that returns its findings (ok, warn or problem, and one line saying what
was found and what to change); ``diagnose`` runs them all in ``CHECKS`` order. A problem is something to
change before running (the CLI exits 1); a warning works today but is worth changing.

What a run will ask of the server is given by the caller (``Scope``): ``jobs`` connections, and
``schemas_per_transaction`` schemas in each transaction (one today for every command; a bulk operation
may take more), against which the lock table and the connection limit are measured.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from workspace_tool import flavor as flavors
from workspace_tool import registry, spares, transactions
from workspace_tool.chain import Chain
from workspace_tool.chain.loading import DIRECT_URL_OPTION
from workspace_tool.dberrors import first_line, translating
from workspace_tool.errors import ConfigurationError, WorkspaceError
from workspace_tool.flavor import pooler
from workspace_tool.jobs import connections_needed, default_jobs, pool_capacity
from workspace_tool.namespace import Namespace
from workspace_tool.registry.inventory import VERSION_BATCH, project_schemas, registered_elsewhere
from workspace_tool.schema.catalog import MIN_SERVER_VERSION
from workspace_tool.spares.store import SpareState
from workspace_tool.sql import quote_ident
from workspace_tool.urls import DIRECT_URL_ENV
from workspace_tool.words import Word


class Health(Word):
    """What a check of `workspace-tool doctor` found (workspace_tool.doctor)."""

    OK = "ok"
    WARN = "warn"  # works, but worth changing before a big rollout
    PROBLEM = "problem"  # change it first: the command exits 1


HNSW_SINCE = (0, 5, 0)  # pgvector's first version with HNSW indexes (the example chain has one)
# A run should leave this share of the lock table, and of max_connections, to the application.
HEADROOM = 0.5
CONNECTION_HEADROOM = 0.1
NAMED = 3  # schemas or projects named in a finding, then "and N more"


@dataclass(frozen=True)
class Finding:
    check: str
    status: Health
    finding: str  # one line: what was found, and what to change

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "status": str(self.status), "finding": self.finding}


@dataclass(frozen=True)
class DoctorReport:
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        """No problem (warnings allowed)."""
        return not self.problems

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.status == Health.PROBLEM]

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "findings": [f.as_dict() for f in self.findings]}


@dataclass(frozen=True)
class Scope:
    """What the run the operator is preparing asks of the server."""

    jobs: int  # parallel connections (--jobs)
    schemas_per_transaction: int = 1  # schemas one transaction migrates (1 for every command today)


# Detects a transaction pooler between the tool and the server: a description of it, or None. Filled by the
# PgBouncer work of issue 19; until then ``port_mismatch`` tells what can be known.
PoolerDetector = Callable[[Connection, Engine], str | None]


@dataclass
class Context:
    """What every check is given: the engine and chain, the scope, the server's settings (read once)."""

    engine: Engine
    chain: Chain
    scope: Scope
    settings: dict[str, str] = field(default_factory=dict)
    detect_pooler: PoolerDetector | None = None
    direct_url: bool = False  # a direct URL to the server is configured for session work (issue 19)

    def setting(self, name: str) -> int:
        return int(self.settings.get(name) or 0)


Check = Callable[[Connection, Context], list[Finding]]
_SETTINGS = text(
    "SELECT name, setting FROM pg_settings WHERE name IN ('server_version', 'server_version_num', "
    "'max_connections', 'superuser_reserved_connections', 'reserved_connections', "
    "'max_locks_per_transaction', 'max_prepared_transactions')"
)


def diagnose(
    engine: Engine,
    chain: Chain,
    *,
    jobs: int | None = None,
    schemas_per_transaction: int = 1,
    checks: Sequence[tuple[str, Check]] | None = None,
    detect_pooler: PoolerDetector | None = None,
    direct_url: bool = False,
) -> DoctorReport:
    """Run every check (or ``checks``) in one read-only transaction; a check that fails to run is reported
    as a warning with its error, the others still run. ``detect_pooler`` and ``direct_url``: the slot the
    PgBouncer work of issue 19 fills (see ``transaction_pooler``)."""
    if jobs is None:
        jobs = default_jobs()
    if jobs < 1 or schemas_per_transaction < 1:
        raise ConfigurationError("--jobs and --schemas-per-transaction must be at least 1")
    scope = Scope(jobs, schemas_per_transaction)
    context = Context(engine, chain, scope, detect_pooler=detect_pooler, direct_url=direct_url)
    findings: list[Finding] = []
    with translating(engine.url), transactions.connect(engine) as conn, conn.begin():
        conn.execute(text("SET TRANSACTION READ ONLY"))
        context.settings = {str(name): str(value) for name, value in conn.execute(_SETTINGS)}
        for name, check in CHECKS if checks is None else checks:
            savepoint = conn.begin_nested()
            try:
                findings += check(conn, context)
            except (DBAPIError, WorkspaceError) as exc:
                findings.append(Finding(name, Health.WARN, f"could not check: {first_line(exc)}"))
            finally:
                savepoint.rollback()
        conn.rollback()
    return DoctorReport(findings)


# ------------------------------------------------------------------------------------- the server
def server_version(conn: Connection, context: Context) -> list[Finding]:
    """The server's major version: `check`'s catalog fingerprints need PostgreSQL 14 (hash_record_extended,
    bit_xor); the suite runs on 18."""
    version, major = context.settings["server_version"], context.setting("server_version_num") // 10000
    if major < MIN_SERVER_VERSION:
        return [
            _problem(
                "server",
                f"PostgreSQL {version}: workspace-tool needs {MIN_SERVER_VERSION} or later (`check` compares "
                f"catalogs with hash_record_extended): upgrade the server to PostgreSQL {MIN_SERVER_VERSION}+",
            )
        ]
    return [_ok("server", f"PostgreSQL {version} (workspace-tool needs {MIN_SERVER_VERSION} or later)")]


_VECTOR = text(
    "SELECT a.default_version, e.extversion, n.nspname, EXISTS (SELECT 1 FROM pg_class c "
    "WHERE c.relnamespace = n.oid AND c.relkind IN ('r', 'p', 'v', 'm', 'f')) AS has_tables "
    "FROM (SELECT 1) one LEFT JOIN pg_available_extensions a ON a.name = 'vector' "
    "LEFT JOIN pg_extension e ON e.extname = 'vector' LEFT JOIN pg_namespace n ON n.oid = e.extnamespace"
)


def pgvector(conn: Connection, context: Context) -> list[Finding]:
    """The vector extension: available on the server, installed (by `init`) in a schema without tables,
    at a version with HNSW indexes."""
    available, installed, schema, has_tables = conn.execute(_VECTOR).one()
    if installed is None:
        if available is None:
            return [
                _problem(
                    "pgvector",
                    "the vector extension is not available on this server: install pgvector "
                    f"({_version_text(HNSW_SINCE)} or later) on the server, then run `workspace-tool init`",
                )
            ]
        return [
            _warn(
                "pgvector",
                f"pgvector {available} is available but not installed in this database: run `workspace-tool "
                "init` once, as a role that may create extensions",
            )
        ]
    try:
        flavors.check_extension_schema(str(schema), bool(has_tables))
    except ConfigurationError as exc:
        return [_problem("pgvector", str(exc))]
    if _version(str(installed)) < HNSW_SINCE:
        return [
            _warn(
                "pgvector",
                f"pgvector {installed} has no HNSW indexes (from {_version_text(HNSW_SINCE)} on): "
                f"ALTER EXTENSION vector UPDATE (the server offers {available})",
            )
        ]
    return [_ok("pgvector", f"pgvector {installed} in schema {schema}")]


# ------------------------------------------------------------------------------------- the lock table
# Every object a DROP SCHEMA ... CASCADE would lock: what depends on the schema, recursively (relations with
# their TOAST tables and indexes, types, constraints, defaults, triggers...), through pg_depend's index.
# Measured on the example chain: 133 objects, and a DROP of that schema held 137 lock entries (the schema,
# its transaction's ids), while creating it held 70: the most any per-schema transaction takes.
_SCHEMA_OBJECTS = text(
    "WITH RECURSIVE deps AS ("
    "  SELECT d.classid, d.objid FROM pg_depend d"
    "  WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid = to_regnamespace(:schema)"
    "  UNION SELECT d.classid, d.objid FROM pg_depend d JOIN deps ON d.refclassid = deps.classid"
    "  AND d.refobjid = deps.objid"
    ") SELECT count(*) FROM deps"
)


def locks_per_schema(conn: Connection, schema: str) -> int:
    """The lock entries a transaction dropping or creating ``schema`` whole takes, at most: its objects
    (what depends on it, recursively) and the schema itself."""
    return int(conn.execute(_SCHEMA_OBJECTS, {"schema": quote_ident(schema)}).scalar_one()) + 1


_AT_HEAD = text(
    f"SELECT w.schema_name FROM {registry.REGISTRY_TABLE} w JOIN pg_namespace n ON n.nspname = w.schema_name "
    "WHERE w.revision = :head AND w.status = 'ready' LIMIT 1"
)


def _measured_schema(conn: Connection, chain: Chain) -> tuple[str, bool] | None:
    """A project schema to count objects in (and whether it is at head): one registered at head, else any."""
    ns = chain.namespace
    if registry.present(conn, ns):
        found = conn.execute(ns.sql(_AT_HEAD), {"head": chain.head}).scalar()
        if found is not None:
            return str(found), True
    schemas = sorted(project_schemas(conn, ns))
    return (schemas[-1], False) if schemas else None


def lock_budget(conn: Connection, context: Context) -> list[Finding]:
    """The server's lock table, ``max_locks_per_transaction * (max_connections + max_prepared_transactions)``
    entries shared by every transaction, against what a run takes at once: ``jobs`` transactions of
    ``schemas_per_transaction`` schemas each (a schema's objects, counted in a schema at head), or
    ``jobs`` batched version reads (a version table and its index per schema, VERSION_BATCH at a time),
    or the warm pool's drops (DROP_BATCH spares in one transaction). More than half the table is a
    warning (the application's transactions need it too); more than all of it, a problem."""
    per_backend = context.setting("max_locks_per_transaction")
    slots = context.setting("max_connections") + context.setting("max_prepared_transactions")
    capacity = per_backend * slots
    scope = context.scope
    reading = (2 * VERSION_BATCH * scope.jobs, f"{scope.jobs} batched version reads of {VERSION_BATCH} schemas")
    measured = _measured_schema(conn, context.chain)
    unknown = ""
    if measured is None:
        needed, how = reading
        unknown = "; no project schema yet to count a schema's objects in: run it again after the first ensure"
    else:
        schema, at_head = measured
        per_schema = locks_per_schema(conn, schema)
        where = schema if at_head else f"{schema}, not at head"
        candidates = [
            (
                per_schema * scope.schemas_per_transaction * scope.jobs,
                f"{per_schema} per schema ({where}) x {scope.schemas_per_transaction} per transaction x "
                f"{scope.jobs} jobs",
            ),
            reading,
        ]
        if spares.configured_size(context.chain):
            dropping = f"the warm pool dropping {spares.DROP_BATCH} spares of {per_schema} objects at once"
            candidates.append((per_schema * spares.DROP_BATCH, dropping))
        needed, how = max(candidates, key=lambda candidate: candidate[0])
    table = f"max_locks_per_transaction {per_backend} x (max_connections + max_prepared_transactions {slots})"
    wanted = math.ceil(needed / HEADROOM / max(1, slots))
    if needed > capacity:
        return [
            _problem(
                "lock budget",
                f"a run takes up to {needed} locks at once ({how}) but the lock table holds {capacity} ({table}): "
                f"set max_locks_per_transaction = {wanted} (a restart), or use fewer --jobs",
            )
        ]
    if needed > capacity * HEADROOM:
        return [
            _warn(
                "lock budget",
                f"a run takes up to {needed} of the lock table's {capacity} entries ({how}), leaving less than half "
                f"to the application: set max_locks_per_transaction = {wanted} (a restart){unknown}",
            )
        ]
    finding = f"a run takes up to {needed} of the lock table's {capacity} entries ({how}){unknown}"
    return [_warn("lock budget", finding) if unknown else _ok("lock budget", finding)]


# ------------------------------------------------------------------------------------- connections
_IN_USE = text(
    "SELECT count(*) FILTER (WHERE pid <> pg_backend_pid()), "
    "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user) "
    "FROM pg_stat_activity WHERE backend_type = 'client backend'"
)


def connections(conn: Connection, context: Context) -> list[Finding]:
    """``max_connections`` less the reserved slots (superuser_reserved_connections, reserved_connections:
    a role without them can't use these) and the connections in use, against what a run of ``jobs``
    holds at once (one per job and one planning: jobs.connections_needed), and what the engine's pool can
    hand out. A run that leaves less than a tenth of max_connections free is a warning."""
    in_use, superuser = conn.execute(_IN_USE).one()
    maximum = context.setting("max_connections")
    reserved = 0 if superuser else context.setting("superuser_reserved_connections")
    reserved += context.setting("reserved_connections")  # PostgreSQL 16+: for pg_use_reserved_connections
    free = maximum - reserved - int(in_use)
    jobs = context.scope.jobs
    needed = connections_needed(jobs)
    how = f"max_connections {maximum} - {reserved} reserved - {in_use} in use"
    capacity = pool_capacity(context.engine)
    if capacity is not None and capacity < needed:
        return [
            _problem(
                "connections",
                f"--jobs {jobs} needs {needed} connections at once but the engine's pool gives at most {capacity}: "
                f"use --jobs {max(1, capacity - 1)} or fewer, or a pool with pool_size + max_overflow >= {needed}",
            )
        ]
    if needed > free:
        fewer = f"use --jobs {free - 1} or fewer, or " if free >= 2 else ""
        return [
            _problem(
                "connections",
                f"--jobs {jobs} needs {needed} connections but the server has {max(0, free)} free ({how}): "
                f"{fewer}raise max_connections (a restart)",
            )
        ]
    left = free - needed
    if left < maximum * CONNECTION_HEADROOM:
        return [
            _warn(
                "connections",
                f"--jobs {jobs} needs {needed} of {free} free connections ({how}), leaving {left} to the "
                "application: use fewer --jobs, or raise max_connections",
            )
        ]
    return [_ok("connections", f"--jobs {jobs} needs {needed} of {free} free connections ({how})")]


# ------------------------------------------------------------------------------------- Citus
def citus_nodes(conn: Connection, context: Context) -> list[Finding]:
    """On a distributed database (Citus), every node active and answering: the flavor's own check
    (``Flavor.node_health``). A stopped worker stops every schema change on every worker."""
    health = flavors.read(conn).node_health(conn)
    if health is None:
        return [_ok("citus", "not a Citus database")]
    problems, summary = health
    return [_problem("citus", problem) for problem in problems] or [_ok("citus", summary)]


# ------------------------------------------------------------------------------------- the registry
_ROWS = text(f"SELECT project_id, schema_name FROM {registry.REGISTRY_TABLE}")


def registry_consistency(conn: Connection, context: Context) -> list[Finding]:
    """Project schemas with no registry row (orphans: fleet runs skip them) and registered projects with
    no schema (missing). Reads the registry and pg_namespace only: no schema's tables are touched."""
    ns = context.chain.namespace
    schemas = set(project_schemas(conn, ns))
    schemas -= set(registered_elsewhere(conn, ns, schemas))  # another chain's (two chains in one database)
    if not registry.present(conn, ns):
        if schemas:
            return [_orphans(ns, sorted(schemas))]
        return [_warn("registry", "no registry yet (nothing provisioned here): `workspace-tool init` creates it")]
    rows = {str(project): str(schema) for project, schema in conn.execute(ns.sql(_ROWS))}
    registered = set(rows.values())
    orphans = sorted(schemas - registered)
    missing = sorted(p for p, schema in rows.items() if schema not in schemas)
    findings = []
    if orphans:
        findings.append(_orphans(ns, orphans))
    if missing:
        first = missing[0]
        findings.append(
            _problem(
                "registry",
                f"{len(missing)} registered project(s) with no schema: {_names(missing)}: create them again "
                f"(`workspace-tool ensure {first}`) or remove their rows (`workspace-tool drop {first} --yes`)",
            )
        )
    return findings or [_ok("registry", f"{len(rows)} project(s) registered, each with its schema; no orphan")]


def _orphans(ns: Namespace, orphans: list[str]) -> Finding:
    first = orphans[0]
    return _problem(
        "registry",
        f"{len(orphans)} schema(s) with no registry row (orphans, skipped by fleet runs): {_names(orphans)}: "
        f"register them (`workspace-tool upgrade {ns.project_id_for(first)}`) or drop them "
        f"(DROP SCHEMA {quote_ident(first)} CASCADE)",
    )


# ------------------------------------------------------------------------------------- a pooler
def port_mismatch(conn: Connection, engine: Engine) -> str | None:
    """A pooler or proxy that reports the server's backend pid (so ``pooler.behind_pooler`` can't tell): the
    server listening on another port than the one the URL dials means something stands in between."""
    port = conn.execute(text("SELECT inet_server_port()")).scalar()
    dialed = engine.url.port or int(os.environ.get("PGPORT") or 5432)  # what libpq dials without a port
    if port is None or engine.url.host is None or str(engine.url.host).startswith("/"):
        return None  # a Unix socket: nothing to compare
    if int(port) != dialed:
        return f"the URL dials port {dialed}, the server listens on {port}: a pooler or proxy stands in between"
    return None


def detect_pooler(conn: Connection, engine: Engine) -> str | None:
    """What stands between the tool and the server, if anything: a pooler that answered the login itself
    (``pooler.behind_pooler``: the backend pid the login reported is not the one serving the connection;
    one round trip, cached per engine), else a port that differs (``port_mismatch``)."""
    if pooler.behind_pooler(conn):
        return "a connection pooler (PgBouncer or the like): the login reported another backend than the one serving"
    return port_mismatch(conn, engine)


def transaction_pooler(conn: Connection, context: Context) -> list[Finding]:
    """A transaction pooler (PgBouncer in transaction mode) between the tool and the server: what needs a
    session (a revision that runs outside a transaction) must go through a direct URL. Without one, a
    problem when this chain has such a revision (its migrations would be refused), else a warning (the next
    such revision will be)."""
    detect = context.detect_pooler or detect_pooler
    found = detect(conn, context.engine)
    if found is None:
        return [_ok("pooler", "no connection pooler detected")]
    if context.direct_url:
        return [_ok("pooler", f"{found}; what needs a session goes through the direct URL")]
    outside = [r for r in context.chain.revisions if context.chain.runs_outside_transaction(r)]
    advice = f"set --direct-url (or ${DIRECT_URL_ENV}, or {DIRECT_URL_OPTION} in alembic.ini) to a URL that bypasses it"
    if outside:
        return [
            _problem(
                "pooler",
                f"{found}, and no direct URL: revision {', '.join(outside)} runs outside a transaction, which "
                f"needs a session, so its migrations and pool fills would be refused: {advice}",
            )
        ]
    return [
        _warn(
            "pooler",
            f"{found}, and no direct URL: fine for this chain, but a revision that runs outside a transaction "
            f"(CREATE INDEX CONCURRENTLY) would be refused: {advice}",
        )
    ]


# ------------------------------------------------------------------------------------- the warm pool
def unused_spares(conn: Connection, context: Context) -> list[Finding]:
    """Spares at a head nobody runs: behind this chain's head (or another chain's at this head) whose
    release has not filled the pool within ``workspace_pool_grace``, never handed out: they only take disk
    and keep a fill from building new ones. Spares kept for another release that still fills the pool (a
    rolling deploy) and spares ahead of this chain (a newer release's) are fine; so are spares recorded
    whose schema is gone, which the next fill forgets (a warning)."""
    if not registry.present(conn, context.chain.namespace):
        return [_ok("warm pool", "no warm pool (nothing provisioned yet)")]
    listed = spares.read_spares(conn, context.chain.namespace)
    chain = context.chain
    grace = spares.release_grace(chain)
    states = [(s, s.state(chain, grace)) for s in listed]

    def having(state: SpareState) -> list[str]:
        return [s.schema for s, found in states if found == state]

    findings = []
    if stale := having(SpareState.STALE):
        findings.append(
            _warn(
                "warm pool",
                f"{len(stale)} spare schema(s) at a head nobody runs ({_names(stale)}: not this chain's head "
                f"{chain.head}, and their release has not filled the pool within {spares.GRACE_OPTION} = "
                f"{grace:g} s): never handed out; `workspace-tool pool fill` (or `upgrade --all`) replaces them",
            )
        )
    if gone := having(SpareState.MISSING):
        findings.append(
            _warn(
                "warm pool",
                f"{len(gone)} spare(s) recorded whose schema is gone ({_names(gone)}): `workspace-tool pool fill` "
                "forgets them",
            )
        )
    if findings:
        return findings
    others = len(having(SpareState.OTHER_RELEASE)) + len(having(SpareState.AHEAD))
    kept = f"; {others} kept for another release" if others else ""
    target = spares.configured_size(chain)
    return [
        _ok("warm pool", f"{len(having(SpareState.READY))} spare(s) ready at head {chain.head} (target {target}){kept}")
    ]


CHECKS: tuple[tuple[str, Check], ...] = (
    ("server", server_version),
    ("pgvector", pgvector),
    ("lock budget", lock_budget),
    ("connections", connections),
    ("citus", citus_nodes),
    ("registry", registry_consistency),
    ("pooler", transaction_pooler),
    ("warm pool", unused_spares),
)


# ------------------------------------------------------------------------------------- helpers
def _ok(check: str, finding: str) -> Finding:
    return Finding(check, Health.OK, finding)


def _warn(check: str, finding: str) -> Finding:
    return Finding(check, Health.WARN, finding)


def _problem(check: str, finding: str) -> Finding:
    return Finding(check, Health.PROBLEM, finding)


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:NAMED])
    return shown if len(names) <= NAMED else f"{shown} and {len(names) - NAMED} more"


def _version(value: str) -> tuple[int, ...]:
    parts = []
    for part in value.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _version_text(version: tuple[int, ...]) -> str:
    return ".".join(str(v) for v in version)
