"""The kind of database workspace-tool works on (its flavor), told apart in one query, and the schema of the
vector extension it found there.

``Flavor`` (flavor/base.py) is plain PostgreSQL, reached directly or through a pooler (flavor/pooler.py);
each other kind is a subclass that says only how it differs: ``Citus`` (flavor/citus.py). A new kind is a
new subclass listed in ``KINDS``, with the SQL condition that detects it: nothing outside this package
asks which kind a database is.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

from workspace_tool import dberrors
from workspace_tool.errors import ConfigurationError
from workspace_tool.flavor.base import Flavor
from workspace_tool.flavor.citus import Citus

DEFAULT_EXTENSION_SCHEMA = "workspace_extensions"
# Every kind but plain PostgreSQL (``Flavor`` itself, the default), in the order their conditions are tested.
KINDS: tuple[type[Flavor], ...] = (Citus,)
dberrors.NODE_ERROR_READERS.extend(k.unreachable_node for k in KINDS)  # failures are read without a flavor at hand
# The kind's name, as a SQL expression: a column of the registry bootstrap's one probe.
KIND_SQL = "CASE " + " ".join(f"WHEN {k.detected_by} THEN '{k.name}'" for k in KINDS) + f" ELSE '{Flavor.name}' END"

_TABLE_KINDS = "c.relkind IN ('r', 'p', 'v', 'm', 'f')"


def has_tables_sql(schema_oid: str) -> str:
    """A SQL condition: the schema whose OID is ``schema_oid`` (an expression) holds a table, view or the
    like (they could shadow a project's, on the search_path). Looked up through pg_depend's index on what
    depends on the schema (every relation but a composite type or a TOAST table records its schema there),
    not by a scan of pg_class, which has no index on relnamespace alone (25 ms on a fresh backend at 2,000
    project schemas, twice per fleet run). A schema initdb made (public: pinned, nothing is recorded as
    depending on it) is scanned."""
    return (
        f"CASE WHEN {schema_oid} >= 16384 THEN EXISTS (SELECT 1 FROM pg_depend d JOIN pg_class c ON c.oid = d.objid "
        f"WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid = {schema_oid} "
        f"AND d.classid = 'pg_class'::regclass AND {_TABLE_KINDS}) "
        f"ELSE EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = {schema_oid} AND {_TABLE_KINDS}) END"
    )


_FIND = text(
    f"SELECT n.nspname, {has_tables_sql('n.oid')}, {KIND_SQL} "
    "FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'"
)
_READ = text(
    "SELECT (SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
    f"WHERE e.extname = 'vector'), {KIND_SQL}"
)


def of_kind(name: str, extension_schema: str) -> Flavor:
    """The flavor a probe named (``KIND_SQL``), with the extension's schema."""
    kind = next((k for k in KINDS if k.name == name), Flavor)
    return kind(extension_schema)


def find(conn: Connection) -> Flavor:
    """The database's flavor and the vector extension's schema (which must hold no tables: they could
    shadow ours), in one query; never creates anything (`workspace-tool init` does)."""
    row = conn.execute(_FIND).first()
    if row is None:
        raise ConfigurationError("the vector extension is not installed in this database: run `workspace-tool init`")
    schema, has_tables = str(row[0]), bool(row[1])
    check_extension_schema(schema, has_tables)
    return of_kind(str(row[2]), schema)


def read(conn: Connection) -> Flavor:
    """The flavor, for what only reads (`status`, `doctor`): one query, nothing checked or required (the
    extension's schema is the default one when the extension is missing)."""
    schema, kind = conn.execute(_READ).one()
    return of_kind(str(kind), str(schema or DEFAULT_EXTENSION_SCHEMA))


def check_extension_schema(schema: str, has_tables: bool) -> None:
    if has_tables:
        raise ConfigurationError(
            f"the vector extension lives in schema {schema}, which also holds tables; migrations put that "
            f"schema on their search_path, where its tables could shadow a project's. Move the extension: "
            f"CREATE SCHEMA {DEFAULT_EXTENSION_SCHEMA}; ALTER EXTENSION vector SET SCHEMA "
            f"{DEFAULT_EXTENSION_SCHEMA}"
        )


__all__ = [
    "DEFAULT_EXTENSION_SCHEMA",
    "KINDS",
    "KIND_SQL",
    "Flavor",
    "check_extension_schema",
    "find",
    "has_tables_sql",
    "of_kind",
    "read",
]
