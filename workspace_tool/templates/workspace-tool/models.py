"""Your application's tables, one set per project schema: the chain's models at its head.

alembic.ini names ``metadata`` below as ``workspace_models``: `workspace-tool revision -m "..." --autogenerate`
writes the difference between these models and a project schema at the chain's head. Add or change a table
here, then write the revision. Never give a table a schema: each project's schema is chosen at run time.

    class Note(Base):
        __tablename__ = "notes"

        id: Mapped[int] = mapped_column(primary_key=True)
        body: Mapped[str] = mapped_column(sa.Text)
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column  # noqa: F401 - for your tables


class Base(DeclarativeBase):
    """The declarative base of the project tables."""

    metadata = sa.MetaData()


metadata = Base.metadata
