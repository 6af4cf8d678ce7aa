"""Where a migration's SQL lands: search_path, per-schema locks, the vector extension's schema."""

from __future__ import annotations

from sqlalchemy import Connection, text

from .errors import ConfigurationError
from .failures import grant_needed, grantee, role_phrase, sql_name
from .naming import quote_ident

DEFAULT_EXTENSION_SCHEMA = "workspace_extensions"
LOCK_NAMESPACE = "workspace_tool:"
REGISTRY_LOCK_KEY = LOCK_NAMESPACE + "#registry"

# One statement, so taking the lock is a single round trip.
LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"


def lock_key(schema: str) -> str:
    return LOCK_NAMESPACE + schema


def search_path_sql(schema: str, extension_schema: str) -> str:
    """The project schema first, then only the schema holding the vector extension."""
    path = [quote_ident(schema)]
    if extension_schema not in (schema, "pg_catalog"):
        path.append(quote_ident(extension_schema))
    return "SET LOCAL search_path TO " + ", ".join(path)


def lock_schema(conn: Connection, schema: str) -> None:
    """Per-schema transaction-level advisory lock: other projects are never blocked."""
    conn.execute(text(LOCK_SQL), {"key": lock_key(schema)})


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
