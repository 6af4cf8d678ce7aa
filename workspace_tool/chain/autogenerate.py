"""How a chain's autogenerate compares its models with a project schema: the comparison options a chain's
environment passes to Alembic (workspace_tool.alembic_env) and ``workspace-tool revision --autogenerate``
uses, and loading the models named in alembic.ini. No database is touched here beyond the comparison's own
connection."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic.autogenerate.api import AutogenContext
from alembic.migration import MigrationContext
from sqlalchemy import Column, Connection, MetaData
from sqlalchemy.exc import DBAPIError

from workspace_tool.chain.loading import MODELS_OPTION, display_path
from workspace_tool.errors import ConfigurationError

VERSION_TABLE = "alembic_version"


def autogenerate_options() -> dict[str, Any]:
    """The comparison options env.py passes to ``context.configure`` (and ``compare_schema`` uses)."""
    return {
        "compare_type": True,
        "compare_server_default": compare_server_default,
        "include_name": include_name,
        "render_item": render_item,
    }


def reflect_unqualified_sequences(context: MigrationContext, schema: str) -> None:
    """Reflect the project schema's ``nextval('"<schema>".seq'::regclass)`` defaults as ``nextval('seq'::regclass)``.

    SQLAlchemy qualifies a reflected sequence with the (translated) schema name; unqualified, the sequence is
    found through search_path like every other object of the revision, so the schema's name is never
    written into it, and Alembic finds a SERIAL's own sequence by name and leaves its default out (before
    Alembic 1.13.2 it compared the qualified text with the bare name and rendered ``nextval`` with the
    scratch schema's name in it). Wraps ``autogen_column_reflect`` of this context's impl only."""
    impl = context.impl
    reflect: Callable[[Any, Any, dict[str, Any]], None] = impl.autogen_column_reflect  # untyped in Alembic
    qualified = f'nextval(\'"{schema}".'

    def column_reflect(inspector: Any, table: Any, column_info: dict[str, Any]) -> None:
        default = column_info.get("default")
        if isinstance(default, str) and default.startswith(qualified):
            column_info["default"] = "nextval('" + default[len(qualified) :]
        reflect(inspector, table, column_info)

    setattr(impl, "autogen_column_reflect", column_reflect)  # noqa: B010 - an instance attribute, not the class's


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Leave the version table out: it lives in the project schema, which is reflected as the default
    schema, so Alembic would otherwise see it as a table missing from the models."""
    return not (type_ == "table" and name == VERSION_TABLE)


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    """Render pgvector's type as ``Vector(768)`` with its import (Alembic would write a dotted path it
    doesn't import)."""
    from pgvector.sqlalchemy import VECTOR

    if type_ == "type" and isinstance(obj, VECTOR):
        autogen_context.imports.add("from pgvector.sqlalchemy import Vector")
        return f"Vector({obj.dim})" if obj.dim is not None else "Vector()"
    return False


def compare_server_default(
    context: MigrationContext,
    inspected_column: Column[Any],
    metadata_column: Column[Any],
    inspected_default: str | None,
    metadata_default: Any,
    rendered_metadata_default: str | None,
) -> bool | None:
    """Compare a column's default as PostgreSQL itself would store it.

    The database shows its canonical form (``'unknown'::character varying``); the model has what was
    written (``"unknown"``).  When the texts differ, the model's default is declared on a temporary
    column inside a savepoint and PostgreSQL's canonical text for it is compared with the database's.
    Unlike Alembic's fallback (``SELECT <db default> = <model default>``) this compares expressions,
    not values: ``gen_random_uuid()`` equals itself, and ``now()`` differs from ``clock_timestamp()``.
    Returns None (let Alembic decide) when a default is missing on either side.
    """
    if inspected_default is None or rendered_metadata_default is None or metadata_column.server_default is None:
        return None
    if inspected_default.strip() == rendered_metadata_default.strip():
        return False
    connection = context.connection
    if connection is None:
        return None
    canonical = canonical_default(connection, metadata_column)
    if canonical is None:
        return None
    return canonical != inspected_default


_PROBE_TABLE = "workspace_tool_default_probe"


def canonical_default(connection: Connection, column: Column[Any]) -> str | None:
    """PostgreSQL's text for ``column``'s server default (None if it can't be declared on its own)."""
    dialect = connection.dialect
    default = dialect.ddl_compiler(dialect, None).get_column_default_string(column)  # type: ignore[arg-type]
    if default is None:
        return None
    type_sql = column.type.compile(dialect=dialect)
    savepoint = connection.begin_nested()
    try:
        connection.exec_driver_sql(
            f"CREATE TEMPORARY TABLE {_PROBE_TABLE} (c {type_sql} DEFAULT {default}) ON COMMIT DROP",
            execution_options={"no_parameters": True},
        )
        value = connection.exec_driver_sql(
            "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d "
            f"WHERE d.adrelid = 'pg_temp.{_PROBE_TABLE}'::regclass",
            execution_options={"no_parameters": True},
        ).scalar()
    except DBAPIError:
        return None
    finally:
        savepoint.rollback()
    return None if value is None else str(value)


def load_metadata(reference: str, *, source: str = "--metadata") -> MetaData:
    """``package.module:attribute`` -> a MetaData (or a declarative base's ``.metadata``).

    ``source`` names where the reference was written, for the error message."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"{source} {reference!r}: write it as package.module:attribute")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"{source} {reference!r}: cannot import {module_name}: {exc}") from None
    value = getattr(module, attribute, None)
    value = getattr(value, "metadata", value)
    if not isinstance(value, MetaData):
        raise ConfigurationError(f"{source} {reference!r}: {attribute} is not a MetaData or a declarative base")
    return value


def chain_models(config_path: Path) -> MetaData:
    """The chain's models: the MetaData alembic.ini names as ``workspace_models`` (imported with the ini's
    ``prepend_sys_path`` on sys.path, as Alembic imports them). A chain that names none gets a one-line
    ConfigurationError saying what to set."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config(str(config_path))
    reference = config.get_main_option(MODELS_OPTION)
    if not reference:
        raise ConfigurationError(
            f"{display_path(config_path)} names no models: set {MODELS_OPTION} = package.module:metadata in its "
            "[alembic] section (workspace-tool init-chain writes a models.py beside env.py for it), or pass them"
        )
    ScriptDirectory.from_config(config)  # puts prepend_sys_path on sys.path
    return load_metadata(reference, source=f"{MODELS_OPTION} in {display_path(config_path)}")
