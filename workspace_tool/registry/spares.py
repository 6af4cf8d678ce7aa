"""project_registry.spare_schemas: the warm pool's spare schemas (workspace_tool.pool), and the one statement
that claims a spare for a project and writes the project's registry row.

A spare is a schema built at a revision by a chain (its fingerprint), named outside the project namespace
(``workspace_spare_<hex>``: never a project's, never counted as an orphan), with a row here. Its row and its
schema are created, and dropped or renamed, in one transaction. ``claim_spare()`` is registry revision r0003.
"""

from __future__ import annotations

import uuid

from sqlalchemy import text

from workspace_tool.registry.table import REGISTRY_SCHEMA
from workspace_tool.sql import sql_literal

SPARES_TABLE = f"{REGISTRY_SCHEMA}.spare_schemas"
SPARE_PREFIX = "workspace_spare_"
CLAIM_FUNCTION = f"{REGISTRY_SCHEMA}.claim_spare"
_LIKE_SPARE = SPARE_PREFIX.replace("_", "\\_") + "%"  # LIKE pattern: '_' matched literally


def spare_name() -> str:
    """A new spare schema's name: outside the project namespace (project_*), unique."""
    return SPARE_PREFIX + uuid.uuid4().hex[:16]


def claim_statement(schema: str, revision: str | None, chain: str, upsert: str) -> str:
    """ONE statement: claim a spare at ``revision`` built by the chain ``chain`` and rename it ``schema``
    (``claim_spare``, under the caller's lock on ``schema``), and only if it did, write the project's registry
    row (``upsert``, written per row of ``claimed``). It returns one row, the duration the registry row
    records, or none when nothing was claimed (no such spare, or ``schema`` exists): then nothing changed."""
    call = f"{CLAIM_FUNCTION}({sql_literal(schema)}, {sql_literal(revision)}, {sql_literal(chain)})"
    return (
        f"WITH claimed AS MATERIALIZED (SELECT 1 FROM {call} AS c(ok) WHERE c.ok), recorded AS ({upsert}) "
        "SELECT last_duration_ms FROM recorded"
    )


# Whether the current role can read the spares (a monitoring role granted SELECT before r0003 can't).
READABLE = text(
    f"SELECT CASE WHEN to_regclass('{SPARES_TABLE}') IS NULL THEN false "
    f"ELSE has_table_privilege('{SPARES_TABLE}', 'SELECT') END"
)
# Every spare, with whether its schema is there and is the current role's (only those are claimed by it).
SELECT_ALL = text(
    "SELECT s.schema_name, s.revision, s.chain, s.created_at, s.build_ms, n.oid IS NOT NULL AS present, "
    f"pg_get_userbyid(n.nspowner) = current_user AS own FROM {SPARES_TABLE} s "
    "LEFT JOIN pg_namespace n ON n.nspname = s.schema_name::name ORDER BY s.created_at, s.schema_name"
)
INSERT = text(
    f"INSERT INTO {SPARES_TABLE} (schema_name, revision, chain, build_ms) VALUES (:schema, :revision, :chain, :ms)"
)
# Removes up to :batch rows of spares the current role may drop (its own, or whose schema is gone): all of
# them, or those not claimable at :revision of :chain; locked rows (being claimed) are skipped.
TAKE = text(
    f"DELETE FROM {SPARES_TABLE} WHERE schema_name IN ("
    f"SELECT s.schema_name FROM {SPARES_TABLE} s LEFT JOIN pg_namespace n ON n.nspname = s.schema_name::name "
    "WHERE (n.oid IS NULL OR pg_get_userbyid(n.nspowner) = current_user) "
    "AND (:all OR s.chain IS DISTINCT FROM :chain OR s.revision IS DISTINCT FROM :revision OR n.oid IS NULL) "
    "ORDER BY s.created_at LIMIT :batch FOR UPDATE OF s SKIP LOCKED) RETURNING schema_name"
)
# Spare-named schemas of the current role with no row: left by hand, never claimed; `pool drain` drops them.
UNLISTED = text(
    f"SELECT n.nspname FROM pg_namespace n WHERE n.nspname LIKE '{_LIKE_SPARE}' "
    "AND pg_get_userbyid(n.nspowner) = current_user "
    f"AND NOT EXISTS (SELECT 1 FROM {SPARES_TABLE} s WHERE s.schema_name = n.nspname::text)"
)
