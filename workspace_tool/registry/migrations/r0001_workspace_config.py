"""project_registry.workspace_config: one row per project

Revision ID: r0001_workspace_config
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from workspace_tool.registry.table import migrating_schema

revision = "r0001_workspace_config"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workspace_config",
        sa.Column("project_id", sa.String(50), primary_key=True),
        sa.Column("schema_name", sa.String(63), nullable=False, unique=True),
        sa.Column("revision", sa.String(64)),
        sa.Column("status", sa.String(20), nullable=False, server_default="ready"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.Column("last_action", sa.String(20)),
        sa.Column("last_duration_ms", sa.Float()),
        sa.Column("last_path", sa.String(10)),
        sa.Column("last_error", sa.Text()),
        sa.Column("metadata", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.CheckConstraint("status IN ('ready', 'failed')", name="ck_workspace_config_status"),
        schema=migrating_schema(),
    )


def downgrade() -> None:
    op.drop_table("workspace_config", schema=migrating_schema())
