"""The example chain's per-project tables at its head, as SQLAlchemy 2 declarative models.

They belong to the example application, not to the library: this module lives beside the chain's env.py,
as the module ``workspace-tool init-chain`` writes for an application does. It is the one description of
the head: alembic.ini names ``metadata`` as the chain's models (``workspace_models =
migrations.models:metadata``, the ``target_metadata`` of autogenerate), so ``workspace-tool revision
--autogenerate`` writes the difference between these models and a schema provisioned at head, and
tests/test_models.py proves there is none.

Every table has ``schema=None``: a project's schema is chosen at run time through
``schema_translate_map={None: schema}`` (see ``WorkspaceManager.session`` / ``connect``), never here.
Columns are declared in the order the chain creates them (0004 appends ``code_chunks.token_count``).
"""

from __future__ import annotations

import datetime as dt
import uuid

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

EMBEDDING_DIMENSIONS = 768

_UUID_DEFAULT = text("gen_random_uuid()")
_NOW = text("now()")


class Base(DeclarativeBase):
    """Declarative base of the per-project tables; ``Base.metadata`` is the chain's target metadata."""

    metadata = MetaData()


def _uuid_pk() -> Mapped[uuid.UUID]:
    return mapped_column(UUID(as_uuid=True), primary_key=True, server_default=_UUID_DEFAULT)


def _created_at() -> Mapped[dt.datetime]:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=_NOW)


class Repository(Base):
    __tablename__ = "repositories"
    __table_args__ = (UniqueConstraint("path", name="uq_repositories_path"),)

    id: Mapped[uuid.UUID] = _uuid_pk()
    path: Mapped[str] = mapped_column(Text, nullable=False)
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    last_indexed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=true())
    created_at: Mapped[dt.datetime] = _created_at()

    files: Mapped[list[CodeFile]] = relationship(back_populates="repository", passive_deletes=True)


class CodeFile(Base):
    __tablename__ = "code_files"
    __table_args__ = (
        UniqueConstraint("repository_id", "relative_path", name="uq_code_files_repository_relative_path"),
        Index("ix_code_files_path", "path"),
        Index("ix_code_files_content_hash", "content_hash"),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    repository_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True),
        ForeignKey("repositories.id", ondelete="CASCADE", name="fk_code_files_repository_id"),
        nullable=False,
    )
    path: Mapped[str] = mapped_column(Text, nullable=False)
    relative_path: Mapped[str] = mapped_column(Text, nullable=False)
    content_hash: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(Integer)
    language: Mapped[str | None] = mapped_column(String(50), server_default="unknown")
    modified_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    indexed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = _created_at()
    is_deleted: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=false())
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    repository: Mapped[Repository] = relationship(back_populates="files")
    chunks: Mapped[list[CodeChunk]] = relationship(back_populates="code_file", passive_deletes=True)


class ChangeEvent(Base):
    __tablename__ = "change_events"
    __table_args__ = (Index("ix_change_events_repository_detected", "repository_id", "detected_at"),)

    id: Mapped[uuid.UUID] = _uuid_pk()
    repository_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True),
        ForeignKey("repositories.id", ondelete="CASCADE", name="fk_change_events_repository_id"),
        nullable=False,
    )
    path: Mapped[str] = mapped_column(Text, nullable=False)  # file_path until 0004
    change_type: Mapped[str] = mapped_column(String(20), nullable=False)
    detected_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=_NOW)


class EmbeddingMetadata(Base):
    __tablename__ = "embedding_metadata"

    id: Mapped[uuid.UUID] = _uuid_pk()
    model_name: Mapped[str] = mapped_column(String(100), nullable=False, server_default="nomic-embed-text")
    model_version: Mapped[str | None] = mapped_column(String(50))
    dimensions: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("768"))
    generation_time_ms: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[dt.datetime] = _created_at()


class CodeChunk(Base):
    __tablename__ = "code_chunks"
    __table_args__ = (
        Index("ix_code_chunks_code_file_id", "code_file_id"),
        Index(
            "ix_code_chunks_embedding_hnsw",
            "embedding",
            postgresql_using="hnsw",
            postgresql_with={"m": 16, "ef_construction": 64},
            postgresql_ops={"embedding": "vector_cosine_ops"},
        ),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    code_file_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True),
        ForeignKey("code_files.id", ondelete="CASCADE", name="fk_code_chunks_code_file_id"),
        nullable=False,
    )
    project_id: Mapped[str | None] = mapped_column(String(50))
    content: Mapped[str] = mapped_column(Text, nullable=False)
    start_line: Mapped[int | None] = mapped_column(Integer)
    end_line: Mapped[int | None] = mapped_column(Integer)
    chunk_type: Mapped[str | None] = mapped_column(String(50))
    embedding: Mapped[list[float] | None] = mapped_column(Vector(EMBEDDING_DIMENSIONS))
    created_at: Mapped[dt.datetime] = _created_at()
    token_count: Mapped[int | None] = mapped_column(Integer)  # added by 0004

    code_file: Mapped[CodeFile] = relationship(back_populates="chunks")


class IndexingJob(Base):
    __tablename__ = "indexing_jobs"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'running', 'completed', 'failed')", name="ck_indexing_jobs_status"),
        Index(
            "ix_indexing_jobs_active",
            "project_id",
            "status",
            postgresql_where=text("status IN ('pending', 'running')"),
        ),
        Index("ix_indexing_jobs_created_at", text("created_at DESC")),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    project_id: Mapped[str] = mapped_column(String(50), nullable=False)
    repository_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True),
        ForeignKey("repositories.id", ondelete="CASCADE", name="fk_indexing_jobs_repository_id"),
    )
    status: Mapped[str] = mapped_column(String(20), nullable=False, server_default="pending")
    files_total: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    files_processed: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    chunks_created: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    error_message: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = _created_at()
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=_NOW)


metadata = Base.metadata

__all__ = [
    "EMBEDDING_DIMENSIONS",
    "Base",
    "ChangeEvent",
    "CodeChunk",
    "CodeFile",
    "EmbeddingMetadata",
    "IndexingJob",
    "Repository",
    "metadata",
]
