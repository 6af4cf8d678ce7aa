"""project_registry: spares keyed by the default privileges they were built under, spares built in parts,
and the releases that fill the warm pool (pool_releases)

Revision ID: r0004_pool_releases
Revises: r0003_spare_schemas
Create Date: 2027-02-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from workspace_tool.registry.table import in_migrating_registry, migrating_schema

revision = "r0004_pool_releases"
down_revision = "r0003_spare_schemas"
branch_labels = None
depends_on = None


# What decides the privileges of what a role creates in a new schema: its default privileges that are not
# tied to a schema (ALTER DEFAULT PRIVILEGES [FOR ROLE r] without IN SCHEMA; those tied to a schema name its
# OID, which no new schema has), for every kind of object (tables, sequences, functions, types, schemas),
# as one digest. A spare is claimed only by a role whose digest is the one it was built under. One
# definition, in the function and, inline, in the claim.
_ROWS = "FROM pg_default_acl d WHERE d.defaclrole = to_regrole(quote_ident(current_user)) AND d.defaclnamespace = 0"
_DIGEST = "md5(coalesce(string_agg(d.defaclobjtype::text || d.defaclacl::text, ' ' ORDER BY d.defaclobjtype), ''))"
DEFAULT_PRIVILEGES = f"""
CREATE FUNCTION project_registry.default_privileges() RETURNS text LANGUAGE sql STABLE AS $fn$
SELECT {_DIGEST} {_ROWS}
$fn$
"""

# As in r0003, and only a spare built to its end (``ready``: one built in parts is not until its last part)
# under the current role's default privileges as they are now: their digest, computed inline (a plpgsql
# query keeps its plan for the session, where calling default_privileges() would plan that SQL function
# again in every transaction: measured, 0.61 ms a claim against 0.48), and only when the role has some
# (else the digest of none: one index probe). No '%' in the text, and ':' only in '::' casts (see r0003).
CLAIM_SPARE = f"""
CREATE OR REPLACE FUNCTION project_registry.claim_spare(p_target text, p_revision text, p_chain text)
RETURNS boolean LANGUAGE plpgsql AS $claim$
DECLARE
    spare text;
    v_privileges text DEFAULT md5('');
BEGIN
    IF EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = p_target::name) THEN
        RETURN false;
    END IF;
    IF EXISTS (SELECT 1 {_ROWS}) THEN
        SELECT {_DIGEST} INTO v_privileges {_ROWS};
    END IF;
    SELECT s.schema_name INTO spare
    FROM project_registry.spare_schemas s
    WHERE s.chain = p_chain AND s.revision = p_revision AND s.privileges = v_privileges AND s.ready
      AND (SELECT pg_get_userbyid(n.nspowner) FROM pg_namespace n WHERE n.nspname = s.schema_name::name)
          = current_user
    ORDER BY s.created_at
    LIMIT 1
    FOR UPDATE SKIP LOCKED;
    IF spare IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE 'ALTER SCHEMA ' || quote_ident(spare) || ' RENAME TO ' || quote_ident(p_target);
    DELETE FROM project_registry.spare_schemas WHERE schema_name = spare;
    RETURN true;
END
$claim$
"""

CLAIM_SPARE_R0003 = """
CREATE OR REPLACE FUNCTION project_registry.claim_spare(p_target text, p_revision text, p_chain text)
RETURNS boolean LANGUAGE plpgsql AS $claim$
DECLARE
    spare text;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = p_target::name) THEN
        RETURN false;
    END IF;
    SELECT s.schema_name INTO spare
    FROM project_registry.spare_schemas s
    WHERE s.chain = p_chain AND s.revision = p_revision
      AND (SELECT pg_get_userbyid(n.nspowner) FROM pg_namespace n WHERE n.nspname = s.schema_name::name)
          = current_user
    ORDER BY s.created_at
    LIMIT 1
    FOR UPDATE SKIP LOCKED;
    IF spare IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE 'ALTER SCHEMA ' || quote_ident(spare) || ' RENAME TO ' || quote_ident(p_target);
    DELETE FROM project_registry.spare_schemas WHERE schema_name = spare;
    RETURN true;
END
$claim$
"""


def upgrade() -> None:
    # the digest of the default privileges it was built under (NULL: built before r0004, never claimed)
    op.add_column("spare_schemas", sa.Column("privileges", sa.String(32)), schema=migrating_schema())
    # False while it is built in parts (a chain with a revision that can't run in a transaction), or when
    # such a build was cut short: never claimed; the next `pool fill` drops it
    op.add_column(
        "spare_schemas",
        sa.Column("ready", sa.Boolean(), nullable=False, server_default=sa.true()),
        schema=migrating_schema(),
    )
    op.drop_index("ix_spare_schemas_claim", table_name="spare_schemas", schema=migrating_schema())
    op.create_index(
        "ix_spare_schemas_claim",
        "spare_schemas",
        ["chain", "revision", "privileges", "created_at"],
        schema=migrating_schema(),
        postgresql_where=sa.text("ready"),
    )
    # A release (a chain, by its fingerprint, at its head) that filled the pool, and when it last did: while
    # it keeps filling, other releases keep its spares (a rolling deploy serves both from the pool)
    op.create_table(
        "pool_releases",
        sa.Column("chain", sa.String(64), primary_key=True),
        sa.Column("revision", sa.String(64), primary_key=True),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        schema=migrating_schema(),
    )
    op.execute(in_migrating_registry(DEFAULT_PRIVILEGES))
    op.execute(in_migrating_registry(CLAIM_SPARE))


def downgrade() -> None:
    op.execute(in_migrating_registry(CLAIM_SPARE_R0003))
    op.execute(in_migrating_registry("DROP FUNCTION project_registry.default_privileges()"))
    op.drop_table("pool_releases", schema=migrating_schema())
    op.drop_index("ix_spare_schemas_claim", table_name="spare_schemas", schema=migrating_schema())
    op.create_index(
        "ix_spare_schemas_claim", "spare_schemas", ["chain", "revision", "created_at"], schema=migrating_schema()
    )
    op.drop_column("spare_schemas", "ready", schema=migrating_schema())
    op.drop_column("spare_schemas", "privileges", schema=migrating_schema())
