"""What this database offers workspace-tool: the vector extension's schema, whether it runs Citus, the
privilege to create schemas."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text

from workspace_tool.dberrors import grant_needed, grantee, role_phrase, sql_name
from workspace_tool.errors import ConfigurationError

DEFAULT_EXTENSION_SCHEMA = "workspace_extensions"


# Whether the database runs Citus: asked on the coordinator, where every command of workspace-tool goes.
CITUS = "EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')"


@dataclass(frozen=True)
class Database:
    """What a database offers a project schema's transaction: the vector extension's schema (on every
    search_path), and Citus (``citus``: every project schema is a tenant schema, living whole on one
    worker; its transaction is sent statement by statement, see schema/transaction.py)."""

    extension_schema: str
    citus: bool = False


_EXTENSION_SCHEMA_SQL = text(
    "SELECT n.nspname, EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = n.oid "
    f"AND c.relkind IN ('r', 'p', 'v', 'm', 'f')), {CITUS} "
    "FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'"
)


def find_database(conn: Connection) -> Database:
    """The vector extension's schema (it must hold no tables: they could shadow ours) and whether the
    database runs Citus, in one query; never creates anything (`workspace-tool init` does)."""
    row = conn.execute(_EXTENSION_SCHEMA_SQL).first()
    if row is None:
        raise ConfigurationError("the vector extension is not installed in this database: run `workspace-tool init`")
    schema, has_tables = str(row[0]), bool(row[1])
    check_extension_schema(schema, has_tables)
    return Database(schema, bool(row[2]))


def find_extension_schema(conn: Connection) -> str:
    """The schema holding the vector extension (see ``find_database``)."""
    return find_database(conn).extension_schema


def is_citus(conn: Connection) -> bool:
    """Whether the database runs Citus (one query; for what reads without bootstrapping)."""
    return bool(conn.execute(text(f"SELECT {CITUS}")).scalar())


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
