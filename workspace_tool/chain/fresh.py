"""The statements a NEW schema is built with: a compiled range from base, its history collapsed where that
provably changes nothing (``Chain.fresh_plan``; a schema that exists gets the range as it is).

Replayed as they are, a chain's statements repeat its history: a column created TEXT and made VARCHAR(255)
three revisions later costs a rewrite of its table (a new file for the table and for each of its indexes),
and the version row is inserted, then moved once per revision. Two collapses, each applied only when it is
sure to build the same schema:

* **Plain DDL only.** Every statement must be one of: the version table's bookkeeping (its CREATE TABLE, the
  INSERT and the UPDATEs Alembic renders), ``CREATE TABLE t (...)`` (no options after the column list, a
  name not created before in the range), ``CREATE [UNIQUE] INDEX ... ON t`` and ``ALTER TABLE t ...`` on a
  table the range created. So no statement writes or reads a row (no INSERT, UPDATE, SELECT, DO, function,
  trigger, view, type...), every table the range touches is its own and empty, and no code runs (a
  default, a CHECK, an index expression is evaluated for rows only, and there are none; the one expression
  DDL evaluates at once, the default of ADD COLUMN, must be a literal in ``ALTER TABLE``). Anything else:
  the statements are sent as they are.
* **The version row** (``_collapse_version``): it is read by nothing but Alembic, and no statement of a
  plain-DDL range reads it, so its values between the revisions are never seen: one INSERT of the target
  instead of the INSERT and one UPDATE per revision. Done only when the bookkeeping is exactly one INSERT
  and a chain of UPDATEs that ends at the target.
* **A column's type** (``_fold_types``): ``ALTER TABLE t ALTER COLUMN c TYPE X;`` (nothing more: no USING,
  no COLLATE) becomes X in the line of c in t's CREATE TABLE, when that line is only c, its type and NOT
  NULL (no default, no serial type, which implies one), the old type has an assignment cast to X (else the
  ALTER fails, even on an empty table: the types of one family of ``_FAMILIES``, or X the same type), no
  other line of the CREATE TABLE names c (a key, a CHECK, a foreign key), and no statement in between names
  t other than as the target of a foreign key on other columns. On an empty table nothing else depends on
  c, and the column then has the type, collation, storage and dependencies ALTER gives it, without the
  rewrite.

Not covered, by design: event triggers of the database (they see one ALTER fewer; the schema is the same).
Proven in practice too: ``verify-fast-path`` builds a new schema with these statements against Alembic online.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_NAME = r"[a-z_][a-z0-9_]*"
_CREATE_TABLE = re.compile(rf"^CREATE TABLE ({_NAME}) \(\n(.*)\n\);\Z", re.DOTALL)
_VERSION_TABLE = re.compile(r"^CREATE TABLE (IF NOT EXISTS )?alembic_version \(")
_CREATE_INDEX = re.compile(rf"^CREATE (UNIQUE )?INDEX {_NAME} ON ({_NAME}) ")
_ALTER_TABLE = re.compile(rf"^ALTER TABLE ({_NAME}) ")
_VERSION_INSERT = re.compile(
    r"^INSERT INTO alembic_version \(version_num\) VALUES \('([^']*)'\)( RETURNING alembic_version\.version_num)?;\Z"
)
_VERSION_UPDATE = re.compile(
    r"^UPDATE alembic_version SET version_num='([^']*)' WHERE alembic_version\.version_num = '([^']*)';\Z"
)
_VERSION_TABLE_NAMED = re.compile(r"\balembic_version\b", re.IGNORECASE)
# A type as SQLAlchemy renders it: upper-case words, an optional (precision[, scale]), optional [].
_TYPE = r"[A-Z][A-Z0-9_]*(?: [A-Z][A-Z0-9_]*)*(?:\(\d+(?:, ?\d+)?\))?(?:\[\])?"
_NOT_A_TYPE = re.compile(
    r"\b(DEFAULT|COLLATE|CHECK|GENERATED|REFERENCES|PRIMARY|UNIQUE|CONSTRAINT|IDENTITY|COMPRESSION|STORAGE|"
    r"NULL|NOT|USING|AS|SMALLSERIAL|SERIAL|BIGSERIAL|SERIAL2|SERIAL4|SERIAL8)\b"
)
_DEFAULT = re.compile(r"\bDEFAULT\s+", re.IGNORECASE)
_LITERAL_DEFAULT = re.compile(
    r"('(?:[^']|'')*'|-?\d+(?:\.\d+)?|true|false|NULL)(?= NOT NULL| NULL|,|;|$)", re.IGNORECASE
)
# Types between which PostgreSQL has an assignment cast (what ALTER ... TYPE without USING needs: without
# one, it fails even on an empty table, and so must the build): by base name, in families; a type to itself
# (another length or precision) always has one.
_FAMILIES = (
    {"TEXT", "VARCHAR", "CHAR", "CHARACTER", "CHARACTER VARYING"},
    {"SMALLINT", "INTEGER", "BIGINT", "NUMERIC", "DECIMAL", "REAL", "FLOAT", "DOUBLE PRECISION"},
    {"TIMESTAMP", "TIMESTAMP WITHOUT TIME ZONE", "TIMESTAMP WITH TIME ZONE"},
)
_RETYPE = re.compile(rf"^ALTER TABLE ({_NAME}) ALTER COLUMN ({_NAME}) TYPE ({_TYPE});\Z")


def collapsed(statements: Sequence[str], target: str | None) -> tuple[str, ...]:
    """``statements`` (a compiled range from base to ``target``, in one transaction) collapsed for a schema
    created in the same transaction; as they are unless the range is plain DDL (see the module)."""
    if not _plain_ddl(statements):
        return tuple(statements)
    return _fold_types(_collapse_version(list(statements), target))


def _plain_ddl(statements: Sequence[str]) -> bool:
    created: set[str] = set()
    for statement in statements:
        if _VERSION_TABLE.match(statement) or _version_row(statement):
            continue
        if (table := _CREATE_TABLE.match(statement)) is not None:
            if table[1] in created or table[1] == "alembic_version":
                return False
            created.add(table[1])
            continue
        touched = _CREATE_INDEX.match(statement) or _ALTER_TABLE.match(statement)
        if touched is None or touched.groups()[-1] not in created:
            return False
        if _ALTER_TABLE.match(statement) and not _literal_defaults(statement):
            return False  # ADD COLUMN evaluates a non-volatile default once, at once: it could call anything
    return True


def _literal_defaults(statement: str) -> bool:
    """Whether every DEFAULT in the statement is a plain literal (a string, a number, true, false, NULL)."""
    return all(_LITERAL_DEFAULT.match(statement, found.end()) for found in _DEFAULT.finditer(statement))


def _version_row(statement: str) -> bool:
    return bool(_VERSION_INSERT.match(statement) or _VERSION_UPDATE.match(statement))


def _collapse_version(statements: list[str], target: str | None) -> list[str]:
    """One INSERT of ``target`` where the INSERT was, the UPDATEs left out: when the version table is named
    only by its CREATE TABLE, one INSERT and UPDATEs that move its row, in order, to ``target``."""
    inserts = [i for i, s in enumerate(statements) if _VERSION_INSERT.match(s)]
    updates = [i for i, s in enumerate(statements) if _VERSION_UPDATE.match(s)]
    named = [i for i, s in enumerate(statements) if _VERSION_TABLE_NAMED.search(s) and not _VERSION_TABLE.match(s)]
    if (
        target is None
        or len(inserts) != 1
        or named != sorted(inserts + updates)
        or (updates and updates[0] < inserts[0])
    ):
        return statements
    insert = _VERSION_INSERT.match(statements[inserts[0]])
    assert insert is not None
    current = insert[1]
    for i in updates:
        moved = _VERSION_UPDATE.match(statements[i])
        assert moved is not None
        if moved[2] != current:
            return statements
        current = moved[1]
    if current != target or "'" in target:
        return statements
    row = f"INSERT INTO alembic_version (version_num) VALUES ('{target}');"
    return [row if i == inserts[0] else s for i, s in enumerate(statements) if i not in updates]


def _fold_types(statements: list[str]) -> tuple[str, ...]:
    """Each foldable ``ALTER TABLE t ALTER COLUMN c TYPE X;`` folded into t's CREATE TABLE (see the module)."""
    folded = True
    while folded:
        folded = False
        for j, statement in enumerate(statements):
            retype = _RETYPE.match(statement)
            if retype is None or _NOT_A_TYPE.search(retype[3]):
                continue
            table, column, new_type = retype[1], retype[2], retype[3]
            made = next((i for i in range(j) if (m := _CREATE_TABLE.match(statements[i])) and m[1] == table), None)
            if made is None or not _unnamed_between(statements[made + 1 : j], table, column):
                continue
            create = statements[made]
            definition = _retyped(create, column, new_type)
            if definition is None:
                continue
            statements = [definition if i == made else s for i, s in enumerate(statements) if i != j]
            folded = True
            break
    return tuple(statements)


def _retyped(create: str, column: str, new_type: str) -> str | None:
    """t's CREATE TABLE with c's type replaced, when c's line is only its name, a type and NOT NULL and no
    other line names c; else None."""
    lines = create.split("\n")
    word = re.compile(rf"\b{re.escape(column)}\b", re.IGNORECASE)
    mine = [i for i, line in enumerate(lines) if word.search(line)]
    if len(mine) != 1 or mine[0] in (0, len(lines) - 1):
        return None
    line = re.fullmatch(rf"    {re.escape(column)} (.+?)( NOT NULL)?(, )?", lines[mine[0]])
    if line is None or not re.fullmatch(_TYPE, line[1]) or _NOT_A_TYPE.search(line[1]):
        return None
    if not _castable(line[1], new_type):
        return None
    lines[mine[0]] = f"    {column} {new_type}{line[2] or ''}{line[3] or ''}"
    return "\n".join(lines)


def _castable(old: str, new: str) -> bool:
    """Whether ALTER ... TYPE takes a column of type ``old`` to ``new`` without USING (see _FAMILIES)."""
    old_base, new_base = (re.sub(r"\(.*", "", t).removesuffix("[]") for t in (old, new))
    if old.endswith("[]") != new.endswith("[]"):
        return False
    return old_base == new_base or any(old_base in family and new_base in family for family in _FAMILIES)


def _unnamed_between(between: Sequence[str], table: str, column: str) -> bool:
    """Whether no statement names ``table``, other than as the target of a foreign key on other columns."""
    named = re.compile(rf"\b{re.escape(table)}\b", re.IGNORECASE)
    referenced = re.compile(rf"\bREFERENCES {re.escape(table)} \(([^)]*)\)")
    for statement in between:
        for target in referenced.finditer(statement):
            if column in (c.strip() for c in target[1].split(",")):
                return False
        if named.search(referenced.sub("", statement)):
            return False
    return True
