"""indexing_jobs: a queue of indexing work per repository

Revision ID: 0003_indexing_jobs
Revises: 0002_code_chunks
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_indexing_jobs"
down_revision: str | Sequence[str] | None = "0002_code_chunks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "indexing_jobs",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True, server_default=sa.text("gen_random_uuid()")),
        sa.Column("project_id", sa.String(50), nullable=False),
        sa.Column(
            "repository_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("repositories.id", ondelete="CASCADE", name="fk_indexing_jobs_repository_id"),
        ),
        sa.Column("status", sa.String(20), nullable=False, server_default="pending"),
        sa.Column("files_total", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("files_processed", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("chunks_created", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("error_message", sa.Text()),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.CheckConstraint("status IN ('pending', 'running', 'completed', 'failed')", name="ck_indexing_jobs_status"),
    )
    op.create_index(
        "ix_indexing_jobs_active",
        "indexing_jobs",
        ["project_id", "status"],
        postgresql_where=sa.text("status IN ('pending', 'running')"),
    )
    op.create_index("ix_indexing_jobs_created_at", "indexing_jobs", [sa.text("created_at DESC")])


def downgrade() -> None:
    op.drop_index("ix_indexing_jobs_created_at", table_name="indexing_jobs")
    op.drop_index("ix_indexing_jobs_active", table_name="indexing_jobs")
    op.drop_table("indexing_jobs")
