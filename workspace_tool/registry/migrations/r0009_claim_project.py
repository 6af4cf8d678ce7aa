"""project_registry.claim_project(): the warm pool's claim and the project's registry row in one function call

Revision ID: r0009_claim_project
Revises: r0008_claim_by_index
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

from workspace_tool.registry.migrations.r0004_pool_releases import _DIGEST, _ROWS
from workspace_tool.registry.table import in_migrating_registry

revision = "r0009_claim_project"
down_revision = "r0008_claim_by_index"
branch_labels = None
depends_on = None

# A first ensure's claim sent alone (workspace_tool.spares.store.claim_project_statement): the schema's lock,
# then the claim of r0008's claim_spare (the same checks: the project's schema absent; a ready spare of this
# chain at this revision, built under the current role's default privileges as they are now (r0004's digest),
# the role's own; the oldest, FOR UPDATE SKIP LOCKED; read through indexes only, as r0008), renamed, its row
# deleted; and only if it claimed a spare, the project's registry row, written as the library's upsert writes
# it (registry.table.upsert_sql: the server's duration from the transaction's start), returned; NULL when
# nothing was claimed (nothing changed).
# Written out in one function, not by calling r0006's claim_spare_locked and r0004's claim_spare (two nested
# plpgsql calls, one with its own SET), and with the look for the project's schema folded into the query that
# picks the spare (one statement less): a schema's rename (every claim's) empties every backend's plan cache,
# so every statement of a claim is analyzed and planned again in every claim. The lock stays a statement of its
# own, before that look: under READ COMMITTED each later statement of this VOLATILE function takes a new
# snapshot, so a claim that waited for the lock sees the schema its previous holder made. The digest of the
# default privileges is computed only when the role has some (else the digest of none, md5('')).
# Measured (the backend's CPU per claim, /proc/PID/schedstat, each function on a connection of its own,
# interleaved, 150 claims each, on a loaded 2-core machine; medians): the calls of r0006/r0008 cost 0.97-1.11x
# this body (median of 10 runs about 1.02x: within the noise). Kept out, each measured slower: the pick as
# DELETE ... WHERE schema_name = (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING (1.02x the separate SELECT and
# DELETE by key, 1.15x in wall time), the privileges digest as a subquery of the pick (its aggregate costs more
# to plan than the EXISTS that skips it), the registry row as a CTE of the pick (1.4x in wall time), the lock as
# a plpgsql expression instead of PERFORM, plan_cache_mode forced either way (no difference).
# The functions of r0003-r0008 are unchanged (same signatures and bodies): older releases call them as before.
# No '%' in the text, ':' only in '::'.
CLAIM_PROJECT = f"""
CREATE OR REPLACE FUNCTION project_registry.claim_project(
    p_lock bigint, p_project text, p_target text, p_revision text, p_chain text, p_action text, p_path text
) RETURNS float8 LANGUAGE plpgsql SET enable_seqscan = off AS $claim$
DECLARE
    spare text;
    v_privileges text DEFAULT md5('');
    recorded float8;
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock);
    IF EXISTS (SELECT 1 {_ROWS}) THEN
        SELECT {_DIGEST} INTO v_privileges {_ROWS};
    END IF;
    SELECT s.schema_name INTO spare
    FROM project_registry.spare_schemas s
    WHERE s.chain = p_chain AND s.revision = p_revision AND s.privileges = v_privileges AND s.ready
      AND (SELECT pg_get_userbyid(n.nspowner) FROM pg_namespace n WHERE n.nspname = s.schema_name::name)
          = current_user
      AND NOT EXISTS (SELECT 1 FROM pg_namespace t WHERE t.nspname = p_target::name)
    ORDER BY s.created_at
    LIMIT 1
    FOR UPDATE SKIP LOCKED;
    IF spare IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE 'ALTER SCHEMA ' || quote_ident(spare) || ' RENAME TO ' || quote_ident(p_target);
    DELETE FROM project_registry.spare_schemas WHERE schema_name = spare;
    INSERT INTO project_registry.workspace_config AS w (
        project_id, schema_name, revision, status, last_action, last_duration_ms, last_path, last_error
    ) VALUES (
        p_project, p_target, p_revision, 'ready', p_action,
        round((extract(epoch FROM clock_timestamp() - now()) * 1000)::numeric, 3), p_path, NULL
    )
    ON CONFLICT (project_id) DO UPDATE SET revision = EXCLUDED.revision, status = 'ready',
        last_action = EXCLUDED.last_action, last_duration_ms = EXCLUDED.last_duration_ms,
        last_path = EXCLUDED.last_path, last_error = NULL, updated_at = now()
    RETURNING last_duration_ms INTO recorded;
    RETURN recorded;
END
$claim$
"""


def upgrade() -> None:
    op.execute(in_migrating_registry(CLAIM_PROJECT))


def downgrade() -> None:
    signature = "bigint, text, text, text, text, text, text"
    op.execute(in_migrating_registry(f"DROP FUNCTION project_registry.claim_project({signature})"))
