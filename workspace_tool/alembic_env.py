"""The Alembic environment of a per-project chain. A chain's ``env.py`` is two lines::

    from workspace_tool import alembic_env

    alembic_env.run()

and its models are named in alembic.ini (``workspace_models = migrations.models:metadata``: the models module
``workspace-tool init-chain`` writes beside env.py), or passed:
``alembic_env.run(target_metadata=metadata)``. They are imported only when Alembic compares them with a
database (``revision --autogenerate``, ``alembic check``, pytest-alembic's model test), never to migrate.

Every way in puts the same three guards on the project schema (alembic issue #555): ``schema_translate_map``
for CREATE TABLE/INDEX, ``version_table_schema`` for the version table, and ``SET LOCAL search_path``
holding only the project schema and the vector extension's schema, so ALTER-type operations can't land
anywhere else. Online, the project schema comes from ``config.attributes["schema"]`` or ``-x schema=``:

* **A shared connection** (Alembic's cookbook, pytest-alembic): ``config.attributes["connection"]`` is a
  Connection (or an Engine, connected here). In the connection's transaction, env.py takes the schema's
  advisory lock, finds the extension's schema, creates the project schema if missing and migrates it. A
  connection already in a transaction is left for its owner to commit; one that isn't gets a transaction
  that Alembic commits. A connection in AUTOCOMMIT is refused: ``SET LOCAL`` and a transaction-level
  lock do nothing there.
* **workspace_tool itself** also passes ``extension_schema``: it holds the lock and created the schema in
  its own transaction, so only the guards are set (no extra round trip). For a revision that can't run in
  a transaction it passes ``outside_transaction``: the connection is in AUTOCOMMIT, holds the schema's
  session lock and has the session's search_path set; Alembic's transaction block is opened on it, so a
  revision's ``autocommit_block()`` has one to end.
* **The plain Alembic CLI**: ``alembic -x schema=project_foo upgrade head``, with the URL from ``-x url=``,
  else the direct URL (``WORKSPACE_TOOL_DIRECT_URL``, ``workspace_direct_url``: migrations bypass a
  pooler when one is set), ``WORKSPACE_TOOL_DATABASE_URL`` or ``sqlalchemy.url``; as for a shared
  connection, in one transaction (which a revision's ``autocommit_block()`` commits early, as Alembic
  does: the search_path and the lock are then held by the session too, until the end). Through a
  connection pooler (workspace_tool.flavor.pooler) a session's state would stay on the server connection for its
  next client: there only the transaction's lock and search_path are set, and a revision's
  ``autocommit_block()`` is refused (SessionRequired) before the transaction commits: nothing changes.

Offline (``--sql``) the SQL starts with ``CREATE SCHEMA IF NOT EXISTS`` and the search_path when a schema
is named. workspace_tool compiles a chain with ``compile=True`` and an ``output_buffer``: no transaction and
no schema name, since the SQL is replayed per schema under a search_path.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from alembic import context
from sqlalchemy import Connection, MetaData, create_engine, pool, text

from workspace_tool import flavor as flavors
from workspace_tool import transactions
from workspace_tool.chain.loading import DIRECT_URL_OPTION, MODELS_OPTION
from workspace_tool.errors import ConfigurationError, SessionRequired
from workspace_tool.flavor import DEFAULT_EXTENSION_SCHEMA, pooler
from workspace_tool.namespace import REGISTRY_SCHEMA_OPTION, SCHEMA_PREFIX_OPTION, from_options
from workspace_tool.sql import lock_schema, lock_statement, quote_ident, search_path_sql, unlock_statement
from workspace_tool.urls import DIRECT_URL_ENV, sync_url

TEMPLATE_DIR = Path(__file__).with_name("templates") / "workspace-tool"


def run(target_metadata: MetaData | None = None) -> None:
    """Run the chain's migrations (or Alembic's comparison) into one project schema; call it from env.py."""
    if context.is_offline_mode():
        _run_offline()
    else:
        _run_online(target_metadata)


# ----------------------------------------------------------------------- offline
def _run_offline() -> None:
    attributes = context.config.attributes
    compiling = bool(attributes.get("compile"))
    schema = None if compiling else _target_schema()
    context.configure(
        url=None if compiling else _url(required=False),
        dialect_name="postgresql",
        literal_binds=True,
        transactional_ddl=not compiling,
        output_buffer=attributes.get("output_buffer"),
    )
    with context.begin_transaction():
        if schema:
            extension_schema = _x_arguments().get("extension_schema", DEFAULT_EXTENSION_SCHEMA)
            context.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
            context.execute(search_path_sql(schema, extension_schema))
        context.run_migrations()


# ------------------------------------------------------------------------ online
def _run_online(target_metadata: MetaData | None) -> None:
    attributes = context.config.attributes
    given = attributes.get("connection")
    if isinstance(given, Connection) and "extension_schema" in attributes and attributes.get("outside_transaction"):
        # workspace_tool itself, for a revision that can't run in a transaction (see the module's docstring)
        with _configured(given, attributes["schema"], target_metadata), context.begin_transaction():
            context.run_migrations()
        return
    if isinstance(given, Connection) and "extension_schema" in attributes:
        # workspace_tool itself: the lock, the schema (its name too) and the transaction are the caller's
        check_transactional(given)
        schema = attributes["schema"]
        with _configured(given, schema, target_metadata):
            given.execute(text(search_path_sql(schema, attributes["extension_schema"])))
            context.run_migrations()
        return
    from_cli = given is None  # nothing handed in: the alembic command line (or a script using the URL)
    schema = _target_schema()
    if schema is None:
        _fail(
            "name the project schema: alembic -x schema=project_foo upgrade head"
            if from_cli
            else "name the project schema for the connection in config.attributes: "
            "config.attributes['schema'] = 'project_foo' (or -x schema=project_foo)",
            from_cli=from_cli,
        )
    if isinstance(given, Connection):
        _migrate(given, schema, target_metadata, from_cli=False)
        return
    if given is not None and not callable(getattr(given, "connect", None)):
        raise ConfigurationError(
            f"config.attributes['connection'] must be a SQLAlchemy Connection or Engine, not {type(given).__name__}"
        )
    engine = given if given is not None else create_engine(sync_url(str(_url())), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            # READ COMMITTED whatever the engine says (a connection already in a transaction is checked)
            _migrate(
                conn if conn.in_transaction() else transactions.own(conn), schema, target_metadata, from_cli=from_cli
            )
    finally:
        if from_cli:
            engine.dispose()


def _migrate(conn: Connection, schema: str, target_metadata: MetaData | None, *, from_cli: bool) -> None:
    """Lock, create and migrate ``schema`` in conn's transaction (begun and committed here if it had none).

    When the transaction is Alembic's (conn had none), a revision's ``autocommit_block()`` commits it
    early, which would end ``SET LOCAL search_path`` and the transaction's lock: so the session holds both
    too (its own search_path put back, the lock released, at the end); unless conn goes through a pooler,
    where the session is not ours to keep: there ``autocommit_block()`` is refused instead.

    A schema created here is created as workspace_tool creates them (after the flavor's statements; an
    existing schema is left as it is: on a distributed database, sending those statements and then CREATE
    SCHEMA IF NOT EXISTS could change what an existing schema is)."""
    check_transactional(conn)
    owned = not conn.in_transaction()
    session = owned and not pooler.behind_pooler(conn)  # the session is ours to hold state in
    saved: str | None = None
    try:
        with _configured(conn, schema, target_metadata), context.begin_transaction():
            if owned and not session:
                _refuse_autocommit_blocks(schema, from_cli=from_cli)
            lock_schema(conn, schema)
            if session:
                saved = conn.execute(text("SELECT current_setting('search_path')")).scalar_one()
                conn.execute(text(lock_statement(schema, session=True)))
            flavor = flavors.find(conn)
            before = flavor.before_project_schema()
            if before and not conn.execute(_SCHEMA_EXISTS, {"schema": schema}).scalar():
                for statement in before:
                    conn.execute(text(statement))
            conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}"))
            conn.execute(text(search_path_sql(schema, flavor.extension_schema, local=not session)))
            context.run_migrations()
    finally:
        if saved is not None and not conn.invalidated:
            if conn.in_transaction():
                conn.rollback()
            with conn.begin():
                conn.execute(text("SELECT set_config('search_path', :path, false)"), {"path": saved})
                conn.execute(text(unlock_statement(schema)))


_SCHEMA_EXISTS = text("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :schema)")


def _refuse_autocommit_blocks(schema: str, *, from_cli: bool) -> None:
    """Through a pooler: a revision entering ``autocommit_block()`` gets SessionRequired instead, before
    Alembic commits anything (the whole transaction then rolls back)."""

    def refuse() -> NoReturn:
        caller = inspect.currentframe()
        revision = caller.f_back.f_globals.get("revision") if caller and caller.f_back else None
        error = SessionRequired(f"revision {revision or '?'} ({schema})")
        if from_cli:
            raise SystemExit(f"error: {error}")
        raise error

    context.get_context().autocommit_block = refuse  # type: ignore[method-assign]


@contextmanager
def _configured(conn: Connection, schema: str, target_metadata: MetaData | None) -> Iterator[None]:
    """``context.configure`` on conn with the guards; conn's own schema_translate_map is put back after."""
    previous = conn.get_execution_options().get("schema_translate_map")
    options: dict[str, Any] = {"version_table_schema": schema, "include_schemas": False}
    autogenerating = _autogenerating()
    if autogenerating:
        from workspace_tool.chain.autogenerate import autogenerate_options

        options.update(target_metadata=_models(target_metadata), **autogenerate_options())
    else:
        options["target_metadata"] = target_metadata  # only autogenerate reads it: no import for it
    try:
        # Connection.execution_options changes conn itself (SQLAlchemy 2): hence the restore below.
        context.configure(connection=conn.execution_options(schema_translate_map={None: schema}), **options)
        if autogenerating:
            from workspace_tool.chain.autogenerate import reflect_unqualified_sequences

            reflect_unqualified_sequences(context.get_context(), schema)
        yield
    finally:
        conn.execution_options(schema_translate_map=previous)


def check_transactional(conn: Connection) -> None:
    """Refuse a connection in AUTOCOMMIT: each statement would commit on its own, and ``SET LOCAL
    search_path`` and ``pg_advisory_xact_lock`` would end with it (the migration could land in another
    schema and would run unlocked)."""
    if transactions.in_autocommit(conn):
        raise ConfigurationError(
            "the connection given to Alembic is in AUTOCOMMIT mode, where SET LOCAL search_path and the "
            "schema's advisory lock last for one statement: pass a connection in a transaction (engine.begin()) "
            "or one without isolation_level='AUTOCOMMIT'"
        )


# -------------------------------------------------------------------- settings
def _x_arguments() -> dict[str, str]:
    return context.get_x_argument(as_dictionary=True)


def _target_schema() -> str | None:
    schema = context.config.attributes.get("schema") or _x_arguments().get("schema")
    if not schema:
        return None
    config = context.config  # the chain's namespace (workspace_schema_prefix), as Chain.namespace reads it
    namespace = from_options(
        config.get_main_option(REGISTRY_SCHEMA_OPTION),
        config.get_main_option(SCHEMA_PREFIX_OPTION),
        config.config_file_name or "alembic.ini",
    )
    return namespace.validate_schema_name(schema)


def _url(required: bool = True) -> str | None:
    url = (
        _x_arguments().get("url")
        or os.environ.get(DIRECT_URL_ENV)
        or context.config.get_main_option(DIRECT_URL_OPTION)
        or os.environ.get("WORKSPACE_TOOL_DATABASE_URL")
        or context.config.get_main_option("sqlalchemy.url")
    )
    if not url and required:
        _fail(
            "no database URL: set WORKSPACE_TOOL_DATABASE_URL, pass -x url=..., or set sqlalchemy.url in alembic.ini",
            from_cli=True,
        )
    return url


def _fail(message: str, *, from_cli: bool) -> NoReturn:
    """On the alembic command line a one-line message and exit 1; from code, a ConfigurationError."""
    if from_cli:
        raise SystemExit(f"error: {message}")
    raise ConfigurationError(message)


def _autogenerating() -> bool:
    """Whether Alembic runs this environment to compare models with the database: ``revision``
    (``--autogenerate``) and ``check`` hand the EnvironmentContext a ``revision_context``. When this can't be
    told (an Alembic that stores its options elsewhere), assume it is, which only costs imports."""
    environment = getattr(context, "_proxy", None)
    options = getattr(environment, "context_opts", None)
    return not isinstance(options, dict) or "revision_context" in options


def _models(target_metadata: MetaData | None) -> Any:
    """What autogenerate compares with: ``config.attributes["target_metadata"]`` (``revision --metadata``),
    else what env.py passed to ``run``, else alembic.ini's ``workspace_models``."""
    given = context.config.attributes.get("target_metadata")
    if given is not None:
        return given
    if target_metadata is not None:
        return target_metadata
    reference = context.config.get_main_option(MODELS_OPTION)
    if not reference:
        return None
    from workspace_tool.chain.autogenerate import load_metadata

    return load_metadata(reference, source=f"{MODELS_OPTION} in {context.config.config_file_name}")
