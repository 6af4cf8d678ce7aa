"""ALTER-type changes on existing tables: add, alter, rename, index

Revision ID: 0004_alter_existing
Revises: 0003_indexing_jobs
Create Date: 2026-11-25

These are the operations that schema_translate_map does not reach (alembic issue #555); they land in
the project schema because of the search_path that env.py sets.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_alter_existing"
down_revision: str | Sequence[str] | None = "0003_indexing_jobs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Reviewed with squawk (`workspace-tool lint`): the type change scans and rewrites repositories under an
# ACCESS EXCLUSIVE lock, the rename breaks code still reading change_events.file_path, and each index
# blocks writes to its table while it builds, in every project in turn. Accepted for this example chain:
# its per-project tables are small, so each schema's transaction holds these locks briefly (and CREATE
# INDEX CONCURRENTLY cannot run inside that transaction).
workspace_squawk_ignore = ["changing-column-type", "renaming-column", "require-concurrent-index-creation"]


def upgrade() -> None:
    op.add_column("code_chunks", sa.Column("token_count", sa.Integer()))
    op.alter_column("repositories", "name", type_=sa.String(255), existing_type=sa.Text(), existing_nullable=False)
    op.alter_column(
        "code_files", "language", server_default="unknown", existing_type=sa.String(50), existing_nullable=True
    )
    op.alter_column("change_events", "file_path", new_column_name="path", existing_type=sa.Text())
    op.create_index("ix_code_files_content_hash", "code_files", ["content_hash"])
    op.create_index("ix_change_events_repository_detected", "change_events", ["repository_id", "detected_at"])


def downgrade() -> None:
    op.drop_index("ix_change_events_repository_detected", table_name="change_events")
    op.drop_index("ix_code_files_content_hash", table_name="code_files")
    op.alter_column("change_events", "path", new_column_name="file_path", existing_type=sa.Text())
    op.alter_column("code_files", "language", server_default=None, existing_type=sa.String(50), existing_nullable=True)
    op.alter_column("repositories", "name", type_=sa.Text(), existing_type=sa.String(255), existing_nullable=False)
    op.drop_column("code_chunks", "token_count")
