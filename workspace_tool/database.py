"""What a role may do in the database: create schemas (what scratch schemas, spares and new projects need)."""

from __future__ import annotations

from sqlalchemy import Connection, text

from workspace_tool.dberrors import grant_needed, grantee, role_phrase, sql_name

_CAN_CREATE = text("SELECT has_database_privilege(current_database(), 'CREATE'), current_database()")


def can_create(conn: Connection) -> tuple[bool, str]:
    """Whether this role may create schemas in the database, and the database's name."""
    allowed, database = conn.execute(_CAN_CREATE).one()
    return bool(allowed), str(database)


def require_create(conn: Connection, why: str) -> None:
    """Raise PermissionDenied, saying ``why`` it is needed and the GRANT, unless the role may create
    schemas in the database."""
    allowed, database = can_create(conn)
    if not allowed:
        role = conn.engine.url.username
        raise grant_needed(
            why,
            f"{role_phrase(role)} may not create schemas in database {database} (CREATE on the database)",
            f"GRANT CREATE ON DATABASE {sql_name(database)} TO {grantee(role)}",
            role,
            note=", or run it as a role that has it",
        )
