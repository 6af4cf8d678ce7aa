"""project_registry.claim_spare_locked(): the warm pool's claim taking the schema's lock itself

Revision ID: r0006_claim_in_one
Revises: r0005_expect_version
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

from workspace_tool.registry.table import in_migrating_registry

revision = "r0006_claim_in_one"
down_revision = "r0005_expect_version"
branch_labels = None
depends_on = None

# A first ensure claims a spare in ONE round trip (workspace_tool.spares.store.claim_statement with the
# lock): one statement, sent alone (an implicit transaction), that takes the schema's advisory lock
# (``p_lock``, the id of sql.lock_statement's lock: the same lock every other path takes), then claims a
# ready spare as ``claim_spare`` (r0004) does (FOR UPDATE SKIP LOCKED, renamed) and whose caller writes the
# registry row in the same statement. The lock is held until that transaction ends. Inside this VOLATILE
# function every query takes a new snapshot, so what it reads after the lock is what the lock's previous
# holder committed. No session state: safe through a transaction pooler. No '%', ':' only after a letter.
CLAIM_SPARE_LOCKED = """
CREATE OR REPLACE FUNCTION project_registry.claim_spare_locked(
    p_lock bigint, p_target text, p_revision text, p_chain text
) RETURNS boolean LANGUAGE plpgsql AS $claim$
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock);
    RETURN project_registry.claim_spare(p_target, p_revision, p_chain);
END
$claim$
"""


def upgrade() -> None:
    op.execute(in_migrating_registry(CLAIM_SPARE_LOCKED))


def downgrade() -> None:
    op.execute(in_migrating_registry("DROP FUNCTION project_registry.claim_spare_locked(bigint, text, text, text)"))
