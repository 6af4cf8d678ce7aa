"""The example application's chain (paths, revisions, tables at head) and tiny chains built in tmp_path."""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

from workspace_tool.chain import Chain

ROOT = Path(__file__).resolve().parents[2]
ALEMBIC_INI = ROOT / "alembic.ini"
MAIN_REVISIONS = Chain.load(ALEMBIC_INI).revisions
HEAD = MAIN_REVISIONS[-1]
TABLES = {
    "alembic_version",
    "repositories",
    "code_files",
    "code_chunks",
    "change_events",
    "embedding_metadata",
    "indexing_jobs",
}
REVISION_TEMPLATE = '''"""{message}

Revision ID: {revision}
Revises: {down}
"""
import sqlalchemy as sa
from alembic import op

revision = {revision!r}
down_revision = {down_revision!r}
branch_labels = None
depends_on = None
{extra}

def upgrade() -> None:
{upgrade}


def downgrade() -> None:
{downgrade}
'''


class ChainBuilder:
    """Writes a small revision chain (alembic.ini, env.py, versions/) into a directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions = root / "migrations" / "versions"
        self.versions.mkdir(parents=True)
        shutil.copy(ROOT / "migrations" / "env.py", root / "migrations" / "env.py")
        shutil.copy(ROOT / "migrations" / "script.py.mako", root / "migrations" / "script.py.mako")
        text = ALEMBIC_INI.read_text()
        (root / "alembic.ini").write_text(text)
        self.last: str | None = None

    @property
    def ini(self) -> Path:
        return self.root / "alembic.ini"

    def add(
        self,
        revision: str,
        upgrade: str,
        downgrade: str = "pass",
        *,
        extra: str = "",
        down_revision: str | bool | None = True,
    ) -> ChainBuilder:
        down = self.last if down_revision is True else down_revision
        (self.versions / f"{revision}.py").write_text(
            REVISION_TEMPLATE.format(
                message=revision,
                revision=revision,
                down=down or "",
                down_revision=down,
                extra=textwrap.dedent(extra),
                upgrade=textwrap.indent(textwrap.dedent(upgrade).strip() or "pass", "    "),
                downgrade=textwrap.indent(textwrap.dedent(downgrade).strip() or "pass", "    "),
            )
        )
        self.last = revision
        return self

    def copy_main_chain(self) -> ChainBuilder:
        """Start from the project's real chain."""
        for path in sorted((ROOT / "migrations" / "versions").glob("*.py")):
            shutil.copy(path, self.versions / path.name)
        from workspace_tool.chain import Chain

        self.last = Chain.load(ALEMBIC_INI).head
        return self


def with_options(ini: Path, **options: str) -> Path:
    """Set workspace_* options in an alembic.ini's [alembic] section; returns the path."""
    text = ini.read_text()
    for name, value in options.items():
        text = re.sub(rf"(?m)^{name} = .*\n", "", text)
        text = text.replace("[alembic]\n", f"[alembic]\n{name} = {value}\n", 1)
    ini.write_text(text)
    Chain.forget(ini)
    return ini


def truncated_chain(root: Path, upto: str) -> Path:
    """A copy of the main chain holding only the revisions up to ``upto``; returns its alembic.ini."""
    builder = ChainBuilder(root)
    for rev in MAIN_REVISIONS[: MAIN_REVISIONS.index(upto) + 1]:
        shutil.copy(ROOT / "migrations" / "versions" / f"{rev}.py", builder.versions / f"{rev}.py")
    return builder.ini


# A revision creating items (id, name), and one adding a unique index on items.name (it fails where names repeat).
ITEMS = """
op.create_table(
    "items",
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
)
"""
UNIQUE = 'op.create_index("ux_items_name", "items", ["name"], unique=True)'
DROP_UNIQUE = 'op.drop_index("ux_items_name", table_name="items")'
