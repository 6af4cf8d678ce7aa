"""What this database offers workspace-tool: the vector extension's schema, the privilege to create schemas."""

from __future__ import annotations

from sqlalchemy import Connection, text

from workspace_tool.dberrors import grant_needed, grantee, role_phrase, sql_name
from workspace_tool.errors import ConfigurationError

DEFAULT_EXTENSION_SCHEMA = "workspace_extensions"


_EXTENSION_SCHEMA_SQL = text(
    "SELECT n.nspname, EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = n.oid "
    "AND c.relkind IN ('r', 'p', 'v', 'm', 'f')) "
    "FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'"
)


def find_extension_schema(conn: Connection) -> str:
    """The schema holding the vector extension; it must hold no tables (they could shadow ours)."""
    row = conn.execute(_EXTENSION_SCHEMA_SQL).first()
    if row is None:
        raise ConfigurationError("the vector extension is not installed in this database: run `workspace-tool init`")
    schema, has_tables = str(row[0]), bool(row[1])
    check_extension_schema(schema, has_tables)
    return schema


def check_extension_schema(schema: str, has_tables: bool) -> None:
    if has_tables:
        raise ConfigurationError(
            f"the vector extension lives in schema {schema}, which also holds tables; migrations put that "
            f"schema on their search_path, where its tables could shadow a project's. Move the extension: "
            f"CREATE SCHEMA {DEFAULT_EXTENSION_SCHEMA}; ALTER EXTENSION vector SET SCHEMA "
            f"{DEFAULT_EXTENSION_SCHEMA}"
        )


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
