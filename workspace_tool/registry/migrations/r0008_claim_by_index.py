"""project_registry.claim_spare(): pg_namespace read through its name index, never scanned

Revision ID: r0008_claim_by_index
Revises: r0007_dropped_status
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

from workspace_tool.registry.migrations.r0004_pool_releases import CLAIM_SPARE as CLAIM_SPARE_R0004
from workspace_tool.registry.table import in_migrating_registry

revision = "r0008_claim_by_index"
down_revision = "r0007_dropped_status"
branch_labels = None
depends_on = None

# The claim of r0004 (and, through it, r0006's claim_spare_locked: same signatures, so every release calls
# it as before), planned with sequential scans off: a SET of the function, restored when it returns (no
# session state). r0004's looks the project's schema up by a query on pg_namespace and each candidate
# spare's owner by a subquery on it. On a small or never-analyzed pg_namespace (a new database; the
# benchmark's) the planner chose to scan the whole catalog for each, casting every row's name, and the
# scan grew with every schema and every rename's dead row version; and since a schema's creation or rename
# empties every backend's plan cache, it planned that again in every claim. Now both read pg_namespace
# through its name index, and the spare's row through the claim index, whatever the statistics say.
# The project's schema is still looked up by a query, not through the catalog cache (to_regnamespace):
# a claim that waited for the schema's lock while another session created the schema sees it in the
# query's new snapshot, where the cache may not have taken in that commit yet (the rename would then
# fail: an ERROR, where r0004 returns false). What is claimed, locked and skipped is r0004's.
# No '%' in the text, ':' only in '::' casts.
_HEADER = "RETURNS boolean LANGUAGE plpgsql AS $claim$"
CLAIM_SPARE = CLAIM_SPARE_R0004.replace(_HEADER, "RETURNS boolean LANGUAGE plpgsql SET enable_seqscan = off AS $claim$")
assert CLAIM_SPARE != CLAIM_SPARE_R0004


def upgrade() -> None:
    op.execute(in_migrating_registry(CLAIM_SPARE))


def downgrade() -> None:
    # CREATE OR REPLACE without SET: the function's setting goes with its r0008 body
    op.execute(in_migrating_registry(CLAIM_SPARE_R0004))
