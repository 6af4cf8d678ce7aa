"""code_chunks with a 768-dimension embedding and its HNSW index

Revision ID: 0002_code_chunks
Revises: 0001_initial
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects import postgresql

revision: str = "0002_code_chunks"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "code_chunks",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True, server_default=sa.text("gen_random_uuid()")),
        sa.Column(
            "code_file_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("code_files.id", ondelete="CASCADE", name="fk_code_chunks_code_file_id"),
            nullable=False,
        ),
        sa.Column("project_id", sa.String(50)),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("start_line", sa.Integer()),
        sa.Column("end_line", sa.Integer()),
        sa.Column("chunk_type", sa.String(50)),
        sa.Column("embedding", Vector(768)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
    )
    op.create_index("ix_code_chunks_code_file_id", "code_chunks", ["code_file_id"])
    op.create_index(
        "ix_code_chunks_embedding_hnsw",
        "code_chunks",
        ["embedding"],
        postgresql_using="hnsw",
        postgresql_with={"m": 16, "ef_construction": 64},
        postgresql_ops={"embedding": "vector_cosine_ops"},
    )


def downgrade() -> None:
    op.drop_index("ix_code_chunks_embedding_hnsw", table_name="code_chunks")
    op.drop_index("ix_code_chunks_code_file_id", table_name="code_chunks")
    op.drop_table("code_chunks")
