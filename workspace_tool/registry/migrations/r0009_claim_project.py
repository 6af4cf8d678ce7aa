"""project_registry.claim_project(): the warm pool's claim and the project's registry row in one function call

Revision ID: r0009_claim_project
Revises: r0008_claim_by_index
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

from workspace_tool.registry.table import in_migrating_registry

revision = "r0009_claim_project"
down_revision = "r0008_claim_by_index"
branch_labels = None
depends_on = None

# A first ensure's claim sent alone (workspace_tool.spares.store.claim_project_statement): r0006's
# claim_spare_locked (the schema's lock, then r0008's claim), and only if it claimed a spare, the project's
# registry row, written as the library's upsert writes it (registry.table.upsert_sql: the server's duration
# from the transaction's start), returned; NULL when nothing was claimed (nothing changed). Before, the
# library sent that upsert itself, around the claim, as one statement of two CTEs: the server planned that
# statement (an INSERT ... ON CONFLICT over a CTE) in every claim, since a schema's rename empties every
# backend's plan cache, where this call is planned as a plain function call. Measured (the backend's CPU
# per claim against the claim's raw floor, the same SQL on one connection, interleaved, 200 claims each, on
# a loaded machine): 0.98-1.17x, against 1.11-1.42x in the same runs. The functions of r0003-r0008 are
# unchanged (same signatures): older releases call them as before. No '%' in the text, ':' only in '::'.
CLAIM_PROJECT = """
CREATE OR REPLACE FUNCTION project_registry.claim_project(
    p_lock bigint, p_project text, p_target text, p_revision text, p_chain text, p_action text, p_path text
) RETURNS float8 LANGUAGE plpgsql AS $claim$
DECLARE
    recorded float8;
BEGIN
    IF NOT project_registry.claim_spare_locked(p_lock, p_target, p_revision, p_chain) THEN
        RETURN NULL;
    END IF;
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
