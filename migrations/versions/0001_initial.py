"""repositories, code_files, change_events, embedding_metadata

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UUID_PK = dict(primary_key=True, server_default=sa.text("gen_random_uuid()"))
NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "repositories",
        sa.Column("id", postgresql.UUID(as_uuid=True), **UUID_PK),  # type: ignore[arg-type]
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("last_indexed_at", sa.DateTime(timezone=True)),
        sa.Column("is_active", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.UniqueConstraint("path", name="uq_repositories_path"),
    )
    op.create_table(
        "code_files",
        sa.Column("id", postgresql.UUID(as_uuid=True), **UUID_PK),  # type: ignore[arg-type]
        sa.Column(
            "repository_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("repositories.id", ondelete="CASCADE", name="fk_code_files_repository_id"),
            nullable=False,
        ),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("relative_path", sa.Text(), nullable=False),
        sa.Column("content_hash", sa.String(64)),
        sa.Column("size_bytes", sa.Integer()),
        sa.Column("language", sa.String(50)),
        sa.Column("modified_at", sa.DateTime(timezone=True)),
        sa.Column("indexed_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.Column("is_deleted", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("repository_id", "relative_path", name="uq_code_files_repository_relative_path"),
    )
    op.create_index("ix_code_files_path", "code_files", ["path"])
    op.create_table(
        "change_events",
        sa.Column("id", postgresql.UUID(as_uuid=True), **UUID_PK),  # type: ignore[arg-type]
        sa.Column(
            "repository_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("repositories.id", ondelete="CASCADE", name="fk_change_events_repository_id"),
            nullable=False,
        ),
        sa.Column("file_path", sa.Text(), nullable=False),
        sa.Column("change_type", sa.String(20), nullable=False),
        sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    )
    op.create_table(
        "embedding_metadata",
        sa.Column("id", postgresql.UUID(as_uuid=True), **UUID_PK),  # type: ignore[arg-type]
        sa.Column("model_name", sa.String(100), nullable=False, server_default="nomic-embed-text"),
        sa.Column("model_version", sa.String(50)),
        sa.Column("dimensions", sa.Integer(), nullable=False, server_default=sa.text("768")),
        sa.Column("generation_time_ms", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    )


def downgrade() -> None:
    op.drop_table("embedding_metadata")
    op.drop_table("change_events")
    op.drop_index("ix_code_files_path", table_name="code_files")
    op.drop_table("code_files")
    op.drop_table("repositories")
