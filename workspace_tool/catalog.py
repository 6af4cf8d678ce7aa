"""A schema's catalog as plain data, with the schema's name taken out, and the differences between two.

Used to prove the fast path equals the online path and to detect drift against a reference schema.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

from .naming import quote_ident

PLACEHOLDER = "<schema>"

_COLUMNS = text(
    "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, "
    "pg_get_expr(d.adbin, d.adrelid), col_description(c.oid, a.attnum), a.attidentity, a.attgenerated "
    "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
    "JOIN pg_namespace n ON n.oid = c.relnamespace "
    "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
    "WHERE n.nspname = :schema AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attnum > 0 "
    "AND NOT a.attisdropped ORDER BY c.relname, a.attnum"
)
_RELATIONS = text(
    "SELECT c.relname, c.relkind, obj_description(c.oid, 'pg_class'), c.relpersistence "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = :schema AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') ORDER BY c.relname"
)
_INDEXES = text(
    "SELECT i.relname, t.relname, pg_get_indexdef(i.oid), obj_description(i.oid, 'pg_class') "
    "FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid "
    "JOIN pg_namespace n ON n.oid = i.relnamespace WHERE n.nspname = :schema ORDER BY i.relname"
)
_CONSTRAINTS = text(
    "SELECT t.relname, k.conname, k.contype, pg_get_constraintdef(k.oid), "
    "obj_description(k.oid, 'pg_constraint') "
    "FROM pg_constraint k JOIN pg_class t ON t.oid = k.conrelid "
    "JOIN pg_namespace n ON n.oid = k.connamespace WHERE n.nspname = :schema ORDER BY t.relname, k.conname"
)


def _strip(value: Any, schema: str) -> Any:
    if not isinstance(value, str):
        return value
    return value.replace(quote_ident(schema) + ".", PLACEHOLDER + ".").replace(schema + ".", PLACEHOLDER + ".")


def snapshot(conn: Connection, schema: str, *, include_version: bool = True) -> dict[str, Any]:
    """Tables, columns (type, nullability, default, comment), indexes (full definition: method, opclass,
    options, predicate), constraints, comments and the alembic_version rows of one schema."""
    params = {"schema": schema}
    relations = {
        name: {"kind": kind, "comment": comment, "persistence": persistence, "columns": []}
        for name, kind, comment, persistence in conn.execute(_RELATIONS, params)
    }
    for table, column, type_, notnull, default, comment, identity, generated in conn.execute(_COLUMNS, params):
        relations[table]["columns"].append(
            {
                "name": column,
                "type": type_,
                "not_null": bool(notnull),
                "default": _strip(default, schema),
                "comment": comment,
                "identity": identity or None,
                "generated": generated or None,
            }
        )
    indexes = {
        name: {"table": table, "definition": _strip(definition, schema), "comment": comment}
        for name, table, definition, comment in conn.execute(_INDEXES, params)
    }
    constraints = {
        f"{table}.{name}": {"type": kind, "definition": _strip(definition, schema), "comment": comment}
        for table, name, kind, definition, comment in conn.execute(_CONSTRAINTS, params)
    }
    result: dict[str, Any] = {"relations": relations, "indexes": indexes, "constraints": constraints}
    if include_version:
        result["alembic_version"] = (
            sorted(conn.execute(text(f"SELECT version_num FROM {quote_ident(schema)}.alembic_version")).scalars())
            if "alembic_version" in relations
            else None
        )
    return result


def diff(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Human-readable differences, one line each: what the reference has that the schema lacks, and so on."""
    lines: list[str] = []
    _diff(expected, actual, "", lines)
    return lines


def _diff(expected: Any, actual: Any, path: str, lines: list[str]) -> None:
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in sorted(set(expected) | set(actual), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in actual:
                lines.append(f"missing {where}")
            elif key not in expected:
                lines.append(f"unexpected {where}")
            else:
                _diff(expected[key], actual[key], where, lines)
    elif (
        isinstance(expected, list)
        and isinstance(actual, list)
        and all(isinstance(c, dict) and "name" in c for c in expected + actual)
    ):
        _diff({c["name"]: c for c in expected}, {c["name"]: c for c in actual}, path, lines)
        if not lines and [c["name"] for c in expected] != [c["name"] for c in actual]:
            lines.append(f"{path}: column order differs")
    elif expected != actual:
        lines.append(f"{path}: expected {expected!r}, found {actual!r}")
