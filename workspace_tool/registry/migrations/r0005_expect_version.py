"""project_registry.expect_version(): the guard of a transaction sent without reading the schema first

Revision ID: r0005_expect_version
Revises: r0004_pool_releases
Create Date: 2027-03-01
"""

from __future__ import annotations

from alembic import op

from workspace_tool.registry.table import in_migrating_registry

revision = "r0005_expect_version"
down_revision = "r0004_pool_releases"
branch_labels = None
depends_on = None

# The fleet's fast lane (and `upgrade --sql`) sends a schema's whole transaction without reading the schema
# first; its guard calls this with whether the version moved from the one read (``p_found``): when it did
# not, it raises SQLSTATE WT001 (workspace_tool.dberrors.STATE_CHANGED, a class of our own), which rolls the
# transaction back, changing nothing, and sends the fleet to the careful path; a script run by psql stops
# there with the message. VOLATILE (the default): never skipped or evaluated ahead of the statement's rows.
# On a distributed database the call may run on the node holding the schema's tables, where the database
# propagates the function (measured: a tenant schema's check runs on its worker). CREATE OR REPLACE: a
# registry taken back to an earlier revision by hand keeps it. No '%' in the text, and ':' only after a
# letter (never a bind parameter): it goes through SQLAlchemy's text().
EXPECT_VERSION = """
CREATE OR REPLACE FUNCTION project_registry.expect_version(p_found boolean, p_schema text, p_version text)
RETURNS void LANGUAGE plpgsql AS $guard$
BEGIN
    IF NOT p_found THEN
        RAISE EXCEPTION USING
            ERRCODE = 'WT001',
            MESSAGE = 'workspace-tool:state-changed ' || p_schema || ' is no longer at revision '
                || coalesce(p_version, 'base') || ' as it was read: nothing was changed',
            HINT = 'read it again (rerun the command, or render the script again)';
    END IF;
END
$guard$
"""


def upgrade() -> None:
    op.execute(in_migrating_registry(EXPECT_VERSION))


def downgrade() -> None:
    op.execute(in_migrating_registry("DROP FUNCTION project_registry.expect_version(boolean, text, text)"))
