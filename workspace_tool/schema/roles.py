"""Optional least privilege: a per-project role that can use its project's schema and nothing else.

``ensure(project_id, owner_role="app_foo")`` grants the role, in the same transaction that provisions or
upgrades the schema: USAGE on the schema, SELECT/INSERT/UPDATE/DELETE on its tables, USAGE/SELECT/UPDATE
on its sequences, and default privileges so tables and sequences later revisions create are covered too.
The role is *granted to*, not made owner of, the schema: an owner could drop or alter the tables and
their migrations' history; the migrating user keeps DDL. It may read alembic_version but not write it.
A missing role is created NOLOGIN (grant it to a login role, or ALTER ROLE ... LOGIN PASSWORD ...).
Nothing is granted on other schemas, so the role can neither read another project nor write the registry.
"""

from __future__ import annotations

import re

from workspace_tool.errors import InvalidRoleName
from workspace_tool.sql import quote_ident, sql_literal

_ROLE = re.compile(r"[a-z_][a-z0-9_]*")
MAX_ROLE_LENGTH = 63  # NAMEDATALEN - 1
_RESERVED = frozenset({"public", "none", "current_user", "session_user", "current_role", "postgres"})


def validate_role_name(role: object) -> str:
    """The role name, or InvalidRoleName naming the rule (before any SQL is sent)."""
    if not isinstance(role, str):
        raise InvalidRoleName(role, f"it is a {type(role).__name__}, not a string")
    if not role:
        raise InvalidRoleName(role, "it is empty")
    if len(role) > MAX_ROLE_LENGTH:
        raise InvalidRoleName(role, f"it is {len(role)} characters long, more than {MAX_ROLE_LENGTH}")
    if not _ROLE.fullmatch(role):
        bad = next((ch for ch in role if not (ch.isascii() and (ch.isalnum() or ch == "_"))), role[0])
        reason = f"character {bad!r} is not allowed" if not ("0" <= role[0] <= "9") else "it starts with a digit"
        if bad.isascii() and bad.isupper():
            reason = f"character {bad!r} is not allowed (lower case only)"
        raise InvalidRoleName(role, reason)
    if role.startswith("pg_"):
        raise InvalidRoleName(role, "names starting with pg_ are reserved by PostgreSQL")
    if role in _RESERVED:
        raise InvalidRoleName(role, "it is reserved")
    return role


def grant_statements(schema: str, role: str) -> list[str]:
    """Create the role if missing (NOLOGIN), then grant it the schema. Idempotent."""
    r, s = quote_ident(role), quote_ident(schema)
    create = (
        "DO $wst$ BEGIN "
        f"IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {sql_literal(role)}) THEN "
        f"CREATE ROLE {r} NOLOGIN; END IF; "
        "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; "  # created concurrently
        "END $wst$"
    )
    return [
        create,
        f"GRANT USAGE ON SCHEMA {s} TO {r}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {s} TO {r}",
        f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {s} TO {r}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {r}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {r}",
        # the migration history is the migrator's: readable (to check the version), not writable
        "DO $wst$ BEGIN "
        f"IF to_regclass({sql_literal(s + '.alembic_version')}) IS NOT NULL THEN "
        f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {s}.alembic_version FROM {r}; END IF; END $wst$",
    ]
