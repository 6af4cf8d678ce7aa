"""The registry's spare_schemas: the warm pool's spare schemas (workspace_tool.spares), and the one statement
that claims a spare for a project and writes the project's registry row.

A spare is a schema built at a revision by a chain (its fingerprint) under the current role's default
privileges (their digest), named outside the project namespace (``workspace_spare_<hex>``: never a
project's, never counted as an orphan), with a row here. Its row and its schema are created, and dropped or
renamed, in one transaction; a spare built in parts (a chain with a revision that can't run in a
transaction) is recorded first, not ready, and made ready in its last part. ``claim_spare()`` is registry
revision r0003, and r0004 (only ready spares, under the current default privileges);
``project_registry.pool_releases`` (r0004) records the releases (chain, head) that fill the pool.
"""

from __future__ import annotations

import uuid

from sqlalchemy import TextClause, text

from workspace_tool.namespace import DEFAULT, SPARE_BASE, Namespace
from workspace_tool.registry.table import REGISTRY_SCHEMA
from workspace_tool.sql import sql_literal
from workspace_tool.words import Word


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


SPARES_TABLE = f"{REGISTRY_SCHEMA}.spare_schemas"
SPARE_PREFIX = SPARE_BASE  # the default namespace's
CLAIM_FUNCTION = f"{REGISTRY_SCHEMA}.claim_spare"


def spare_name(namespace: Namespace = DEFAULT) -> str:
    """A new spare schema's name: outside every namespace's projects, its namespace's (``spare_prefix``), unique."""
    return namespace.spare_prefix + uuid.uuid4().hex[:16]


def claim_statement(schema: str, revision: str | None, chain: str, upsert: str) -> str:
    """ONE statement, under the caller's lock on ``schema``: claim a spare at ``revision`` built by the chain
    ``chain`` and rename it ``schema`` (``claim_spare``), and only if it did, write the project's registry row
    (``upsert``, written per row of ``claimed``). It returns one row, the duration the registry row records,
    or none when nothing was claimed (no such spare, or ``schema`` exists): nothing changed. A claim sent
    alone, taking the lock itself, is ``claim_project_statement``."""
    call = f"{CLAIM_FUNCTION}({sql_literal(schema)}, {sql_literal(revision)}, {sql_literal(chain)})"
    return (
        f"WITH claimed AS MATERIALIZED (SELECT 1 FROM {call} AS c(ok) WHERE c.ok), recorded AS ({upsert}) "
        "SELECT last_duration_ms FROM recorded"
    )


CLAIM_PROJECT_FUNCTION = f"{REGISTRY_SCHEMA}.claim_project"  # r0009: claim_spare_locked (r0006) and the registry row


def claim_project_statement(
    lock: str, project_id: str, schema: str, revision: str | None, chain: str, action: str, path: str
) -> str:
    """ONE statement, a first ensure's claim sent alone (registry r0009's ``claim_project``): take the schema's
    lock (``lock``, its id), claim a spare at ``revision`` built by the chain ``chain``, rename it ``schema``
    and write the project's registry row (``action``, ``path``). It returns one row, the duration the registry
    row records, or none when nothing was claimed (no such spare, or ``schema`` exists): nothing changed."""
    arguments = ", ".join(sql_literal(v) for v in (project_id, schema, revision, chain, action, path))
    return f"SELECT c.ms FROM {CLAIM_PROJECT_FUNCTION}({lock}, {arguments}) AS c(ms) WHERE c.ms IS NOT NULL"


RELEASES_TABLE = f"{REGISTRY_SCHEMA}.pool_releases"
DEFAULT_PRIVILEGES = f"{REGISTRY_SCHEMA}.default_privileges()"  # r0004: the digest a spare is claimed under

# Whether the current role can read the spares (a monitoring role granted SELECT before r0003 can't): NULL
# if not; else whether the registry has r0004's columns, and whether the role may read the releases.
LAYOUT = text(
    f"SELECT CASE WHEN to_regclass('{SPARES_TABLE}') IS NULL THEN NULL "
    f"WHEN NOT has_table_privilege('{SPARES_TABLE}', 'SELECT') THEN NULL "
    f"ELSE to_regclass('{RELEASES_TABLE}') IS NOT NULL END AS r0004, "
    f"CASE WHEN to_regclass('{RELEASES_TABLE}') IS NULL THEN false "
    f"ELSE has_table_privilege('{RELEASES_TABLE}', 'SELECT') END AS releases"
)


def select_all(*, r0004: bool, releases: bool) -> TextClause:
    """Every spare: whether its schema is there and is the current role's (only those are claimed by it),
    whether it was built to its end under the role's default privileges as they are now, and how many
    seconds ago its release (chain, revision) last filled the pool (NULL: not recorded). On a registry
    before r0004 (read-only commands of a newer workspace-tool), every spare is complete and under other
    privileges."""
    current = f"s.privileges IS NOT DISTINCT FROM {DEFAULT_PRIVILEGES}" if r0004 else "false"
    age = (
        f"(SELECT extract(epoch FROM now() - r.last_seen)::float8 FROM {RELEASES_TABLE} r "
        "WHERE r.chain = s.chain AND r.revision = s.revision)"
        if releases
        else "NULL::float8"
    )
    return text(
        "SELECT s.schema_name, s.revision, s.chain, s.created_at, s.build_ms, n.oid IS NOT NULL AS present, "
        f"pg_get_userbyid(n.nspowner) = current_user AS own, {'s.ready' if r0004 else 'true'} AS complete, "
        f"{current} AS current_privileges, {age} AS release_age_s FROM {SPARES_TABLE} s "
        "LEFT JOIN pg_namespace n ON n.nspname = s.schema_name::name ORDER BY s.created_at, s.schema_name"
    )


# The releases that filled the pool: (chain, revision), first and last time, seconds since.
SELECT_RELEASES = text(
    f"SELECT chain, revision, first_seen, last_seen, extract(epoch FROM now() - last_seen)::float8 AS age_s "
    f"FROM {RELEASES_TABLE} ORDER BY last_seen DESC"
)
# A release filling the pool says so (the heartbeat other releases keep its spares by).
HEARTBEAT = text(
    f"INSERT INTO {RELEASES_TABLE} AS r (chain, revision) VALUES (:chain, :revision) "
    "ON CONFLICT (chain, revision) DO UPDATE SET last_seen = now()"
)
# Releases not seen for :grace seconds that have no spare left are forgotten.
FORGET_RELEASES = text(
    f"DELETE FROM {RELEASES_TABLE} r WHERE r.last_seen < now() - make_interval(secs => :grace) "
    f"AND NOT EXISTS (SELECT 1 FROM {SPARES_TABLE} s WHERE s.chain = r.chain AND s.revision = r.revision)"
)
PRIVILEGES = text(f"SELECT {DEFAULT_PRIVILEGES}")
# A spare built in one transaction, recorded in it: only if the default privileges are still those read at
# its start (:privileges), else nothing is inserted and the caller rolls the spare back.
INSERT = text(
    f"INSERT INTO {SPARES_TABLE} (schema_name, revision, chain, build_ms, privileges, ready) "
    f"SELECT :schema, :revision, :chain, :ms, :privileges, true WHERE {DEFAULT_PRIVILEGES} = :privileges"
)
# A spare built in parts: recorded first, not ready (never claimed), committed; then built; then ready.
INSERT_BUILDING = text(
    f"INSERT INTO {SPARES_TABLE} (schema_name, revision, chain, privileges, ready) "
    "VALUES (:schema, :revision, :chain, :privileges, false)"
)
MARK_READY = text(
    f"UPDATE {SPARES_TABLE} SET schema_name = :spare, ready = true, build_ms = :ms "
    f"WHERE schema_name = :schema AND NOT ready AND privileges = {DEFAULT_PRIVILEGES}"
)
DELETE = text(f"DELETE FROM {SPARES_TABLE} WHERE schema_name = :schema")
# Spares claimable by the current role at :revision of :chain, now.
READY = text(
    f"SELECT count(*) FROM {SPARES_TABLE} s JOIN pg_namespace n ON n.nspname = s.schema_name::name "
    f"WHERE s.chain = :chain AND s.revision = :revision AND s.ready AND s.privileges = {DEFAULT_PRIVILEGES} "
    "AND pg_get_userbyid(n.nspowner) = current_user"
)
# Which of these spares are still spares (not claimed nor dropped since they were listed).
# Removes up to :batch rows of spares the current role may drop (its own, or whose schema is gone): all of
# them, or those no release can claim: whose schema is gone, left half-built (the caller holds the pool's
# lock: no one is building), built under other default privileges, or of another release (not :chain at
# :revision) at a revision :known to the caller (behind its head, or at it from another chain) that has not
# filled the pool for :grace seconds. A spare at a revision the caller doesn't know (ahead of it) is never
# dropped here. Locked rows (being claimed) are skipped.
TAKE = text(
    f"DELETE FROM {SPARES_TABLE} WHERE schema_name IN ("
    f"SELECT s.schema_name FROM {SPARES_TABLE} s LEFT JOIN pg_namespace n ON n.nspname = s.schema_name::name "
    "WHERE (n.oid IS NULL OR pg_get_userbyid(n.nspowner) = current_user) "
    f"AND (:all OR n.oid IS NULL OR NOT s.ready OR s.privileges IS DISTINCT FROM {DEFAULT_PRIVILEGES} "
    "  OR ((s.chain, s.revision) IS DISTINCT FROM (:chain, :revision) AND s.revision = ANY(CAST(:known AS text[])) "
    f"      AND NOT EXISTS (SELECT 1 FROM {RELEASES_TABLE} r WHERE r.chain = s.chain AND r.revision = s.revision "
    "                      AND r.last_seen > now() - make_interval(secs => :grace)))) "
    "ORDER BY s.created_at LIMIT :batch FOR UPDATE OF s SKIP LOCKED) RETURNING schema_name"
)
# Spare-named schemas of the current role with no row: left by hand, never claimed; `pool drain` drops them.
# :spares is the namespace's ``spare_regex`` (another namespace's spares are not these).
UNLISTED = text(
    "SELECT n.nspname FROM pg_namespace n WHERE n.nspname ~ :spares "
    "AND pg_get_userbyid(n.nspowner) = current_user "
    f"AND NOT EXISTS (SELECT 1 FROM {SPARES_TABLE} s WHERE s.schema_name = n.nspname::text)"
)
