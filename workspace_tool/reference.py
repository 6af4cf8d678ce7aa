"""The reference `check` compares schemas with: the catalog the chain builds at head, and its fingerprint.

It is built by running the chain from base to head into a scratch schema inside a transaction that is
rolled back (nothing is left behind), or read from ``project_registry.reference_catalog``, where
`workspace-tool init` (always) and fleet runs (``fleet.upgrade``/``downgrade``/``provision``, when it is
missing) store what they built. A stored reference is used only when its key matches everything the built
catalog depends on: the chain (its fingerprint covers every revision file and env.py) and head, the
server's major version, the vector extension (OID, version, schema), the Alembic and SQLAlchemy versions
and the catalog format. So `check` needs no CREATE privilege once a migrating run stored the reference of
the chain in use; the ensure path never writes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from workspace_tool import flavor as flavors
from workspace_tool import transactions
from workspace_tool.chain import Chain
from workspace_tool.chain.alembic_run import alembic_version
from workspace_tool.database import can_create
from workspace_tool.dberrors import first_line, role_phrase
from workspace_tool.errors import HeadModelFailed, MigrationFailed, PermissionDenied, WorkspaceError
from workspace_tool.namespace import DEFAULT, Namespace
from workspace_tool.registry import REGISTRY_SCHEMA
from workspace_tool.schema.catalog import PIN_SEARCH_PATH, fingerprints, snapshot
from workspace_tool.schema.migrate import scratch_schema

SCRATCH_PREFIX = "workspace_drift_"  # not a project schema name: never listed, and rolled back anyway
CATALOG_FORMAT = 2  # bump when catalog.snapshot or catalog.fingerprints change what they read (2: privileges)
TABLE = f"{REGISTRY_SCHEMA}.reference_catalog"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reference:
    head: str
    key: str
    catalog: dict[str, Any]  # catalog.snapshot of a schema built by the chain, its name stripped
    fingerprint: str  # catalog.fingerprints of the same schema
    source: str  # 'stored' (read from the registry) or 'built' (in a scratch schema, rolled back)


_READ = text(f"SELECT head, catalog, fingerprint FROM {TABLE} WHERE reference_key = :key")
_STORED = text(f"SELECT EXISTS (SELECT 1 FROM {TABLE} WHERE reference_key = :key)")
_HAS_TABLE = text(f"SELECT to_regclass('{TABLE}') IS NOT NULL")
_UPSERT = text(
    f"INSERT INTO {TABLE} (reference_key, head, key_parts, catalog, fingerprint) "
    "VALUES (:key, :head, CAST(:parts AS jsonb), CAST(:catalog AS jsonb), :fingerprint) "
    "ON CONFLICT (reference_key) DO UPDATE SET head = EXCLUDED.head, key_parts = EXCLUDED.key_parts, "
    "catalog = EXCLUDED.catalog, fingerprint = EXCLUDED.fingerprint, created_at = now()"
)


# A role's default privileges that are not tied to a schema (what a new schema's objects get), relative to
# the role (it as <owner>): roles with the same ones, whatever their names, build the same privileges.
_DEFAULT_PRIVILEGES = text(
    "SELECT coalesce(string_agg(x, ' ' ORDER BY x), '') FROM ("
    "SELECT d.defaclobjtype::text || ':' || CASE WHEN a.grantee = d.defaclrole THEN '<owner>' "
    "WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee)::text END || '=' || a.privilege_type "
    "|| CASE WHEN a.is_grantable THEN '*' ELSE '' END AS x "
    "FROM pg_default_acl d CROSS JOIN LATERAL aclexplode(d.defaclacl) a "
    "WHERE d.defaclrole = coalesce(:role, (SELECT oid FROM pg_roles WHERE rolname = current_user)) "
    "AND d.defaclnamespace = 0) t"
)
# Everything of key_parts the database says, in one round trip: the server's major version, the vector
# extension, the default privileges (of :role; NULL: the current role).
_KEY_PARTS = text(
    "SELECT current_setting('server_version_num')::int / 10000 AS server, e.oid::int8 AS extension_oid, "
    "e.extversion AS extension_version, n.nspname AS extension_schema, "
    f"({_DEFAULT_PRIVILEGES.text}) AS default_privileges "
    "FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'"
)
# The role owning most project schemas (whose default privileges decide theirs), or NULL when none.
_PROJECTS_OWNER = text(
    "SELECT n.nspowner, pg_get_userbyid(n.nspowner) FROM pg_namespace n "
    "WHERE n.nspname LIKE :prefix "
    "GROUP BY n.nspowner ORDER BY count(*) DESC, n.nspowner LIMIT 1"
)


def key_parts(
    conn: Connection, chain: Chain, *, role: int | None = None, extension_checked: bool = False
) -> dict[str, Any]:
    """What the catalog the chain builds depends on (the vector extension must exist), the privileges of
    what it builds included: the default privileges of ``role`` (an OID; default: the current role's).
    ``extension_checked``: the caller's registry bootstrap has just made sure the extension is there and
    usable (a fleet run): not asked again."""
    if not extension_checked:
        flavors.find(conn)  # the error that says `workspace-tool init` when it is missing
    row = conn.execute(_KEY_PARTS, {"role": role}).one()
    return {
        "format": CATALOG_FORMAT,
        "head": chain.head,
        "chain": chain.fingerprint,
        **row._asdict(),
        "alembic": alembic_version(),
        "sqlalchemy": sqlalchemy.__version__,
    }


def reference_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def build(conn: Connection, chain: Chain, parts: dict[str, Any], lock_timeout_ms: int | None = None) -> Reference:
    """Run the chain from base to head into a scratch schema and read its catalog, in a transaction that
    is rolled back (a chain with a revision that can't run in a transaction: committed, then dropped).
    ``conn`` must not be in a transaction; needs CREATE on the database. A revision that fails there
    (RevisionFailed for its own Python error) is raised as HeadModelFailed, in one line."""
    scratch = SCRATCH_PREFIX + uuid.uuid4().hex[:12]
    with conn.begin():
        flavor = flavors.find(conn)  # the scratch schema is created as project schemas are
    plan = chain.plan(None, chain.head)
    try:
        with scratch_schema(conn, chain, scratch, flavor, [(plan, True)], lock_timeout_ms=lock_timeout_ms):
            conn.execute(PIN_SEARCH_PATH)
            catalog = snapshot(conn, scratch)
            fingerprint = fingerprints(conn, [scratch])[scratch]
    except MigrationFailed as exc:  # a revision failed there (its own code raised, or the database refused)
        raise HeadModelFailed(chain.head, exc.detail) from exc
    return Reference(chain.head, reference_key(parts), catalog, fingerprint, "built")


def stored(conn: Connection, key: str, namespace: Namespace = DEFAULT) -> Reference | None:
    """The stored reference with this key, if any. Read-only; works on a registry without the table."""
    if not conn.execute(namespace.sql(_HAS_TABLE)).scalar():
        return None
    row = conn.execute(namespace.sql(_READ), {"key": key}).first()
    return None if row is None else Reference(row.head, key, row.catalog, row.fingerprint, "stored")


def is_stored(conn: Connection, key: str, namespace: Namespace = DEFAULT, *, registry_checked: bool = False) -> bool:
    """Whether a reference with this key is stored (without reading its catalog). Read-only.
    ``registry_checked``: the registry is known to be at a revision with the table (a fleet run's
    bootstrap): its existence is not asked."""
    has_table = registry_checked or bool(conn.execute(namespace.sql(_HAS_TABLE)).scalar())
    return has_table and bool(conn.execute(namespace.sql(_STORED), {"key": key}).scalar())


def for_check(conn: Connection, chain: Chain) -> Reference:
    """The stored reference of this chain if there is one, else one built in a scratch schema (rolled
    back). Writes nothing. ``conn`` must not be in a transaction. Its privileges are those of a schema the
    role owning (most of) the project schemas builds: the one stored with that role's default privileges,
    or one built by the current role when it has the same ones."""
    with conn.begin():
        owner = conn.execute(_PROJECTS_OWNER, {"prefix": chain.namespace.schema_like}).first()
        parts = key_parts(conn, chain, role=None if owner is None else owner[0])
        reference = stored(conn, reference_key(parts), chain.namespace)
        allowed, database = can_create(conn)
        own = conn.execute(_DEFAULT_PRIVILEGES, {"role": None}).scalar_one()
    if reference is not None:
        return reference
    if allowed and owner is not None and own != parts["default_privileges"]:
        role = conn.engine.url.username
        raise PermissionDenied(
            f"check needs the catalog the chain builds at head {chain.head} with the default privileges of role "
            f"{owner[1]}, which owns the project schemas, and none is stored in {chain.namespace.sql(TABLE)}",
            f"{role_phrase(role)} has other default privileges, so a schema it builds would not have the "
            "privileges the projects should have",
            f"run `workspace-tool init` once as {owner[1]} (it stores it), or run check as {owner[1]}",
            role=role,
        )
    if not allowed:
        role = conn.engine.url.username
        raise PermissionDenied(
            f"check needs the catalog the chain builds at head {chain.head}, and none is stored for this chain "
            f"in {chain.namespace.sql(TABLE)}",
            f"{role_phrase(role)} can't build one (that needs CREATE on database {database}, for a scratch "
            "schema that is rolled back)",
            "run `workspace-tool init` once as a role that can (it stores it), then rerun check",
            role=role,
        )
    return build(conn, chain, parts)


def store(conn: Connection, chain: Chain, *, refresh: bool = True, lock_timeout_ms: int | None = None) -> Reference:
    """Build the reference and store it in the registry (which must be at head); with ``refresh=False``
    only when none is stored for this chain. ``conn`` must not be in a transaction."""
    with conn.begin():
        parts = key_parts(conn, chain)
        reference = None if refresh else stored(conn, reference_key(parts), chain.namespace)
    if reference is not None:
        return reference
    return _build_and_store(conn, chain, parts, lock_timeout_ms)


def _build_and_store(
    conn: Connection, chain: Chain, parts: dict[str, Any], lock_timeout_ms: int | None = None
) -> Reference:
    started = time.perf_counter()
    reference = build(conn, chain, parts, lock_timeout_ms)
    with conn.begin():
        conn.execute(
            chain.namespace.sql(_UPSERT),
            {
                "key": reference.key,
                "head": reference.head,
                "parts": json.dumps(parts, sort_keys=True),
                "catalog": json.dumps(reference.catalog),
                "fingerprint": reference.fingerprint,
            },
        )
    log.info("stored the head model for check (head %s) in %.0f ms", chain.head, (time.perf_counter() - started) * 1000)
    return reference


def store_if_missing(
    engine: Engine, chain: Chain, lock_timeout_ms: int | None = None, *, registry_checked: bool = False
) -> None:
    """For fleet runs, at their end: store the reference if none is stored for this chain. A failure (a
    chain that can't be built from scratch, a role without CREATE, a lock wait longer than
    ``lock_timeout_ms``) must not fail the run: it is logged, and `check` then builds the reference itself
    or says what to run. ``registry_checked``: the run's bootstrap made sure the registry is at head and
    the extension there and usable: neither is asked again."""
    try:
        with transactions.connect(engine) as conn:
            with conn.begin():  # the usual case: stored already (its catalog is not read)
                parts = key_parts(conn, chain, extension_checked=registry_checked)
                if is_stored(conn, reference_key(parts), chain.namespace, registry_checked=registry_checked):
                    return
            _build_and_store(conn, chain, parts, lock_timeout_ms)
    except (WorkspaceError, DBAPIError, OSError) as exc:
        log.warning("could not store the reference catalog for `check`: %s", first_line(exc))
