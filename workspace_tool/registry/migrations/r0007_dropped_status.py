"""workspace_config.status may be 'dropped': a project quarantined by `drop --retain`

Revision ID: r0007_dropped_status
Revises: r0006_claim_in_one
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

from workspace_tool.registry.table import in_migrating_registry, migrating_schema

revision = "r0007_dropped_status"
down_revision = "r0006_claim_in_one"
branch_labels = None
depends_on = None

# A quarantined project keeps its registry row (status 'dropped', schema_name its project schema's name, the
# schema it was renamed to and until when in metadata->'quarantine'): `restore` brings it back, `purge` (or
# `drop --purge-expired`) removes both. See workspace_tool.lifecycle.drop.


def upgrade() -> None:
    op.drop_constraint("ck_workspace_config_status", "workspace_config", schema=migrating_schema())
    op.create_check_constraint(
        "ck_workspace_config_status",
        "workspace_config",
        "status IN ('ready', 'failed', 'dropped')",
        schema=migrating_schema(),
    )


def downgrade() -> None:
    op.execute(in_migrating_registry("DELETE FROM project_registry.workspace_config WHERE status = 'dropped'"))
    op.drop_constraint("ck_workspace_config_status", "workspace_config", schema=migrating_schema())
    op.create_check_constraint(
        "ck_workspace_config_status", "workspace_config", "status IN ('ready', 'failed')", schema=migrating_schema()
    )
