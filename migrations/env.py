"""Alembic environment for the shared per-project chain.

Two ways in:

* From workspace_tool: ``config.attributes`` carries ``connection`` (an open SQLAlchemy connection whose
  transaction the caller owns), ``schema`` (the project schema) and ``extension_schema`` (where the vector
  extension lives).  For compiling SQL once and replaying it per schema it carries ``compile=True`` and an
  ``output_buffer``: the SQL is then rendered without any schema name and runs under a search_path.
* From the plain Alembic CLI: ``alembic -x schema=project_foo upgrade head``; the URL comes from
  ``-x url=``, ``WORKSPACE_TOOL_DATABASE_URL`` or ``sqlalchemy.url`` in alembic.ini.

Either way the target schema gets three guards (alembic issue #555): ``schema_translate_map`` for
CREATE TABLE/INDEX, ``version_table_schema`` for the version table, and ``SET LOCAL search_path`` holding
only the project schema and the extension schema, so ALTER-type operations can't land anywhere else.
"""

from __future__ import annotations

import os
from typing import Any, cast

from alembic import context
from sqlalchemy import Connection, MetaData, create_engine, pool, text

from workspace_tool import transactions
from workspace_tool.authoring import autogenerate_options
from workspace_tool.naming import quote_ident, validate_schema_name
from workspace_tool.targeting import (
    DEFAULT_EXTENSION_SCHEMA,
    find_extension_schema,
    lock_schema,
    search_path_sql,
)
from workspace_tool.urls import sync_url

config = context.config
attributes: dict[str, Any] = config.attributes
x_args = context.get_x_argument(as_dictionary=True)


def _target_metadata() -> MetaData | None:
    """What autogenerate compares against: ``config.attributes["target_metadata"]`` if given (the
    ``workspace-tool revision`` API takes one), else the models, which describe the head."""
    given = attributes.get("target_metadata")
    if given is not None:
        return cast(MetaData, given)
    try:
        from workspace_tool.models import metadata
    except ImportError:  # pragma: no cover - a chain without the models still runs
        return None
    return metadata


target_metadata = _target_metadata()


def _target_schema() -> str | None:
    schema = attributes.get("schema") or x_args.get("schema")
    return validate_schema_name(schema) if schema else None


def run_migrations_offline() -> None:
    """Render SQL. With ``compile`` set (workspace_tool), no transaction and no schema names."""
    compiling = bool(attributes.get("compile"))
    schema = None if compiling else _target_schema()
    context.configure(
        url=None if compiling else _url(required=False),
        dialect_name="postgresql",
        target_metadata=target_metadata,
        literal_binds=True,
        transactional_ddl=not compiling,
        output_buffer=attributes.get("output_buffer"),
    )
    with context.begin_transaction():
        if schema:
            ext = x_args.get("extension_schema", DEFAULT_EXTENSION_SCHEMA)
            context.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
            context.execute(search_path_sql(schema, ext))
        context.run_migrations()


def _url(required: bool = True) -> str | None:
    url = x_args.get("url") or os.environ.get("WORKSPACE_TOOL_DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not url and required:
        raise SystemExit(
            "error: no database URL: set WORKSPACE_TOOL_DATABASE_URL, pass -x url=..., "
            "or set sqlalchemy.url in alembic.ini"
        )
    return url


def _configure_online(connection: Connection, schema: str, extension_schema: str) -> None:
    transactions.require(connection)  # SET LOCAL and the lock need a real transaction
    connection.execute(text(search_path_sql(schema, extension_schema)))
    translated = connection.execution_options(schema_translate_map={None: schema})
    context.configure(
        connection=translated,
        target_metadata=target_metadata,
        version_table_schema=schema,
        include_schemas=False,
        **autogenerate_options(),
    )


def run_migrations_online() -> None:
    connection: Connection | None = attributes.get("connection")
    if connection is not None:
        # workspace_tool owns the transaction, the lock and the schema's creation.
        schema = attributes["schema"]
        _configure_online(connection, schema, attributes["extension_schema"])
        context.run_migrations()
        return

    schema = _target_schema()
    if schema is None:
        raise SystemExit("error: name the project schema: alembic -x schema=project_foo upgrade head")
    engine = create_engine(sync_url(str(_url())), poolclass=pool.NullPool)
    with transactions.connect(engine) as conn, conn.begin():
        lock_schema(conn, schema)
        ext = find_extension_schema(conn)
        conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}"))
        _configure_online(conn, schema, ext)
        context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
