"""A schema's catalog as plain data, with the schema's name taken out, and the differences between two.

Used to prove the fast path equals the online path and to detect drift against a reference schema.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, text

from workspace_tool.errors import ConfigurationError
from workspace_tool.sql import quote_ident

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
# Privileges, owner-relative: each (grantee, grantor) of an ACL as ``grantee=PRIVILEGE[*],.../grantor``,
# with the owner as <owner> and PUBLIC as PUBLIC, sorted; a NULL ACL as the built-in default it stands for
# (``acldefault``). Grants to a project's own role (``ensure(owner_role=...)``: a role with default
# privileges IN this schema, see schema/roles.py) are the tool's, not the chain's: left out.
_ACL = """ARRAY(SELECT g.who || '=' || string_agg(g.privilege_type || CASE WHEN g.grantable THEN '*' ELSE '' END,
                                                ',' ORDER BY g.privilege_type) || '/' || g.by
      FROM (SELECT CASE WHEN a.grantee = {owner} THEN '<owner>' WHEN a.grantee = 0 THEN 'PUBLIC'
                        ELSE pg_get_userbyid(a.grantee)::text END AS who,
                   CASE WHEN a.grantor = {owner} THEN '<owner>' ELSE pg_get_userbyid(a.grantor)::text END AS by,
                   a.privilege_type, a.is_grantable AS grantable
            FROM aclexplode(coalesce({acl}, acldefault({kind}, {owner}))) a
            WHERE a.grantee NOT IN (SELECT p.grantee FROM pg_default_acl d, aclexplode(d.defaclacl) p
                                    WHERE d.defaclnamespace = n.oid)) g
      GROUP BY g.who, g.by ORDER BY 1)"""
_RELATIONS = text(
    "SELECT c.relname, c.relkind, obj_description(c.oid, 'pg_class'), c.relpersistence, "
    "CASE WHEN c.relowner = n.nspowner THEN NULL ELSE pg_get_userbyid(c.relowner)::text END, "
    + _ACL.format(
        owner="c.relowner", acl="c.relacl", kind="(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END)::\"char\""
    )
    + " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = :schema AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') ORDER BY c.relname"
)
_SCHEMA = text(
    "SELECT " + _ACL.format(owner="n.nspowner", acl="n.nspacl", kind="'n'") + " FROM pg_namespace n "
    "WHERE n.nspname = :schema"
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


# ---------------------------------------------------------------- fingerprints
# ``fingerprints`` reduces each schema of a batch to a fingerprint of its catalog, in one query, on the
# server, over the objects ``snapshot`` reads: relations, columns, indexes, constraints and their comments,
# the schema's and its relations' privileges and owners (the alembic_version rows are read by
# ``inspection.read_versions``, which needs a lock per table where this needs none).
#
# What is compared. Deparsing (pg_get_indexdef & co.) costs 10-20 us per object on a cold cache, most of a
# snapshot's time, so each object is described by the raw catalog fields the deparser reads instead; where
# a field names something of the schema itself by OID (a type, a referenced table, a constraint's index),
# by its name; columns by their number, as a column carries its number and name (what the deparser looks
# up). A node tree (a default, a CHECK, an index predicate or expression) is compared as stored, unless it
# mentions an object created after initdb (an OID of 5 digits or more; a regclass constant, which holds
# its OID as bytes: a serial column's sequence): that one is deparsed, the schema's name stripped as
# ``snapshot`` does. Equal raw fields describe equal objects, so equal fingerprints mean equal snapshots.
# The converse can fail (a table whose last column was dropped and added back: same columns, new number),
# which only costs a detailed comparison; ``drift.check`` makes one per distinct fingerprint.
#
# How it is reduced. A relation's columns and its constraints are each hashed to 64 bits (each row by
# hash_record_extended, XOR-combined: a column's number and a constraint's name are unique in their
# relation, so no two rows cancel out), and so is an index's definition: hashing rows costs a fraction of
# formatting them as text. Then a line per relation (name, kind, persistence, the two hashes), per index
# (name, table, hash) and per comment; the fingerprint is the md5 of the schema's lines in order.
# PostgreSQL 14 or later (hash_record_extended, bit_xor). Read under ``PIN_SEARCH_PATH``: deparsed names
# depend on the search_path.
PIN_SEARCH_PATH = text("SET LOCAL search_path TO pg_catalog")
MIN_SERVER_VERSION = 14

# A node tree that mentions an object created after initdb (OIDs >= 16384 have 5 digits; a reg* constant
# holds its OID as bytes, so those types are named): deparsed. Any other is compared as stored.
_NEEDS_DEPARSE = "({0} ~ '[0-9]{{5}}' OR strpos({0}, ' \\:consttype 2205 ') > 0)"
_STRIP = (  # _strip below, in SQL, for the schema named by nsp.nspname
    "replace(replace({0}, quote_ident(r.nspname) || '.', '<schema>.'), r.nspname || '.', '<schema>.')"
)
# A relation by name when it is in the same schema, else by OID (the same object in every schema).
_OWN = (
    "CASE WHEN {0} = 0 THEN NULL ELSE (SELECT CASE WHEN o.relnamespace = r.nspoid THEN o.relname::text "
    "ELSE o.oid::text END FROM pg_class o WHERE o.oid = {0}) END"
)
# In a LATERAL subquery, keeps it from being flattened: it then reads the catalog through its index, once
# per relation of the batch, where a join would read all of it (measured: 20 times slower at 1,000 of
# 10,000 schemas).
_BY_INDEX = "OFFSET 0"
# An ACL, owner-relative (the owner as 0, apart from PUBLIC), the project's own roles left out, hashed; NULL
# (the built-in default) as NULL: an explicit ACL equal to the default then differs here but not in the
# snapshot, which only costs a detailed comparison.
_ACL_HASH = (
    "CASE WHEN {acl} IS NULL THEN NULL ELSE (SELECT bit_xor(hash_record_extended(ROW("
    "a.grantee = {owner}, CASE WHEN a.grantee = {owner} THEN 0::oid ELSE a.grantee END, "
    "a.grantor = {owner}, CASE WHEN a.grantor = {owner} THEN 0::oid ELSE a.grantor END, "
    "a.privilege_type, a.is_grantable), 0)) FROM aclexplode({acl}) a WHERE a.grantee <> ALL({roles})) END"
)
# Fields that exist from a server version on (major version, column).
_SINCE = {"x.indnullsnotdistinct": 15, "k.conperiod": 17, "k.conenforced": 18}


def _fields(names: str, server_version: int) -> str:
    return ", ".join(f for f in (n.strip() for n in names.split(",")) if _SINCE.get(f, 0) <= server_version)


def _fingerprint_sql(server_version: int) -> str:
    index_fields = _fields(
        "r.relam, x.indisunique, x.indnullsnotdistinct, x.indisprimary, x.indisexclusion, x.indimmediate, "
        "x.indnatts, x.indnkeyatts, x.indkey, x.indclass, x.indcollation, x.indoption, r.reloptions, r.reltablespace",
        server_version,
    )
    constraint_fields = _fields(
        "k.conkey, k.confkey, k.confupdtype, k.confdeltype, k.confmatchtype, k.confdelsetcols, k.condeferrable, "
        "k.condeferred, k.convalidated, k.conenforced, k.connoinherit, k.conperiod, k.conexclop",
        server_version,
    )
    return f"""
WITH nsp0 AS (SELECT n.oid, n.nspname, n.nspowner, n.nspacl FROM pg_namespace n WHERE n.nspname = ANY(:schemas)),
own AS (  -- a project's own roles (ensure(owner_role=...)): their grants are left out, as snapshot does
    SELECT d.defaclnamespace AS oid, array_agg(p.grantee) AS roles
    FROM pg_default_acl d CROSS JOIN LATERAL aclexplode(d.defaclacl) p
    WHERE d.defaclnamespace IN (SELECT oid FROM nsp0) GROUP BY 1
),
nsp AS (SELECT nsp0.*, coalesce(own.roles, '{{}}') AS own_roles FROM nsp0 LEFT JOIN own ON own.oid = nsp0.oid),
rel AS MATERIALIZED (
    SELECT c.oid, c.relname, c.relkind, c.relpersistence, c.relam, c.reloptions, c.reltablespace,
           c.relowner, c.relacl, nsp.oid AS nspoid, nsp.nspname, nsp.nspowner, nsp.own_roles
    FROM pg_class c JOIN nsp ON nsp.oid = c.relnamespace
),
line AS (
    SELECT n.nspname, ROW('schema', {_ACL_HASH.format(acl="n.nspacl", owner="n.nspowner", roles="n.own_roles")}
    )::text AS line
    FROM nsp n
  UNION ALL
    SELECT r.nspname, ROW(
        'relation', r.relname, r.relkind, r.relpersistence,
        CASE WHEN r.relowner = r.nspowner THEN NULL ELSE r.relowner END,
        {_ACL_HASH.format(acl="r.relacl", owner="r.relowner", roles="r.own_roles")},
        (SELECT bit_xor(hash_record_extended(ROW(
             a.attnum, a.attname, a.atttypmod, a.attcollation, a.attnotnull, a.attidentity, a.attgenerated,
             CASE WHEN a.atttypid < 16384 THEN a.atttypid::text ELSE (  -- a type made after initdb
                 SELECT CASE WHEN t.typnamespace = r.nspoid THEN t.typname::text ELSE t.oid::text END
                 FROM pg_type t WHERE t.oid = a.atttypid) END,
             CASE WHEN NOT {_NEEDS_DEPARSE.format("d.adbin::text")} THEN d.adbin::text
                  ELSE 'deparsed ' || {_STRIP.format("pg_get_expr(d.adbin, d.adrelid)")} END
         ), 0)) FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped AND r.relkind <> 'S'),
        (SELECT bit_xor(hash_record_extended(ROW(
             k.conname, k.contype, {_OWN.format("k.confrelid")}, {_OWN.format("k.conindid")}, {constraint_fields},
             CASE WHEN k.conbin IS NULL THEN NULL
                  WHEN NOT {_NEEDS_DEPARSE.format("k.conbin::text")} THEN k.conbin::text
                  ELSE 'deparsed ' || {_STRIP.format("pg_get_constraintdef(k.oid)")} END
         ), 0)) FROM pg_constraint k WHERE k.conrelid = r.oid AND k.connamespace = r.nspoid)
    )::text AS line
    FROM rel r
    WHERE r.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
  UNION ALL
    SELECT r.nspname, ROW(
        'index', r.relname, t.relname, hash_record_extended(ROW(
            {index_fields},
            CASE WHEN NOT {_NEEDS_DEPARSE.format("concat(x.indexprs, x.indpred)")} THEN x.indexprs::text END,
            CASE WHEN NOT {_NEEDS_DEPARSE.format("concat(x.indexprs, x.indpred)")} THEN x.indpred::text
                 ELSE 'deparsed ' || {_STRIP.format("pg_get_indexdef(r.oid)")} END,
            (SELECT array_agg(ROW(a.attnum, a.attoptions)::text ORDER BY a.attnum)  -- operator class options
             FROM pg_attribute a WHERE a.attrelid = r.oid AND a.attoptions IS NOT NULL)
        ), 0)
    )::text
    FROM rel r CROSS JOIN LATERAL (SELECT * FROM pg_index x WHERE x.indexrelid = r.oid {_BY_INDEX}) x
    JOIN pg_class t ON t.oid = x.indrelid
    WHERE r.relkind IN ('i', 'I')
  UNION ALL  -- comments (on relations, their columns, indexes), few: one pass over pg_description
    SELECT r.nspname, ROW('comment', r.relname, ds.objsubid, ds.description)::text
    FROM pg_description ds JOIN rel r ON r.oid = ds.objoid
    WHERE ds.classoid = 'pg_class'::regclass AND r.relkind IN ('r', 'p', 'v', 'm', 'f', 'S', 'i', 'I')
      AND (ds.objsubid = 0 OR r.relkind IN ('r', 'p', 'v', 'm', 'f'))
  UNION ALL
    SELECT r.nspname, ROW('constraint comment', r.relname, k.conname, ds.description)::text
    FROM pg_description ds JOIN pg_constraint k ON k.oid = ds.objoid JOIN rel r ON r.oid = k.conrelid
    WHERE ds.classoid = 'pg_constraint'::regclass AND ds.objsubid = 0 AND k.connamespace = r.nspoid
)
SELECT nspname, md5(string_agg(line, E'\\n' ORDER BY line COLLATE "C")) FROM line GROUP BY nspname
"""


def fingerprints(conn: Connection, schemas: Sequence[str]) -> dict[str, str]:
    """schema -> fingerprint of its catalog (see above), for those of ``schemas`` that exist, in one
    query. Equal fingerprints mean equal snapshots, alembic_version rows aside. Pins the search_path for the
    rest of the caller's transaction."""
    version = int((conn.dialect.server_version_info or (0,))[0])
    if version < MIN_SERVER_VERSION:
        raise ConfigurationError(f"check needs PostgreSQL {MIN_SERVER_VERSION} or later (the server is {version})")
    conn.execute(PIN_SEARCH_PATH)
    params = {"schemas": list(schemas)}
    rows = conn.execute(text(_fingerprint_sql(version)), params)
    return {str(schema): str(digest) for schema, digest in rows}


def _strip(value: Any, schema: str) -> Any:
    if not isinstance(value, str):
        return value
    return value.replace(quote_ident(schema) + ".", PLACEHOLDER + ".").replace(schema + ".", PLACEHOLDER + ".")


def snapshot(conn: Connection, schema: str, *, include_version: bool = True) -> dict[str, Any]:
    """Tables, columns (type, nullability, default, comment), indexes (full definition: method, opclass,
    options, predicate), constraints, comments, privileges (the schema's and its relations' ACLs and their
    owners, relative to the schema's owner: see ``_ACL``) and the alembic_version rows of one schema."""
    params = {"schema": schema}
    relations = {
        name: {
            "kind": kind,
            "comment": comment,
            "persistence": persistence,
            "owner": owner,  # None: the schema's owner
            "acl": list(acl),
            "columns": [],
        }
        for name, kind, comment, persistence, owner, acl in conn.execute(_RELATIONS, params)
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
    schema_acl = conn.execute(_SCHEMA, params).scalar()
    result: dict[str, Any] = {
        "schema": {"acl": None if schema_acl is None else list(schema_acl)},
        "relations": relations,
        "indexes": indexes,
        "constraints": constraints,
    }
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
