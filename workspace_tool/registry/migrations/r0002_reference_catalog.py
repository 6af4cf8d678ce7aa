"""project_registry.reference_catalog: the catalog the project chain builds at head, for `check`

Revision ID: r0002_reference_catalog
Revises: r0001_workspace_config
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from workspace_tool.registry.table import migrating_schema

revision = "r0002_reference_catalog"
down_revision = "r0001_workspace_config"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reference_catalog",
        # what the catalog depends on (see workspace_tool.reference.reference_key), hashed
        sa.Column("reference_key", sa.String(64), primary_key=True),
        sa.Column("head", sa.String(64), nullable=False),
        sa.Column("key_parts", postgresql.JSONB(), nullable=False),  # the same, readable
        sa.Column("catalog", postgresql.JSONB(), nullable=False),  # catalog.snapshot, schema name stripped
        sa.Column("fingerprint", sa.String(32), nullable=False),  # catalog.fingerprints of the same schema
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        schema=migrating_schema(),
    )


def downgrade() -> None:
    op.drop_table("reference_catalog", schema=migrating_schema())
