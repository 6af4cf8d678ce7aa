"""The registry's own revision chain (shipped in registry/migrations/) and the one-time bootstrap of the
registry and the vector extension, under one advisory lock."""

from __future__ import annotations

import ast
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from workspace_tool import flavor as flavors
from workspace_tool import transactions
from workspace_tool.chain import ALEMBIC_LOCK
from workspace_tool.dberrors import first_line, grant_needed, grantee, is_permission_error, role_phrase, sql_name
from workspace_tool.errors import PermissionDenied, RegistryError
from workspace_tool.flavor import DEFAULT_EXTENSION_SCHEMA, Flavor, check_extension_schema
from workspace_tool.namespace import DEFAULT, Namespace
from workspace_tool.registry.table import REGISTRY_SCHEMA
from workspace_tool.sql import LOCK_SQL, REGISTRY_LOCK_KEY, quote_ident

VERSION_TABLE = "workspace_registry_version"
_MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# `revision = "r0002_..."` and `down_revision = ...` in the registry's own revision files, read without
# Alembic: a registry at head (the usual case) needs no Alembic at all (a test checks Alembic agrees).
_REVISION_LINE = re.compile(r"^(revision|down_revision)\s*=\s*(.+?)\s*$", re.MULTILINE)
log = logging.getLogger(__name__)


# One round trip tells whether anything needs doing (registry version and extension schema), whether this
# role may use the extension's schema, and the database's flavor (workspace_tool.flavor): it is made here,
# once per database.
PROBE = text(
    "SELECT (SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
    "        WHERE e.extname = 'vector') AS ext_schema, "
    f"       (SELECT {flavors.has_tables_sql('e.extnamespace')} FROM pg_extension e "
    "        WHERE e.extname = 'vector') AS ext_has_tables, "
    "       (SELECT has_schema_privilege(e.extnamespace, 'USAGE') FROM pg_extension e "
    "        WHERE e.extname = 'vector') AS ext_usable, "
    f"       to_regclass('{REGISTRY_SCHEMA}.{VERSION_TABLE}') IS NOT NULL AS has_registry, "
    f"       {flavors.KIND_SQL} AS flavor"
)
READ_VERSION = text(f"SELECT version_num FROM {REGISTRY_SCHEMA}.{VERSION_TABLE}")


class RegistryChain:
    """The registry's own revision chain, shipped inside the package."""

    _instance: RegistryChain | None = None
    _instance_lock = threading.Lock()

    def __init__(self) -> None:
        down: dict[str, str | None] = {}
        for path in sorted(_MIGRATIONS_DIR.glob("r*.py")):
            found = dict(_REVISION_LINE.findall(path.read_text(encoding="utf-8")))
            down[ast.literal_eval(found["revision"])] = ast.literal_eval(found["down_revision"])
        self.known = set(down)
        [self.head] = self.known - set(down.values())  # one head: the revision nothing revises

    @classmethod
    def get(cls) -> RegistryChain:
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = RegistryChain()
            return cls._instance

    def check(self, version: str | None, namespace: Namespace = DEFAULT) -> bool:
        """True if at head; raise if the registry was written by a newer workspace-tool."""
        if version is not None and version not in self.known:
            raise RegistryError(
                f"the registry ({namespace.registry_schema}) is at revision {version!r}, written by a newer "
                "workspace-tool: upgrade workspace-tool before using this database"
            )
        return version == self.head

    def upgrade(self, conn: Connection, namespace: Namespace = DEFAULT) -> None:
        """Migrate the registry of ``namespace`` to head (its revisions create their tables and functions in
        the schema Alembic's version table is in: ``op.get_context().version_table_schema``)."""
        from alembic.config import Config
        from alembic.runtime.environment import EnvironmentContext
        from alembic.script import ScriptDirectory

        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS_DIR))
        script = ScriptDirectory(str(_MIGRATIONS_DIR), version_locations=[str(_MIGRATIONS_DIR)])

        def fn(rev: Any, context: Any) -> Any:
            return script._upgrade_revs("head", rev)

        with ALEMBIC_LOCK, EnvironmentContext(config, script, fn=fn, destination_rev="head") as env:
            env.configure(connection=conn, version_table=VERSION_TABLE, version_table_schema=namespace.registry_schema)
            env.run_migrations()


_HAS_REGISTRY = text(f"SELECT to_regclass('{REGISTRY_SCHEMA}.{VERSION_TABLE}') IS NOT NULL")


def present(conn: Connection, namespace: Namespace = DEFAULT) -> bool:
    """True if this database has the registry of ``namespace`` (something was provisioned in it), False if
    not; raises if a newer workspace-tool wrote it. Read-only: what read commands (`status`, `check`) use
    instead of bootstrap."""
    if not conn.execute(namespace.sql(_HAS_REGISTRY)).scalar():
        return False
    RegistryChain.get().check(conn.execute(namespace.sql(READ_VERSION)).scalar(), namespace)
    return True


def probed(row: Any) -> Flavor:
    """The flavor the probe's row says, with the extension's schema (the default one, not created yet)."""
    return flavors.of_kind(str(row.flavor), str(row.ext_schema or DEFAULT_EXTENSION_SCHEMA))


def registry_ready(conn: Connection, namespace: Namespace = DEFAULT) -> Flavor | None:
    """The database's flavor (with the extension's schema) if the registry and the extension are ready,
    else None. Read-only."""
    return _ready(conn, namespace)[0]


def _ready(conn: Connection, namespace: Namespace) -> tuple[Flavor | None, bool]:
    """``registry_ready``, and whether this role may use the extension's schema (True when there is no
    extension yet), as the probe's row says."""
    row = conn.execute(namespace.sql(PROBE)).one()
    if row.ext_schema is None or not row.has_registry:
        return None, True
    check_extension_schema(row.ext_schema, row.ext_has_tables)
    flavor = probed(row)
    flavor.check_registry_placement(conn, [namespace.registry_schema, flavor.extension_schema])
    version = conn.execute(namespace.sql(READ_VERSION)).scalar()
    return (flavor if RegistryChain.get().check(version, namespace) else None), bool(row.ext_usable)


def bootstrap(conn: Connection, namespace: Namespace = DEFAULT) -> Flavor:
    """Create or migrate the registry (of ``namespace``) and the vector extension, under one lock; return the database's
    flavor, with the extension's schema. Runs in its own transaction on ``conn`` (which must not be in
    one) and commits it.

    The registry lives where the flavor says (``before_registry_schema``, ``check_registry_placement``):
    on a distributed database, ordinary schemas of the coordinator, whose tables are written in the same
    transaction as each project schema's change.

    A role without the privileges this needs gets PermissionDenied naming them: USAGE on the registry and
    on the extension's schema; a privileged role's `workspace-tool init` when something must be created or
    migrated."""
    transactions.require(conn)
    try:
        flavor, usable = _ready(conn, namespace)
    except DBAPIError as exc:
        if is_permission_error(exc):
            raise _registry_denied(conn, exc, namespace) from exc
        raise
    conn.rollback()
    if flavor is None:
        started = time.perf_counter()
        try:
            flavor = _set_up(conn, namespace)
        except DBAPIError as exc:
            if is_permission_error(exc):
                raise _init_needed(conn, exc, namespace) from exc
            raise
        log.info(
            "registry %s at %s, vector extension in %s%s: set up in %.0f ms",
            namespace.registry_schema,
            RegistryChain.get().head,
            flavor.extension_schema,
            "" if flavor.name == Flavor.name else f" ({flavor.name})",
            (time.perf_counter() - started) * 1000,
        )
        usable = bool(conn.execute(_USABLE, {"schema": flavor.extension_schema}).scalar())
        conn.rollback()
    else:
        log.debug("registry %s ready, vector extension in %s", namespace.registry_schema, flavor.extension_schema)
    if not usable:  # the search_path would silently skip it: "type vector does not exist"
        raise _extension_denied(conn, flavor.extension_schema)
    return flavor


_USABLE = text("SELECT has_schema_privilege(:schema, 'USAGE')")


def _set_up(conn: Connection, namespace: Namespace) -> Flavor:
    with conn.begin():
        conn.execute(text(LOCK_SQL), {"key": REGISTRY_LOCK_KEY})
        row = conn.execute(namespace.sql(PROBE)).one()
        flavor = probed(row)
        for statement in flavor.before_registry_schema():
            conn.execute(text(statement))
        flavor.check_registry_placement(conn, [namespace.registry_schema, flavor.extension_schema])
        if row.ext_schema is None:
            ext_schema = quote_ident(flavor.extension_schema)
            conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {ext_schema}"))
            conn.execute(text(f"CREATE EXTENSION IF NOT EXISTS vector WITH SCHEMA {ext_schema}"))
        else:
            check_extension_schema(row.ext_schema, row.ext_has_tables)
        conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {namespace.registry_schema}"))
        chain = RegistryChain.get()
        version = conn.execute(namespace.sql(READ_VERSION)).scalar() if row.has_registry else None
        if not chain.check(version, namespace):
            chain.upgrade(conn, namespace)
    return flavor


def _registry_denied(conn: Connection, exc: DBAPIError, namespace: Namespace) -> PermissionDenied:
    """The registry exists but this role can't read or write it."""
    role = conn.engine.url.username
    registry = namespace.registry_schema
    to = grantee(role)
    return grant_needed(
        first_line(exc),
        f"{role_phrase(role)} may not use the registry ({registry})",
        f"GRANT USAGE ON SCHEMA {registry} TO {to}; "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {registry} TO {to}",
        role,
        note=" (as the role that ran `workspace-tool init`)",
    )


def _extension_denied(conn: Connection, ext_schema: str) -> PermissionDenied:
    """The extension is there, in a schema this role may not use (its search_path would skip it)."""
    role = conn.engine.url.username
    return grant_needed(
        f"permission denied for schema {ext_schema}",
        f"{role_phrase(role)} may not use schema {ext_schema}, which holds the vector extension",
        f"GRANT USAGE ON SCHEMA {sql_name(ext_schema)} TO {grantee(role)}",
        role,
    )


def _init_needed(conn: Connection, exc: DBAPIError, namespace: Namespace) -> PermissionDenied:
    """The registry or the extension is missing or behind, and this role can't create or migrate it."""
    role = conn.engine.url.username
    return PermissionDenied(
        first_line(exc),
        f"{role_phrase(role)} can't set up the registry ({namespace.registry_schema}) and the vector extension that "
        "this database still needs",
        "have a superuser (or another role that can) run `workspace-tool init` on this database first",
        role=role,
    )
