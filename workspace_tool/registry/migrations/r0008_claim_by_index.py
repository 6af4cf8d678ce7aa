"""project_registry.claim_spare(): schemas looked up by name, through pg_namespace's index, never scanned

Revision ID: r0008_claim_by_index
Revises: r0007_dropped_status
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

from workspace_tool.registry.migrations.r0004_pool_releases import _DIGEST, _ROWS
from workspace_tool.registry.migrations.r0004_pool_releases import CLAIM_SPARE as CLAIM_SPARE_R0004
from workspace_tool.registry.table import in_migrating_registry

revision = "r0008_claim_by_index"
down_revision = "r0007_dropped_status"
branch_labels = None
depends_on = None

# The claim of r0004 (and, through it, r0006's claim_spare_locked: same signatures, so every release calls
# it as before), reading pg_namespace only by name. r0004's looked the project's schema up with a query on
# pg_namespace and each candidate spare's owner with a subquery: on a small or never-analyzed pg_namespace
# (a new database; the benchmark's) the planner scans the whole catalog for each, casting every row's name,
# and since every schema's rename or creation invalidates every plan, it plans that again in every claim:
# 7 scans of pg_namespace a claim, and about a fifth of the claim's server time measured with fresh builds
# interleaved (benchmarks/run.py --only pool). Now the project's schema is looked up by ``to_regnamespace``
# (the catalog cache, in a plpgsql expression that needs no plan of a query), and the function plans its
# queries with sequential scans disabled (a SET of the function: restored when it returns, no session
# state), so the owner's subquery and the spare's row are read through their indexes whatever the catalog's
# statistics say. What is claimed, locked and skipped is r0004's. No '%' in the text, ':' only in '::' casts.
CLAIM_SPARE = f"""
CREATE OR REPLACE FUNCTION project_registry.claim_spare(p_target text, p_revision text, p_chain text)
RETURNS boolean LANGUAGE plpgsql SET enable_seqscan = off AS $claim$
DECLARE
    spare text;
    v_privileges text DEFAULT md5('');
BEGIN
    IF to_regnamespace(quote_ident(p_target)) IS NOT NULL THEN
        RETURN false;
    END IF;
    IF EXISTS (SELECT 1 {_ROWS}) THEN
        SELECT {_DIGEST} INTO v_privileges {_ROWS};
    END IF;
    SELECT s.schema_name INTO spare
    FROM project_registry.spare_schemas s
    WHERE s.chain = p_chain AND s.revision = p_revision AND s.privileges = v_privileges AND s.ready
      AND (SELECT pg_get_userbyid(n.nspowner) FROM pg_namespace n WHERE n.nspname = s.schema_name::name)
          = current_user
    ORDER BY s.created_at
    LIMIT 1
    FOR UPDATE SKIP LOCKED;
    IF spare IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE 'ALTER SCHEMA ' || quote_ident(spare) || ' RENAME TO ' || quote_ident(p_target);
    DELETE FROM project_registry.spare_schemas WHERE schema_name = spare;
    RETURN true;
END
$claim$
"""


def upgrade() -> None:
    op.execute(in_migrating_registry(CLAIM_SPARE))


def downgrade() -> None:
    # CREATE OR REPLACE without SET: the function's setting goes with its r0008 body
    op.execute(in_migrating_registry(CLAIM_SPARE_R0004))
